"""Set-up of a run, and every check of its config, in one place (the config's edge).

`validate` checks the config alone, before any data is read or anything compiles: numbers in
range, names from their lists, the mesh, the batch against the mesh, the data pipeline's
fields, the network's shapes. `Setup` then reads everything a run needs without writing
anything (data, optimizer, the latest restorable checkpoint, whose model shapes must match),
so that any failure on the user's input leaves the workdir as it was.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os

import jax
import jax.numpy as jnp
import optax

from alexnet_jax.checkpoint import checkpointing
from alexnet_jax.checkpoint import compat
from alexnet_jax.checkpoint import workdir as workdir_lib
from alexnet_jax.data import config as data_config
from alexnet_jax.data import input_pipeline
from alexnet_jax.errors import ConfigError
from alexnet_jax.errors import one_of
from alexnet_jax.errors import require
from alexnet_jax.model import config as model_config
from alexnet_jax.model import network as model_lib
from alexnet_jax.parallel import sharding
from alexnet_jax.train import interrupts
from alexnet_jax.train import optimizer as optimizer_lib
from alexnet_jax.train import steps as steps_lib
from alexnet_jax.weights import fine_tuning

NONFINITE = ('stop', 'skip')


# ---- what the config names -----------------------------------------------------------


def build_layout(config, devices=None) -> sharding.Layout:
  """The mesh and placement of `config.parallelism` over `devices` (all by default). The
  default mesh (mesh.data=-1, mesh.model=0) runs on any device count (`sharding.default_mesh`)
  and says in one line where it departs from towers over pairs of all the devices; explicit
  mesh values are taken as given, or refused in one sentence."""
  devices = jax.devices() if devices is None else devices
  m, parallelism = config.mesh, config.parallelism
  if m.data == -1 and m.model == 0:
    plan = sharding.default_mesh(
        len(devices), parallelism, config.model.num_towers,
        {'batch_size': config.batch_size, 'eval_batch_size': config.eval_batch_size},
        may_leave_devices=jax.process_count() == 1)
    if plan.note:
      on = (f'the {plan.devices}' if plan.devices == len(devices)
            else f'{plan.devices} of the {len(devices)}')
      logging.info('Mesh data=%d x model=%d on %s devices (mesh.model=0, the default): %s; '
                   'mesh.data and mesh.model choose another.', plan.data, plan.model, on,
                   plan.note)
    return sharding.Layout(
        sharding.make_mesh(plan.data, plan.model, devices[:plan.devices]), parallelism)
  data, model = sharding.mesh_shape(len(devices), m.data, m.model, parallelism,
                                    config.model.num_towers)
  return sharding.Layout(sharding.make_mesh(data, model, devices), parallelism)


def make_optimizer(config, total_steps: int) -> optax.GradientTransformation:
  lr = optimizer_lib.learning_rate_schedule(
      config.lr_schedule, config.learning_rate, total_steps,
      tuple(config.lr_boundaries), config.lr_factor)
  return optimizer_lib.paper_momentum(lr, config.momentum, config.weight_decay,
                                      config.lr_warmup_steps, tuple(config.freeze))


# ---- checks of the config alone ------------------------------------------------------------


def _validate_numbers(config) -> None:
  """Every number in the config is finite (an infinite learning rate would fail a minute
  into training), in every group and tuple."""
  def walk(value, name):
    if isinstance(value, dict):
      for k, v in value.items():
        walk(v, f'{name}.{k}' if name else k)
    elif isinstance(value, (tuple, list)):
      for v in value:
        walk(v, name)
    elif isinstance(value, float) and not math.isfinite(value):
      raise ConfigError(f'{name}={value} must be a finite number.')
  walk(config.to_dict(), '')


def _validate_training(config) -> None:
  _validate_numbers(config)
  positive = {'batch_size': config.batch_size, 'eval_batch_size': config.eval_batch_size,
              'log_every_steps': config.log_every_steps,
              'checkpoint_every_steps': config.checkpoint_every_steps,
              'keep_checkpoints': config.keep_checkpoints,
              'plateau_patience': config.plateau_patience}
  for name, value in positive.items():
    require(value >= 1, f'{name}={value} must be at least 1.')
  for name, value in {'eval_every_steps': config.eval_every_steps,
                      'num_train_steps': config.num_train_steps}.items():
    require(value != 0 and value >= -1, f'{name}={value} must be at least 1, or -1 for once '
            'per epoch.')
  require(0 <= config.seed < 2**32, f'seed={config.seed} must be in [0, 2**32).')
  require(config.min_train_steps >= 0,
          f'min_train_steps={config.min_train_steps} must be 0 (none) or a number of steps.')
  require(config.learning_rate > 0, f'learning_rate={config.learning_rate} must be positive.')
  require(config.peak_flops_per_device >= 0,
          f'peak_flops_per_device={config.peak_flops_per_device} must be a FLOP/s figure, or 0 '
          'for the table or the measured peak.')
  require(config.lr_factor > 0, f'lr_factor={config.lr_factor} must be positive.')
  one_of('lr_schedule', config.lr_schedule, optimizer_lib.SCHEDULES)
  boundaries = tuple(config.lr_boundaries)
  require(all(0 < b < 1 for b in boundaries) and list(boundaries) == sorted(set(boundaries)),
          f'lr_boundaries={boundaries} must be increasing fractions of training in (0, 1).')
  require(config.plateau_max_drops >= 0,
          f'plateau_max_drops={config.plateau_max_drops} must not be negative.')
  one_of('on_nonfinite_loss', config.on_nonfinite_loss, NONFINITE)
  interrupts.check_signals(config.stop_signals)
  require(0 <= config.momentum < 1, f'momentum={config.momentum} must be in [0, 1).')
  require(config.weight_decay >= 0,
          f'weight_decay={config.weight_decay} must not be negative.')
  p = config.profile
  require(p.start_step < 0 or p.num_steps >= 1,
          f'profile.num_steps={p.num_steps} must be at least 1 when '
          f'profile.start_step={p.start_step} turns profiling on.')
  require(0 <= p.server_port < 65536,
          f'profile.server_port={p.server_port} must be 0 (off) or a port.')


def validate(config, layout: sharding.Layout) -> None:
  """Fails fast, in one sentence, on any config value that cannot work: the training fields
  here, the others beside what they configure."""
  _validate_training(config)
  data_config.validate(config)
  model_config.validate(config)
  layout.check_batch(config.batch_size)
  layout.check_batch(config.eval_batch_size, 'eval_batch_size')
  fine_tuning.frozen_layers(config.freeze, model_config.model_spec(config))


# ---- what run.json records --------------------------------------------------------------


def train_steps(config, steps_per_epoch: int) -> int:
  """num_train_steps if set; else num_epochs epochs, but at least min_train_steps: a small
  dataset (a folder of a thousand images is 20 steps an epoch) needs many more passes than a
  large one for the same schedule to converge, and the schedule's fractions follow the total."""
  if config.num_train_steps > 0:
    return config.num_train_steps
  epochs = config.num_epochs * steps_per_epoch
  if epochs < config.min_train_steps:
    logging.info('Training %d steps (min_train_steps): %d epochs of this dataset are only %d.',
                 config.min_train_steps, config.num_epochs, epochs)
    return config.min_train_steps
  return epochs


