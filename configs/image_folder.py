"""Your own images: a folder of class subfolders, through the paper's input pipeline.

  python launch.py --config=configs/image_folder.py --workdir=runs/mine \
      --config.data.folder=/path/to/images --config.data.num_classes=<classes>

The folder holds <split>/<class>/<image> (train/ and test/ by default: data.train_split,
data.eval_split), any size and format Pillow reads. It is stored once as a tfds dataset in
data.data_dir (`datasets.image_folder_builder`), then every image once more at
data.prepared_size (shorter side, central square), and trained on random data.crop_size
crops, reflections and PCA lighting, with the training set's per-pixel mean subtracted:
the paper's pipeline at a small scale (the paper's 256/224 is 36/32 here), with the narrow
network of configs/fashion_mnist.py in RGB.
"""

from configs import fashion_mnist


def get_config():
  config = fashion_mnist.get_config()
  config.dataset = 'image_folder'
  config.data.train_split = 'train'
  config.data.eval_split = 'test'
  config.data.channels = 3
  config.data.num_classes = 2
  config.data.pipeline = 'stream'
  config.data.prepared_size = 36
  config.data.crop_size = 32
  config.data.image_size = 32
  config.data.crop_pad = 0
  config.data.flip = True
  config.data.pca_sigma = 0.1
  config.data.mean = 'pixel'
  config.data.std = 'channel'  # unit-variance inputs: see the learning rate below

  config.batch_size = 64
  config.eval_batch_size = 64
  # 30 epochs, but at least 2,000 steps (128,000 images): a folder of 1,400 images is 22
  # steps an epoch, and 30 of them (660 steps) leave it far from converged. The step
  # schedule's drops (half and three quarters of training) follow the total.
  config.num_epochs = 30
  config.min_train_steps = 2000
  # The step against the inputs' scale. On the paper's 0-255 scale, a folder of high-contrast
  # images (two flat colours with noise: separable at a glance) diverged at step 2: fc8 starts
  # at 0, its gradient is fc7's activations times (p - y), and one step moves the logits by
  # lr |h_fc7|^2, about 10^4 for such images (eval loss 0.54 -> 17 -> NaN by step 11; the
  # folders of digits and Fashion-MNIST went from 2.3 to 11 and recovered). Inputs of unit
  # variance (data.std above) shrink |h|^2 by the pixels' variance, about 5,000; the rate
  # also ramps up over the first 100 steps, while the logits are far from any fit.
  config.lr_warmup_steps = 100
  return config
