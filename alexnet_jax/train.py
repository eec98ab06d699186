"""The training loop: config in, trained state, metrics and checkpoints out."""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from alexnet_jax import checkpointing
from alexnet_jax import figures
from alexnet_jax import flops as flops_lib
from alexnet_jax import input_pipeline
from alexnet_jax import metrics as metrics_lib
from alexnet_jax import model as model_lib
from alexnet_jax import optimizer as optimizer_lib
from alexnet_jax import profiling
from alexnet_jax import sharding
from alexnet_jax import steps as steps_lib
from alexnet_jax.errors import ConfigError

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
NONFINITE = ('stop', 'skip')
SHAPE_DATA_FIELDS = ('data.image_size', 'data.channels', 'data.num_classes')
NOT_COMPARED = ('mesh.', 'parallelism', 'distributed.', 'num_epochs', 'num_train_steps',
                'profile.', 'data.threads', 'data.processes', 'data.prefetch', 'data.max_bad_records')


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
              'plateau_patience': config.plateau_patience,
              'model.num_towers': config.model.num_towers}
  if config.dataset == 'synthetic':
    positive.update({'data.synthetic_train_examples': config.data.synthetic_train_examples,
                     'data.synthetic_eval_examples': config.data.synthetic_eval_examples})
  for name, value in positive.items():
    if value < 1:
      raise ConfigError(f'{name}={value} must be at least 1.')
  for name, value in {'eval_every_steps': config.eval_every_steps,
                      'num_train_steps': config.num_train_steps}.items():
    if value == 0 or value < -1:
      raise ConfigError(f'{name}={value} must be at least 1, or -1 for once per epoch.')
  for name, value in {'data.crop_pad': config.data.crop_pad,
                      'data.prefetch': config.data.prefetch}.items():
    if value < 0:
      raise ConfigError(f'{name}={value} must not be negative.')
  if not config.learning_rate > 0:
    raise ConfigError(f'learning_rate={config.learning_rate} must be positive.')
  if not config.lr_factor > 0:
    raise ConfigError(f'lr_factor={config.lr_factor} must be positive.')
  if config.lr_schedule not in optimizer_lib.SCHEDULES:
    raise ConfigError(f'lr_schedule={config.lr_schedule!r} is not one of '
                      f'{", ".join(optimizer_lib.SCHEDULES)}.')
  if config.on_nonfinite_loss not in NONFINITE:
    raise ConfigError(f'on_nonfinite_loss={config.on_nonfinite_loss!r} is not one of '
                      f'{", ".join(NONFINITE)}.')
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
  profiling.check_config(config.profile)
  model_spec(config).param_shapes()  # raises if the image is too small for the network


def check_workdir(workdir: str) -> None:
  """A workdir that is a file, or that cannot be created or written, fails before anything
  is read or written. (root passes `os.access` everywhere: its failures surface at the first
  write, `prepare_workdir`, still before anything else is written or compiled.)"""
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError(f'--workdir={workdir} is a file, not a directory.')
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise ConfigError(f'--workdir={workdir} cannot be created because {existing} is a file.')
  if not os.access(existing, os.W_OK | os.X_OK):
    raise ConfigError(f'--workdir={workdir} is not writable ({existing} does not allow it).')


def prepare_workdir(workdir: str, run: dict) -> None:
  """The run's first write: the workdir and run.json."""
  try:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'run.json'), 'w', encoding='utf-8') as f:
      json.dump(run, f, indent=2)
  except OSError as e:
    raise ConfigError(f'--workdir={workdir} is not writable ({e.strerror}).') from e


