"""torchvision's `alexnet` (the one-column network of "One weird trick", Krizhevsky 2014:
64-192-384-256-256 channels, no LRN, conv1 padded by 2), for its ImageNet weights imported by
`scripts/import_weights.py --torchvision=alexnet-owt-7be5be79.pth`.

  python -m scripts.import_weights --torchvision=alexnet-owt-7be5be79.pth --workdir=runs/tv
  python launch.py --mode=eval --config=configs/torchvision_alexnet.py --workdir=runs/tv \
      --config.data.manual_dir=/path/to/ILSVRC2012_tars

As torchvision's layer list: one tower; dropout on fc6's and fc7's inputs; its adaptive 6x6
average pool is the identity on the 6x6 maps of 224 inputs and is left out; inputs normalised
as torchvision's ImageNet transforms do on the 0-1 scale ((x / 255 - mean) / std, written
here on the 0-255 scale). torchvision's evaluation resizes the shorter side to 256 and takes
the central 224, which is this pipeline's centre view. Published for IMAGENET1K_V1 (not
measured here): 56.52% top-1, 79.07% top-5.
"""

from alexnet_jax.weights import importers
from configs import alexnet


def get_config():
  config = alexnet.get_config()
  config.model.num_towers = 1
  config.model.conv_features = (64, 192, 384, 256, 256)
  config.model.conv1_padding = '2'
  config.model.fc_features = 4096
  config.model.lrn = False
  config.model.dropout_placement = 'inputs'
  config.data.mean = 'given'
  config.data.mean_values = importers.TORCHVISION_MEAN
  config.data.std = 'given'
  config.data.std_values = importers.TORCHVISION_STD
  return config
