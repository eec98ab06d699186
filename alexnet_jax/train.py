"""The training loop: config in, trained state, metrics and checkpoints out."""

from __future__ import annotations

import json
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from alexnet_jax import checkpointing
from alexnet_jax import input_pipeline
from alexnet_jax import metrics as metrics_lib
from alexnet_jax import model as model_lib
from alexnet_jax import optimizer as optimizer_lib
from alexnet_jax import sharding
from alexnet_jax import steps as steps_lib
from alexnet_jax.errors import ConfigError

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


# ---- reading the config (the edge) -------------------------------------------


def model_spec(config) -> model_lib.AlexNetSpec:
  return model_lib.AlexNetSpec.from_config(
      config.model, num_classes=config.data.num_classes, image_size=config.data.image_size,
      in_channels=config.data.channels)


def compute_dtype(config):
  if config.model.dtype not in DTYPES:
    raise ConfigError(f'model.dtype={config.model.dtype!r} is not one of {", ".join(DTYPES)}.')
  return DTYPES[config.model.dtype]


def build_layout(config, devices=None) -> sharding.Layout:
  devices = jax.devices() if devices is None else devices
  data, model = sharding.mesh_shape(len(devices), config.mesh.data, config.mesh.model,
                                    config.parallelism, config.model.num_towers)
  return sharding.Layout(sharding.make_mesh(data, model, devices), config.parallelism)


def check_config(config, layout: sharding.Layout) -> None:
  """Fails fast, before data loading or compilation, on values that cannot work."""
  positive = {'batch_size': config.batch_size, 'eval_batch_size': config.eval_batch_size,
              'log_every_steps': config.log_every_steps,
              'checkpoint_every_steps': config.checkpoint_every_steps,
              'keep_checkpoints': config.keep_checkpoints,
              'model.num_towers': config.model.num_towers}
  for name, value in positive.items():
    if value < 1:
      raise ConfigError(f'{name}={value} must be at least 1.')
  if config.learning_rate <= 0:
    raise ConfigError(f'learning_rate={config.learning_rate} must be positive.')
  if not 0 <= config.momentum < 1:
    raise ConfigError(f'momentum={config.momentum} must be in [0, 1).')
  if config.weight_decay < 0:
    raise ConfigError(f'weight_decay={config.weight_decay} must not be negative.')
  if not 0 <= config.model.dropout_rate < 1:
    raise ConfigError(f'model.dropout_rate={config.model.dropout_rate} must be in [0, 1).')
  if config.num_epochs < 1 and config.num_train_steps < 1:
    raise ConfigError('Set num_epochs or num_train_steps to at least 1.')
  layout.check_batch(config.batch_size)
  layout.check_batch(config.eval_batch_size, 'eval_batch_size')
  compute_dtype(config)
  model_spec(config).param_shapes()  # raises if the image is too small for the network


def describe_run(config, layout: sharding.Layout, spec: model_lib.AlexNetSpec) -> dict:
  """What `run.json` records."""
  devices = layout.mesh.devices.ravel()
  return {
      'config': json.loads(config.to_json_best_effort()),
      'jax_version': jax.__version__,
      'device_kind': devices[0].device_kind,
      'platform': devices[0].platform,
      'device_count': int(devices.size),
      'process_count': jax.process_count(),
      'mesh': sharding.describe(layout),
      'num_params': spec.num_params(),
  }


def make_optimizer(config, total_steps: int) -> optax.GradientTransformation:
  lr = optimizer_lib.learning_rate_schedule(
      config.lr_schedule, config.learning_rate, total_steps,
      tuple(config.lr_boundaries), config.lr_factor)
  return optimizer_lib.paper_momentum(lr, config.momentum, config.weight_decay)


# ---- evaluation -------------------------------------------------------------


def evaluate(eval_step, params, split, mean, layout, batch_size) -> dict[str, float]:
  totals = None
  for images, labels, weights in input_pipeline.eval_batches(
      split, mean, batch_size, layout.batch_sharding(), layout.label_sharding()):
    sums = eval_step(params, images, labels, weights)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  n = float(totals['count'])
  return {'eval/loss': totals['loss'] / n, 'eval/top1': totals['top1'] / n,
          'eval/top5': totals['top5'] / n}


def _set_learning_rate(state, value: float, layout):
  opt_state = state.opt_state
  lr = jax.device_put(jnp.asarray(value, jnp.float32), NamedSharding(layout.mesh, P()))
  hyperparams = dict(opt_state.hyperparams, learning_rate=lr)
  return state.replace(opt_state=opt_state._replace(hyperparams=hyperparams))