def _flatten(d: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def check_checkpoint_config(config, spec: model_lib.AlexNetSpec, meta: dict, path: str) -> None:
  """A checkpoint restores only into a model of the same shapes: fail in one sentence, naming
  the fields that differ, rather than in orbax's shape mismatch."""
  try:
    saved = meta['config']
    old_spec = model_lib.AlexNetSpec.from_config(
        saved['model'], num_classes=saved['data']['num_classes'],
        image_size=saved['data']['image_size'], in_channels=saved['data']['channels'])
    old_shapes = old_spec.param_shapes()
  except (KeyError, TypeError, ValueError) as e:
    raise checkpointing.CorruptCheckpointError(f'{path}: its meta item has no usable config '
                                               f'({e!r})') from e
  now, then = _flatten(json.loads(config.to_json_best_effort())), _flatten(saved)
  if old_shapes != spec.param_shapes():
    fields = [k for k in now if (k.startswith('model.') or k in SHAPE_DATA_FIELDS)
              and now[k] != then.get(k)]
    diffs = ', '.join(f'{k}={now[k]!r} (the checkpoint has {then.get(k)!r})' for k in fields)
    raise ConfigError(f'The config changes the model\'s shapes ({diffs or "param shapes"}) but '
                      f'the checkpoint {path} was written with the old ones; use the same model '
                      'config to resume, or a new --workdir.')
  changed = [k for k in now if now[k] != then.get(k) and not k.startswith(NOT_COMPARED)]
  if changed:
    logging.warning('Resuming from %s with changed config fields: %s.', path,
                    ', '.join(f'{k}={then.get(k)!r} -> {now[k]!r}' for k in changed))


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


def evaluate(eval_step, params, data: input_pipeline.Data, layout, batch_size,
             ten_crop: bool = False) -> dict[str, float]:
  """Loss, top-1 and top-5 over the eval split: on the centre view, or with the paper's
  10-crop softmax averaging (section 4.1)."""
  totals = None
  for images, labels, weights in data.eval_batches(
      batch_size, layout.batch_sharding(), layout.label_sharding(), ten_crop):
    sums = eval_step(params, images, labels, weights)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  n = float(totals['count'])
  return {'eval/loss': float(totals['loss'] / n), 'eval/top1': float(totals['top1'] / n),
          'eval/top5': float(totals['top5'] / n)}


def _set_learning_rate(state, value: float, layout):
  opt_state = state.opt_state
  lr = jax.device_put(jnp.asarray(value, jnp.float32), NamedSharding(layout.mesh, P()))
  hyperparams = dict(opt_state.hyperparams, learning_rate=lr)
  return state.replace(opt_state=opt_state._replace(hyperparams=hyperparams))


# ---- set-up shared by training and evaluation ---------------------------------------------


class _Setup:
  """Everything a run reads before it writes: layout, checked config, data, optimizer and the
  latest restorable checkpoint. Building it writes nothing, so a failure leaves the workdir
  as it was."""

  def __init__(self, config, workdir: str, checkpoint_step: int | None = None):
    self.layout = build_layout(config)
    check_config(config, self.layout)
    check_workdir(workdir)
    self.spec = model_spec(config)
    self.dtype = compute_dtype(config)
    self.data = input_pipeline.load(config)
    info = self.data.info
    got = (info.image_size, info.channels, info.num_classes)
    want = (config.data.image_size, config.data.channels, config.data.num_classes)
    if got != want:
      raise ConfigError(f'{config.dataset} has images of size {got[0]} with {got[1]} channels '
                        f'and {got[2]} classes, but the config says {want}; set '
                        'data.image_size, data.channels and data.num_classes to match.')
    self.loader = self.data.loader
    self.total_steps = (config.num_train_steps if config.num_train_steps > 0
                        else config.num_epochs * self.loader.steps_per_epoch)
    self.tx = make_optimizer(config, self.total_steps)
    ckpts = checkpointing.Checkpoints(workdir, read_only=True)
    self.state, self.meta, self.damaged, self.checkpoint_path = None, None, [], None
    if ckpts.steps():
      abstract = steps_lib.abstract_train_state(self.spec, self.tx, self.layout)
      self.state, self.meta, self.damaged = ckpts.restore(
          abstract, functools.partial(check_checkpoint_config, config, self.spec),
          checkpoint_step)
      self.checkpoint_path = ckpts.path(self.meta['step']) if self.meta else None
    ckpts.close()


def evaluate_checkpoint(config, workdir: str, step: int | None = None) -> dict:
  """Evaluates the latest (or `step`'s) checkpoint on the eval split without training: the
  centre view and the paper's 10-crop test (section 4.1)."""
  setup = _Setup(config, workdir, step)
  if setup.state is None:
    where = os.path.join(os.path.abspath(workdir), checkpointing.CHECKPOINT_DIR)
    raise checkpointing.NoCheckpointError(
        f'No restorable checkpoint{"" if step is None else f" for step {step}"} in {where}.')
  layout = setup.layout
  eval_step = steps_lib.make_eval_step(setup.spec, layout, setup.dtype, mean=setup.data.mean)
  centre = evaluate(eval_step, setup.state.params, setup.data, layout, config.eval_batch_size)
  ten = evaluate(eval_step, setup.state.params, setup.data, layout, config.eval_batch_size,
                 ten_crop=True)
  result = {'step': int(setup.meta['step']), 'checkpoint': setup.checkpoint_path,
            'mesh': sharding.describe(layout)}
  result.update({k.replace('eval/', 'centre/'): v for k, v in centre.items()})
  result.update({k.replace('eval/', 'ten_crop/'): v for k, v in ten.items()})
  return result


# ---- faults, for the tests ------------------------------------------------------------------


class _Faults:
  """Test hooks from $ALEXNET_FAULTS, e.g. 'kill_after_step=3,kill_after_save=6,nan_at_step=4':
  SIGKILL this process after a step, or right after an asynchronous save has started, or feed
  a NaN batch at a step. Unset in normal runs."""

  def __init__(self):
    spec = os.environ.get('ALEXNET_FAULTS', '')
    items = dict(kv.split('=') for kv in spec.split(',') if kv)
    self.kill_after_step = int(items.get('kill_after_step', -1))
    self.kill_after_save = int(items.get('kill_after_save', -1))
    self.nan_at_step = int(items.get('nan_at_step', -1))

  @staticmethod
  def _kill():
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)

  def after_step(self, step: int) -> None:
    if step == self.kill_after_step:
      self._kill()

  def after_save(self, step: int) -> None:
    if step == self.kill_after_save:
      self._kill()


