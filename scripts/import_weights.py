"""ImageNet-trained weights from a model zoo into an ordinary checkpoint of this project, which
`launch.py --mode=eval`, `--mode=predict`, `--mode=figures` and fine-tuning
(`--config.init_from=<workdir>`) read.

    python -m scripts.import_weights --caffe=bvlc_alexnet.caffemodel \
        [--caffe_mean=ilsvrc_2012_mean.binaryproto] --workdir=runs/bvlc
    python -m scripts.import_weights --torchvision=alexnet-owt-7be5be79.pth --workdir=runs/tv

The config defaults to the one written for the weights (configs/bvlc_alexnet.py,
configs/torchvision_alexnet.py); `--config.<field>=...` overrides apply. The checkpoint is
step 0 with a fresh optimizer state, the mean the network was trained with (Caffe's mean
image when given, else the config's per-channel values) and ImageNet's class names (WordNet
ids in tfds's order, which is both zoos'). A workdir that holds checkpoints is refused.
"""

from __future__ import annotations

import importlib
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags
import numpy as np

from alexnet_jax.errors import UserError

DEFAULT_CONFIGS = {'caffe': 'configs.bvlc_alexnet', 'torchvision': 'configs.torchvision_alexnet'}

config_flags.DEFINE_config_file('config', None, 'Config file (default: the one for the '
                                'weights).', lock_config=True)
flags.DEFINE_string('caffe', None, 'A .caffemodel (bvlc_alexnet).')
flags.DEFINE_string('caffe_mean', None, "Caffe's mean image, a .binaryproto.")
flags.DEFINE_string('torchvision', None, "torchvision's alexnet state dict (.pth).")
flags.DEFINE_string('workdir', None, 'Where to write the checkpoint.')
flags.mark_flags_as_required(['workdir'])


def imagenet_class_names(num_classes: int) -> list[str]:
  """ILSVRC-2012's WordNet ids in tfds's (sorted) order, which Caffe's and torchvision's
  weights follow; numbers where the config has another class count."""
  if num_classes == 1000:
    import tensorflow_datasets as tfds
    path = os.path.join(os.path.dirname(tfds.__file__), 'datasets', 'imagenet2012',
                        'labels.txt')
    if os.path.exists(path):
      with open(path, encoding='utf-8') as f:
        names = [line.strip() for line in f if line.strip()]
      if len(names) == 1000:
        return names
  return [str(i) for i in range(num_classes)]


def write_checkpoint(config, params: dict, mean: np.ndarray, workdir: str,
                     scale=None) -> str:
  """`params` (numpy, in the config's shapes) as step 0 of `workdir`; its path."""
  import jax

  from alexnet_jax.checkpoint import checkpointing
  from alexnet_jax.checkpoint import compat
  from alexnet_jax.model import config as model_config
  from alexnet_jax.parallel import sharding
  from alexnet_jax.train import optimizer
  from alexnet_jax.train import run_setup
  from alexnet_jax.train import steps
  layout = sharding.Layout(sharding.make_mesh(1, 1, jax.devices()[:1]), 'towers')
  spec = model_config.model_spec(config)
  tx = run_setup.make_optimizer(config, total_steps=1)
  state = steps.create_train_state(jax.random.key(config.seed), spec, tx, layout)
  state = state.replace(params=jax.device_put(
      jax.tree.map(lambda a: np.asarray(a, np.float32), params),
      layout.param_shardings(params)))
  plateau = optimizer.Plateau(factor=config.lr_factor, patience=config.plateau_patience,
                              max_drops=config.plateau_max_drops)
  meta = {'step': 0, 'loader': {'step': 0, 'seed': config.seed},
          'plateau': plateau.state_dict(), 'config': compat.config_dict(config),
          'class_names': imagenet_class_names(config.data.num_classes),
          'input_scale': None if scale is None else [float(v) for v in scale]}
  ckpts = checkpointing.Checkpoints(workdir)
  try:
    ckpts.save(0, state, meta, {'mean': np.asarray(mean, np.float32)})
    ckpts.wait()
  finally:
    ckpts.close()
  return ckpts.path(0)


def main(argv):
  del argv
  f = flags.FLAGS
  try:
    if bool(f.caffe) == bool(f.torchvision):
      raise UserError('Give one of --caffe=FILE.caffemodel and --torchvision=FILE.pth.')
    if f.caffe_mean and not f.caffe:
      raise UserError('--caffe_mean goes with --caffe.')
    source = 'caffe' if f.caffe else 'torchvision'
    config = f.config
    if config is None:  # the config written for these weights (--config for overrides)
      config = importlib.import_module(DEFAULT_CONFIGS[source]).get_config()
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
    path = write_checkpoint(config, params, mean, workdir, scale)
  except UserError as e:
    sys.exit(f'error: {e}')
  print(f'Wrote {path} ({spec.num_params():,} parameters from {f.caffe or f.torchvision}).')


def _made(directory: str) -> str:
  os.makedirs(directory, exist_ok=True)
  return directory


if __name__ == '__main__':
  app.run(main)
