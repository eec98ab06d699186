"""A checkpoint's parameters alone, for the commands that only run the network (predict,
figures, export): no dataset is read, no optimizer built, one device whatever mesh wrote it."""

from __future__ import annotations

import functools
import os

import jax
import numpy as np

from alexnet_jax.checkpoint import checkpointing
from alexnet_jax.checkpoint import compat
from alexnet_jax.data import config as data_config
from alexnet_jax.model import config as model_config


def restore_params(config, workdir: str, step: int | None = None, reads_data: bool = True):
  """The parameters of the latest (or `step`'s) checkpoint as numpy arrays: (params, meta,
  inputs), where `inputs['mean']` is the mean training subtracted. `reads_data=False`: the
  command reads no dataset, whose paths then need not exist."""
  data_config.validate(config, paths=reads_data)
  model_config.validate(config)
  spec = model_config.model_spec(config)
  abstract = jax.tree.map(lambda shape: jax.ShapeDtypeStruct(shape, np.float32),
                          spec.param_shapes(), is_leaf=lambda x: isinstance(x, tuple))
  ckpts = checkpointing.Checkpoints(workdir, read_only=True)
  try:
    restored, meta = None, None
    if ckpts.steps() or step is not None:
      restored, meta, _ = ckpts.restore(
          abstract, functools.partial(compat.check, config, spec), step,
          params_only=True)
  finally:
    ckpts.close()
  if restored is None:
    where = os.path.join(os.path.abspath(workdir), checkpointing.CHECKPOINT_DIR)
    raise checkpointing.NoCheckpointError(f'No restorable checkpoint in {where}.')
  params, inputs = restored
  return params, meta, inputs
