"""Caffe's bvlc_alexnet (the model zoo's ImageNet-trained copy of the paper's network), with
Caffe's arithmetic, for weights imported by `scripts/import_weights.py --caffe=...`.

  python -m scripts.import_weights --caffe=bvlc_alexnet.caffemodel \
      --caffe_mean=ilsvrc_2012_mean.binaryproto --workdir=runs/bvlc
  python launch.py --mode=eval --config=configs/bvlc_alexnet.py --workdir=runs/bvlc \
      --config.data.manual_dir=/path/to/ILSVRC2012_tars

What differs from the paper's config (configs/alexnet.py), as Caffe's deploy.prototxt has it:
* 227x227 crops of the 256x256 images, conv1 unpadded: the same 55x55 maps as 224 with
  cuda-convnet's padding;
* LRN with k=1 (alpha=1e-4 over n=5, divided by n) across all 96 and 256 channels, so the
  window crosses the tower boundary (model.lrn_across_towers);
* the mean: the zoo's per-pixel mean image when the importer was given it (it writes
  <workdir>/caffe_mean.npz: pass --config.data.statistics=<workdir>/caffe_mean.npz
  --config.data.mean=pixel), else Caffe's per-channel values (below);
* BGR input: the importer reverses conv1's input channels, so the RGB pipeline computes
  Caffe's sums; inputs on the 0-255 scale (data.std=none, the paper's).
* the images warped to 256x256 as Caffe's convert_imageset stored them (the whole image,
  aspect ratio not kept; data.prepared_geometry=warp, alexnet_jax/data/geometry.py), in a
  store of their own beside the paper's centre crops.
The zoo's published figures (ILSVRC-2012 validation, centre crop, not measured here):
57.1% top-1, 80.2% top-5.
"""

from configs import alexnet

# Caffe's per-channel mean (B, G, R = 104.007, 116.669, 122.679), in RGB order.
CAFFE_MEAN_RGB = (122.67891434, 116.66876762, 104.00698793)


def get_config():
  config = alexnet.get_config()
  config.data.image_size = 227
  config.data.crop_size = 227
  config.data.mean = 'given'
  config.data.mean_values = CAFFE_MEAN_RGB
  config.data.prepared_geometry = 'warp'
  config.model.conv1_padding = '0'
  config.model.lrn_k = 1.0
  config.model.lrn_across_towers = True
  return config
