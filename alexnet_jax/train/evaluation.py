"""Evaluation: loss, top-1 and top-5 over the eval split, on the centre view or with the
paper's 10-crop test (section 4.1), during training or of a saved checkpoint."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from alexnet_jax.checkpoint import checkpointing
from alexnet_jax.data import batching
from alexnet_jax.parallel import sharding
from alexnet_jax.train import run_setup
from alexnet_jax.train import steps as steps_lib


def evaluate(eval_step, params, data: batching.Data, layout: sharding.Layout,
             batch_size: int, ten_crop: bool = False) -> dict[str, float]:
  """Loss, top-1 and top-5 over the eval split, and the number of images they are over: on
  the centre view, or with the paper's 10-crop softmax averaging."""
  totals = None
  for images, labels, weights in data.eval_batches(
      batch_size, layout.batch_sharding(), layout.label_sharding(), ten_crop):
    sums = eval_step(params, images, labels, weights)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  n = float(totals['count'])
  return {'eval/loss': float(totals['loss'] / n), 'eval/top1': float(totals['top1'] / n),
          'eval/top5': float(totals['top5'] / n), 'eval/images': n}


def evaluate_checkpoint(config, workdir: str, step: int | None = None) -> dict:
  """Evaluates the latest (or `step`'s) checkpoint on the eval split without training: the
  centre view and the paper's 10-crop test."""
  setup = run_setup.Setup(config, workdir, step, writable=False)
  if setup.state is None:
    where = os.path.join(os.path.abspath(workdir), checkpointing.CHECKPOINT_DIR)
    raise checkpointing.NoCheckpointError(
        f'No restorable checkpoint{"" if step is None else f" for step {step}"} in {where}.')
  layout = setup.layout
  eval_step = steps_lib.make_eval_step(setup.spec, layout, setup.dtype, mean=setup.data.mean,
                                       scale=setup.data.scale)
  result = {'step': setup.start_step, 'checkpoint': setup.checkpoint_path,
            'mesh': sharding.describe(layout)}
  for name, ten_crop in (('centre', False), ('ten_crop', True)):
    metrics = evaluate(eval_step, setup.state.params, setup.data, layout,
                       config.eval_batch_size, ten_crop)
    result.update({k.replace('eval/', f'{name}/'): v for k, v in metrics.items()})
  return result