def describe_run(config, layout: sharding.Layout, spec: model_lib.AlexNetSpec) -> dict:
  """What `run.json` records."""
  devices = layout.mesh.devices.ravel()
  return {
      'config': compat.config_dict(config),
      'jax_version': jax.__version__,
      'device_kind': devices[0].device_kind,
      'platform': devices[0].platform,
      'device_count': int(devices.size),
      'process_count': jax.process_count(),
      'mesh': sharding.describe(layout),
      'num_params': spec.num_params(),
      # Where tfds datasets are read and stored (the folder of an image_folder run is stored
      # there once): data.data_dir, or tfds's default when it is None.
      'tfds_data_dir': os.path.abspath(os.path.expanduser(
          config.data.data_dir or os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets')),
  }


# ---- everything a run reads before it writes ---------------------------------------------


class Setup:
  """Layout, checked config, data, optimizer and the latest restorable checkpoint (or
  `checkpoint_step`'s). Building it writes nothing, so a failure leaves the workdir as it
  was. `writable=False` (evaluation) only reads the workdir, which may then be read-only."""

  def __init__(self, config, workdir: str, checkpoint_step: int | None = None,
               writable: bool = True):
    self.layout = build_layout(config)
    validate(config, self.layout)
    workdir_lib.check(workdir, writable)
    self.spec = model_config.model_spec(config)
    self.dtype = model_config.compute_dtype(config)
    if self.dtype == jnp.bfloat16 and self.layout.mesh.devices.flat[0].platform == 'cpu':
      # Measured (docs/speed.md): the compiled step's convolutions and matmuls are all
      # float32, with conversions around them; bfloat16 pays off on GPU and TPU only.
      logging.warning('model.dtype=bfloat16 on CPU: XLA:CPU runs the convolutions and matmuls '
                      'in float32 and adds conversions, about 1.4x slower than float32.')
    self.data = input_pipeline.load(config)
    info = self.data.info
    got = (info.image_size, info.channels, info.num_classes)
    want = (config.data.image_size, config.data.channels, config.data.num_classes)
    if got != want:
      raise ConfigError(f'{config.dataset} has images of size {got[0]} with {got[1]} channels '
                        f'and {got[2]} classes, but the config says {want}; set '
                        'data.image_size, data.channels and data.num_classes to match.')
    loader = self.data.loader
    self.total_steps = train_steps(config, loader.steps_per_epoch)
    # -1: once per epoch, but at most 100 times a run (a folder of 120 images is one step an
    # epoch, and evaluating after every step made a 200-step run four times as long).
    self.eval_every = (config.eval_every_steps if config.eval_every_steps > 0
                       else max(loader.steps_per_epoch, -(-self.total_steps // 100)))
    self.tx = make_optimizer(config, self.total_steps)
    abstract = steps_lib.abstract_train_state(self.spec, self.tx, self.layout)
    if writable:
      workdir_lib.check_space(workdir, checkpointing.state_bytes(abstract))
    self.state, self.meta, self.damaged, self.checkpoint_path = None, None, {}, None
    normalisation = None
    ckpts = checkpointing.Checkpoints(workdir, read_only=True)
    try:
      if ckpts.steps():
        self.state, self.meta, self.damaged = ckpts.restore(
            abstract, functools.partial(compat.check, config, self.spec),
            checkpoint_step)
        self.checkpoint_path = ckpts.path(self.meta['step']) if self.meta else None
      if self.meta is not None and config.init_from and config.init_from_inputs:
        # A resumed fine-tune keeps the source's normalisation it saved, wherever the source
        # is now.
        normalisation = ckpts.read_normalisation(self.meta['step'])
    finally:
      ckpts.close()
    # Fine-tuning's weights, read (and their shapes checked) before anything is written.
    self.init = None
    if config.init_from and self.meta is None and writable:
      self.init = fine_tuning.load_init(config.init_from, self.spec,
                                        tuple(config.init_from_skip))
      normalisation = self.init.normalisation if config.init_from_inputs else None
    elif config.init_from and self.meta is not None:
      logging.info('Resuming from %s; init_from is read only to start.', self.checkpoint_path)
    if normalisation is not None:
      mean, scale = fine_tuning.inputs_for(normalisation, config.data,
                                           self.init.source if self.init else
                                           self.checkpoint_path)
      self.data = dataclasses.replace(self.data, mean=mean, scale=scale)
    if self.damaged and self.meta is None and writable and not config.start_fresh_if_damaged:
      listed = '; '.join(f'{step}: {why}' for step, why in sorted(self.damaged.items()))
      raise checkpointing.NoCheckpointError(
          f'No checkpoint in {ckpts.directory} restores ({listed}), and nothing was moved: '
          'restore them from a copy, or set start_fresh_if_damaged=True to move them to '
          'corrupt_checkpoints/ and train again from step 0.')

  @property
  def start_step(self) -> int:
    return int(self.meta['step']) if self.meta else 0
