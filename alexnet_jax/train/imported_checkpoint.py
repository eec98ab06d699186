"""A checkpoint of this project made from weights that were not trained here (a model zoo's,
scripts/import_weights.py; a test's): step 0 with a fresh optimizer state, the mean the network
was trained with and its class names, which `launch.py --mode=eval`, `predict`, `figures`,
`export` and fine-tuning (`--config.init_from`) read like any other."""

from __future__ import annotations

import numpy as np

from alexnet_jax.data import class_names
from alexnet_jax.errors import UserError


def class_list(num_classes: int, synsets: str | None = None) -> tuple[list[str], list[str]]:
  """(labels, readable names) of the network's outputs: the synsets file's, or ILSVRC-2012's
  WordNet ids in sorted order (which Caffe's and torchvision's weights follow) with their
  names; numbers where the config has another class count."""
  if synsets:
    wnids, names = class_names.read_synsets(synsets)
    if len(wnids) != num_classes:
      raise UserError(f'--synsets={synsets} lists {len(wnids)} classes but the network has '
                      f'{num_classes} (data.num_classes).')
    return wnids, names
  if num_classes == 1000:
    wnids = class_names.imagenet_wnids()
    return wnids, class_names.readable(wnids)
  labels = [str(i) for i in range(num_classes)]
  return labels, labels


def write_checkpoint(config, params: dict, mean: np.ndarray, workdir: str,
                     scale=None, synsets: str | None = None) -> str:
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
  labels, names = class_list(config.data.num_classes, synsets)
  meta = {'step': 0, 'loader': {'step': 0, 'seed': config.seed},
          'plateau': plateau.state_dict(), 'config': compat.config_dict(config),
          'class_names': labels, class_names.META_KEY: names,
          'input_scale': None if scale is None else [float(v) for v in scale]}
  ckpts = checkpointing.Checkpoints(workdir)
  try:
    ckpts.save(0, state, meta, {'mean': np.asarray(mean, np.float32)})
    ckpts.wait()
  finally:
    ckpts.close()
  return ckpts.path(0)