# ---- the loop ---------------------------------------------------------------


def host_array(x) -> np.ndarray:
  """A global array on the host. Collective on several processes (every process calls it):
  the towers of a parameter may live on other hosts."""
  if x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def write_eval_figures(state, workdir: str, step: int, is_main: bool) -> None:
  """conv1's kernels per tower and the curves so far, into <workdir>/figures/."""
  kernel = host_array(state.params['conv1']['kernel'])
  if is_main:
    figures.save_conv1(kernel, workdir, step)
    figures.save_curves(workdir)


def _first_nonfinite(pending_host) -> tuple[int, float] | None:
  for step, m in pending_host:
    if not np.isfinite(m['loss']) or not np.isfinite(m['grad_norm']):
      return step, float(m['loss'])
  return None


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns the last eval.

  Everything that can fail on the user's input (config, workdir, data, a checkpoint written
  with other model shapes) fails in `_Setup`, before the workdir is touched or anything is
  compiled. A resumed run continues with exactly the batch after the checkpoint's step, and
  its results are bitwise those of an uninterrupted run.
  """
  setup = _Setup(config, workdir)
  layout, spec, loader, total_steps = setup.layout, setup.spec, setup.loader, setup.total_steps
  eval_every = (config.eval_every_steps if config.eval_every_steps > 0
                else loader.steps_per_epoch)
  is_main = jax.process_index() == 0
  run = describe_run(config, layout, spec)
  run['resumed_from_step'] = int(setup.meta['step']) if setup.meta else 0
  peak = {'total': None, 'per_device': None, 'source': 'not measured on this process'}
  if is_main:
    peak = flops_lib.peak_flops(list(layout.mesh.devices.ravel()), config.model.dtype)
  run['peak_flops'] = peak
  if is_main:
    prepare_workdir(workdir, run)  # the first write; from here on the workdir changes

  faults = _Faults()
  ckpt = checkpointing.Checkpoints(workdir, config.keep_checkpoints,
                                   after_save=faults.after_save)
  ckpt.quarantine(setup.damaged)
  plateau = optimizer_lib.Plateau(factor=config.lr_factor, patience=config.plateau_patience,
                                  max_drops=config.plateau_max_drops)
  start_step, last_good = 0, None
  if setup.state is not None:
    state, start_step = setup.state, int(setup.meta['step'])
    plateau = optimizer_lib.Plateau(**setup.meta['plateau'])
    last_good = ckpt.path(start_step)
    logging.info('Resumed from %s.', last_good)
    if start_step >= total_steps:
      logging.info('%s is already trained to step %d of %d.', workdir, start_step, total_steps)
  else:
    state = steps_lib.create_train_state(jax.random.key(config.seed), spec, setup.tx, layout)
  skip = config.on_nonfinite_loss == 'skip'
  train_step = steps_lib.make_train_step(spec, layout, setup.tx, config.batch_size,
                                         setup.dtype, skip_nonfinite=skip,
                                         mean=setup.data.mean)
  eval_step = steps_lib.make_eval_step(spec, layout, setup.dtype, mean=setup.data.mean)
  writer = metrics_lib.MetricWriter(workdir, enabled=is_main, resume_step=start_step)
  progress = metrics_lib.Progress(total_steps, config.batch_size, enabled=is_main)
  writer.progress = progress
  profiler = profiling.Profiler(config.profile, workdir, start_step + 1, total_steps)
  local_devices = [d for d in layout.mesh.devices.ravel()
                   if d.process_index == jax.process_index()]
  compiled_step = step_flops = None  # step_flops: one train step on all devices (XLA's count)
  config_json = json.loads(config.to_json_best_effort())
  logging.info('Training %d steps of %d images (%d per epoch) on mesh %s, %d parameters.',
               total_steps, config.batch_size, loader.steps_per_epoch,
               sharding.describe(layout), spec.num_params())

  def stop_if_nonfinite(pending_host):
    bad = _first_nonfinite(pending_host)
    if bad is None or skip:
      return
    profiler.close()
    ckpt.close()  # the last good checkpoint is complete before we exit
    writer.close()
    where = (f'the last good checkpoint is {last_good}' if last_good
             else 'no checkpoint was written before it')
    raise FloatingPointError(f'The training loss is {bad[1]} at step {bad[0]}; {where}.')

  last_eval: dict[str, float] = {}
  pending = []  # (step, metrics) since the last log
  t_last, timed = None, 0
  batches = loader.batches(start_step, total_steps - start_step, layout.batch_sharding(),
                           layout.label_sharding(), config.data.prefetch)
  for step, (images, labels) in zip(range(start_step + 1, total_steps + 1), batches):
    if step == faults.nan_at_step:  # a NaN in every pixel, through the PCA shift
      images = dict(images, shift=images['shift'] * jnp.nan)
    if compiled_step is None:
      # Compiled ahead of the first step (once: the loop then calls this executable), so that
      # XLA's FLOP count is that of the very program that runs.
      compiled_step = train_step.lower(state, images, labels).compile()
      step_flops = _train_step_flops(compiled_step, layout)
      if step_flops and is_main:
        run['train_step_flops'] = step_flops
        prepare_workdir(workdir, run)
    with profiler.step(step):
      state, metrics = compiled_step(state, images, labels)
    profiler.after_step(step, (state, metrics))
    pending.append((step, metrics))
    if t_last is None:  # leave compilation out of images_per_sec
      jax.block_until_ready(metrics)
      t_last, timed = time.perf_counter(), 0
      progress.start(step)
    else:
      timed += 1
    progress.update(step)
    if step % config.log_every_steps == 0 or step == total_steps:
      host = jax.device_get(pending)
      stop_if_nonfinite(host)
      used = [m for _, m in host if not m.get('skipped')] or [m for _, m in host]
      scalars = {f'train/{k}': float(np.mean([m[k] for m in used]))
                 for k in used[0] if k != 'skipped'}
      if skip:
        scalars['train/skipped_steps'] = float(sum(m['skipped'] for _, m in host))
        if scalars['train/skipped_steps']:
          logging.warning('Skipped %d updates with a NaN or Inf loss up to step %d.',
                          scalars['train/skipped_steps'], step)
      scalars['lr'] = float(state.opt_state.hyperparams['learning_rate'])
      if timed:
        elapsed = time.perf_counter() - t_last
        scalars['images_per_sec'] = timed * config.batch_size / elapsed
        scalars['step_time'] = elapsed / timed
        if step_flops and peak['total']:
          scalars['mfu'] = step_flops / scalars['step_time'] / peak['total']
      if getattr(loader, 'bad_records', 0):
        scalars['train/bad_records'] = float(loader.bad_records)
      memory = metrics_lib.device_memory_in_use(local_devices)
      if memory is not None:
        scalars['memory/bytes_in_use'] = memory
      writer.write(step, scalars)
      t_last, timed, pending = time.perf_counter(), 0, []
    if step % eval_every == 0 or step == total_steps:
      last_eval = evaluate(eval_step, state.params, setup.data, layout,
                           config.eval_batch_size)
      if config.lr_schedule == 'plateau' and plateau.update(1.0 - last_eval['eval/top1']):
        new_lr = float(state.opt_state.hyperparams['learning_rate']) * config.lr_factor
        state = _set_learning_rate(state, new_lr, layout)
        logging.info('Validation error stopped improving: learning rate now %g.', new_lr)
      writer.write(step, last_eval)
      write_eval_figures(state, workdir, step, is_main)
      t_last, timed = time.perf_counter(), 0
    if step % config.checkpoint_every_steps == 0 or step == total_steps:
      stop_if_nonfinite(jax.device_get(pending))  # never save a NaN state as 'good'
      ckpt.save(step, state, {'step': step, 'loader': {'step': step, 'seed': config.seed},
                              'plateau': plateau.state_dict(), 'config': config_json})
      last_good = ckpt.path(step)
    faults.after_step(step)
  profiler.close(state)
  progress.clear()
  ckpt.close()
  writer.close()
  return last_eval


def _train_step_flops(compiled_step, layout) -> float | None:
  """FLOPs of one train step on all devices: XLA's count for the compiled step (the program
  of one device under SPMD) times the devices."""
  per_device = flops_lib.compiled_flops(compiled_step)
  if per_device is None:
    logging.warning('XLA reports no FLOPs for the train step: no MFU is logged.')
    return None
  return per_device * layout.mesh.devices.size