# ---- the loop ---------------------------------------------------------------


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns the last eval."""
  layout = build_layout(config)
  check_config(config, layout)
  spec = model_spec(config)
  dtype = compute_dtype(config)

  train_split, eval_split, info = input_pipeline.load_dataset(config)
  got = (info.image_size, info.channels, info.num_classes)
  want = (config.data.image_size, config.data.channels, config.data.num_classes)
  if got != want:
    raise ConfigError(f'{config.dataset} has images of size {got[0]} with {got[1]} channels '
                     f'and {got[2]} classes, but the config says {want}; set '
                     'data.image_size, data.channels and data.num_classes to match.')
  mean = input_pipeline.mean_image(train_split.images, config.data.mean)
  loader = input_pipeline.TrainLoader(train_split, mean, config.batch_size, config.seed,
                                      pad=config.data.crop_pad, flip=config.data.flip)
  total_steps = (config.num_train_steps if config.num_train_steps > 0
                 else config.num_epochs * loader.steps_per_epoch)
  eval_every = (config.eval_every_steps if config.eval_every_steps > 0
                else loader.steps_per_epoch)

  tx = make_optimizer(config, total_steps)
  state = steps_lib.create_train_state(jax.random.key(config.seed), spec, tx, layout)
  train_step = steps_lib.make_train_step(spec, layout, tx, config.batch_size, dtype)
  eval_step = steps_lib.make_eval_step(spec, layout, dtype)
  plateau = optimizer_lib.Plateau(factor=config.lr_factor, patience=config.plateau_patience,
                                  max_drops=config.plateau_max_drops)

  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  ckpt = checkpointing.manager(workdir, config.checkpoint_every_steps, config.keep_checkpoints)
  start_step = 0
  if ckpt.latest_step() is not None:
    state, meta = checkpointing.restore(ckpt, ckpt.latest_step(), state)
    start_step = int(meta['step'])
    plateau = optimizer_lib.Plateau(**meta['plateau'])
    logging.info('Resumed from step %d of %s.', start_step, workdir)
  if is_main:
    with open(os.path.join(workdir, 'run.json'), 'w', encoding='utf-8') as f:
      json.dump(describe_run(config, layout, spec), f, indent=2)
  writer = metrics_lib.MetricWriter(workdir, enabled=is_main)
  logging.info('Training %d steps of %d images (%d per epoch) on mesh %s, %d parameters.',
               total_steps, config.batch_size, loader.steps_per_epoch,
               sharding.describe(layout), spec.num_params())

  last_eval: dict[str, float] = {}
  pending = []
  t_last, steps_timed = None, 0
  batches = loader.batches(start_step, total_steps - start_step, layout.batch_sharding(),
                           layout.label_sharding(), config.data.prefetch)
  for step, (images, labels) in zip(range(start_step + 1, total_steps + 1), batches):
    state, metrics = train_step(state, images, labels)
    pending.append(metrics)
    if t_last is None:  # leave compilation out of images_per_sec
      jax.block_until_ready(metrics)
      t_last, pending = time.perf_counter(), []
    elif step % config.log_every_steps == 0 or step == total_steps:
      summed = jax.device_get(jax.tree.map(lambda *x: sum(x), *pending))
      elapsed = time.perf_counter() - t_last
      steps_timed = len(pending)
      scalars = {f'train/{k}': v / steps_timed for k, v in summed.items()}
      scalars['lr'] = float(state.opt_state.hyperparams['learning_rate'])
      scalars['images_per_sec'] = steps_timed * config.batch_size / elapsed
      scalars['step_time'] = elapsed / steps_timed
      if not np.isfinite(scalars['train/loss']):
        raise FloatingPointError(f'The training loss is {scalars["train/loss"]} at step {step}.')
      writer.write(step, scalars)
      t_last, pending = time.perf_counter(), []
    if step % eval_every == 0 or step == total_steps:
      last_eval = evaluate(eval_step, state.params, eval_split, mean, layout,
                           config.eval_batch_size)
      if config.lr_schedule == 'plateau' and plateau.update(1.0 - last_eval['eval/top1']):
        new_lr = float(state.opt_state.hyperparams['learning_rate']) * config.lr_factor
        state = _set_learning_rate(state, new_lr, layout)
        logging.info('Validation error stopped improving: learning rate now %g.', new_lr)
      writer.write(step, last_eval)
      t_last = time.perf_counter()
    if step % config.checkpoint_every_steps == 0 or step == total_steps:
      checkpointing.save(ckpt, step, state, {'step': step, 'plateau': plateau.state_dict()},
                         force=True)
  ckpt.wait_until_finished()
  ckpt.close()
  writer.close()
  return last_eval
