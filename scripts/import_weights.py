"""ImageNet-trained weights from a model zoo into an ordinary checkpoint of this project, which
`launch.py --mode=eval`, `--mode=predict`, `--mode=figures` and fine-tuning
(`--config.init_from=<workdir>`) read.

    python -m scripts.import_weights --caffe=bvlc_alexnet.caffemodel \
        [--caffe_mean=ilsvrc_2012_mean.binaryproto] --workdir=runs/bvlc
    python -m scripts.import_weights --torchvision=alexnet-owt-7be5be79.pth --workdir=runs/tv
        [--synsets=synset_words.txt]

The config defaults to the one written for the weights (configs/bvlc_alexnet.py,
configs/torchvision_alexnet.py); `--config.<field>=...` overrides apply. The checkpoint is
step 0 with a fresh optimizer state, the mean the network was trained with (Caffe's mean
image when given, else the config's per-channel values) and the class names: ImageNet's
WordNet ids in sorted order (which is both zoos') with their readable names
(`class_names`), or the zoo's own synsets file's (`--synsets`, one class a line in the
network's output order: Caffe's synset_words.txt, "n01440764 tench, Tinca tinca"). A
workdir that holds checkpoints is refused.
"""

from __future__ import annotations

import os

from absl import flags
from ml_collections import config_flags
import numpy as np

from alexnet_jax import cli
from alexnet_jax.errors import UserError
from alexnet_jax.train import imported_checkpoint

DEFAULT_CONFIGS = {'caffe': 'configs/bvlc_alexnet.py',
                   'torchvision': 'configs/torchvision_alexnet.py'}

config_flags.DEFINE_config_file('config', None, 'Config file (default: the one for the '
                                'weights).', lock_config=True)
flags.DEFINE_string('caffe', None, 'A .caffemodel (bvlc_alexnet).')
flags.DEFINE_string('caffe_mean', None, "Caffe's mean image, a .binaryproto.")
flags.DEFINE_string('torchvision', None, "torchvision's alexnet state dict (.pth).")
flags.DEFINE_string('synsets', None, "The zoo's class list in output order (Caffe's "
                    'synset_words.txt); default: ImageNet\'s, in sorted WordNet id order.')
flags.DEFINE_string('workdir', None, 'Where to write the checkpoint.')
flags.mark_flags_as_required(['workdir'])


def parse_flags(argv):
  """cli.parse_flags, with --config defaulting to the one written for the weights, so that
  `--config.<field>=...` overrides apply to it."""
  if cli.config_path(argv) is None:
    given = [s for s in DEFAULT_CONFIGS if any(a.startswith(f'--{s}') for a in argv[1:])]
    if len(given) == 1:
      here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
      argv = [argv[0], f'--config={os.path.join(here, DEFAULT_CONFIGS[given[0]])}', *argv[1:]]
  return cli.parse_flags(argv)


def main(argv):
  del argv
  f = flags.FLAGS
  if bool(f.caffe) == bool(f.torchvision):
    raise UserError('Give one of --caffe=FILE.caffemodel and --torchvision=FILE.pth.')
  if f.caffe_mean and not f.caffe:
    raise UserError('--caffe_mean goes with --caffe.')
  config = f.config
  from alexnet_jax.checkpoint import checkpointing
  from alexnet_jax.checkpoint import workdir as workdir_lib
  from alexnet_jax.model import config as model_config
  from alexnet_jax.weights import importers
  workdir_lib.check(f.workdir, True)
  workdir = os.path.abspath(os.path.expanduser(f.workdir))
  if os.path.isdir(workdir) and checkpointing.Checkpoints(workdir, read_only=True).steps():
    raise UserError(f'{workdir} already holds checkpoints: import into a new --workdir.')
  spec = model_config.model_spec(config)
  if f.caffe:
    params = importers.from_caffe(f.caffe, spec)
  else:
    params = importers.from_torchvision(f.torchvision, spec)
  mean = np.asarray(config.data.mean_values, np.float32) if config.data.mean == 'given' else (
      np.zeros((config.data.channels,), np.float32))
  if f.caffe_mean:
    mean = importers.caffe_mean(f.caffe_mean)
    np.savez(os.path.join(_made(workdir), 'caffe_mean.npz'), mean=mean, count=0)
  scale = None
  if config.data.std == 'given':
    scale = (1.0 / np.asarray(config.data.std_values, np.float64)).astype(np.float32)
  path = imported_checkpoint.write_checkpoint(config, params, mean, workdir, scale, f.synsets)
  print(f'Wrote {path} ({spec.num_params():,} parameters from {f.caffe or f.torchvision}).')


def _made(directory: str) -> str:
  os.makedirs(directory, exist_ok=True)
  return directory


if __name__ == '__main__':
  cli.run(main, parse_flags)
