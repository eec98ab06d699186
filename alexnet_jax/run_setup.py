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

from alexnet_jax import checkpoint_config
from alexnet_jax import checkpointing
from alexnet_jax import fine_tuning
from alexnet_jax import implementations
from alexnet_jax import model as model_lib
from alexnet_jax import optimizer as optimizer_lib
from alexnet_jax import sharding
from alexnet_jax import steps as steps_lib
from alexnet_jax import workdir as workdir_lib
from alexnet_jax.data import decoders
from alexnet_jax.data import device_decode
from alexnet_jax.data import input_pipeline
from alexnet_jax.data import stream
from alexnet_jax.data import transforms
from alexnet_jax.errors import ConfigError

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
NONFINITE = ('stop', 'skip')


# ---- what the config names -----------------------------------------------------------


def model_spec(config) -> model_lib.AlexNetSpec:
  return model_lib.AlexNetSpec.from_config(
      config.model, num_classes=config.data.num_classes, image_size=config.data.image_size,
      in_channels=config.data.channels)


def compute_dtype(config):
  return DTYPES[config.model.dtype]


def build_layout(config, devices=None) -> sharding.Layout:
  """The mesh and placement of `config.parallelism` over `devices` (all by default)."""
  devices = jax.devices() if devices is None else devices
  data, model = sharding.mesh_shape(len(devices), config.mesh.data, config.mesh.model,
                                    config.parallelism, config.model.num_towers)
  return sharding.Layout(sharding.make_mesh(data, model, devices), config.parallelism)


def make_optimizer(config, total_steps: int) -> optax.GradientTransformation:
  lr = optimizer_lib.learning_rate_schedule(
      config.lr_schedule, config.learning_rate, total_steps,
      tuple(config.lr_boundaries), config.lr_factor)
  return optimizer_lib.paper_momentum(lr, config.momentum, config.weight_decay,
                                      config.lr_warmup_steps, tuple(config.freeze))


# ---- checks of the config alone ------------------------------------------------------------


def _require(ok: bool, message: str) -> None:
  if not ok:
    raise ConfigError(message)


def _one_of(name: str, value, choices) -> None:
  _require(value in choices, f'{name}={value!r} is not one of {", ".join(choices)}.')


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
              'plateau_patience': config.plateau_patience,
              'model.num_towers': config.model.num_towers,
              'model.conv1_stride': config.model.conv1_stride,
              'model.fc_features': config.model.fc_features,
              'model.pool_window': config.model.pool_window,
              'model.pool_stride': config.model.pool_stride,
              'data.image_size': config.data.image_size}
  if config.dataset == 'synthetic':
    positive.update({'data.synthetic_train_examples': config.data.synthetic_train_examples,
                     'data.synthetic_eval_examples': config.data.synthetic_eval_examples})
  for name, value in positive.items():
    _require(value >= 1, f'{name}={value} must be at least 1.')
  for name, value in {'eval_every_steps': config.eval_every_steps,
                      'num_train_steps': config.num_train_steps}.items():
    _require(value != 0 and value >= -1, f'{name}={value} must be at least 1, or -1 for once '
             'per epoch.')
  _require(config.data.num_classes >= 2, f'data.num_classes={config.data.num_classes} must be '
           'the number of classes of the dataset, at least 2.')
  _require(config.data.channels in (1, 3),
           f'data.channels={config.data.channels} must be 1 (grey) or 3 (RGB).')
  _require(0 <= config.seed < 2**32, f'seed={config.seed} must be in [0, 2**32).')
  _require(config.min_train_steps >= 0,
           f'min_train_steps={config.min_train_steps} must be 0 (none) or a number of steps.')
  _require(config.learning_rate > 0, f'learning_rate={config.learning_rate} must be positive.')
  _require(config.peak_flops_per_device >= 0,
           f'peak_flops_per_device={config.peak_flops_per_device} must be a FLOP/s figure, or 0 '
           'for the table or the measured peak.')
  _require(config.lr_factor > 0, f'lr_factor={config.lr_factor} must be positive.')
  _one_of('lr_schedule', config.lr_schedule, optimizer_lib.SCHEDULES)
  boundaries = tuple(config.lr_boundaries)
  _require(all(0 < b < 1 for b in boundaries) and list(boundaries) == sorted(set(boundaries)),
           f'lr_boundaries={boundaries} must be increasing fractions of training in (0, 1).')
  _require(config.plateau_max_drops >= 0,
           f'plateau_max_drops={config.plateau_max_drops} must not be negative.')
  _one_of('on_nonfinite_loss', config.on_nonfinite_loss, NONFINITE)
  _require(0 <= config.momentum < 1, f'momentum={config.momentum} must be in [0, 1).')
  _require(config.weight_decay >= 0,
           f'weight_decay={config.weight_decay} must not be negative.')
  _require(0 <= config.model.dropout_rate < 1,
           f'model.dropout_rate={config.model.dropout_rate} must be in [0, 1).')
  _require(config.model.init_std > 0, f'model.init_std={config.model.init_std} must be '
           'positive.')
  _require(config.model.head_init_std >= 0 or config.model.head_init_std == -1,
           f'model.head_init_std={config.model.head_init_std} must be a standard deviation '
           '(0 or more), or -1 for model.init_std.')
  for name in ('conv_features', 'conv_kernels'):
    value = tuple(config.model[name])
    _require(len(value) == len(model_lib.CONV_LAYERS) and all(v >= 1 for v in value),
             f'model.{name}={value} must be {len(model_lib.CONV_LAYERS)} positive numbers, one '
             'per convolution (conv1-conv5).')
  _require(all(k % 2 for k in tuple(config.model.conv_kernels)[1:]),
           f'model.conv_kernels={tuple(config.model.conv_kernels)} must be odd after conv1: '
           'conv2-conv5 keep the map size with k // 2 pixels of padding.')
  _require(config.data.max_bad_records >= -1,
           f'data.max_bad_records={config.data.max_bad_records} must be -1 (any) or more.')
  _one_of('model.dtype', config.model.dtype, DTYPES)
  for switch, field in (('conv1', 'conv1_impl'), ('conv1_input', 'conv1_input'),
                        ('pool_backward', 'pool_backward'), ('tower_conv', 'tower_conv'),
                        ('lrn', 'lrn_impl')):
    _one_of(f'model.{field}', config.model[field], ('auto',) + implementations.CHOICES[switch])
  p = config.profile
  _require(p.start_step < 0 or p.num_steps >= 1,
           f'profile.num_steps={p.num_steps} must be at least 1 when '
           f'profile.start_step={p.start_step} turns profiling on.')
  _require(0 <= p.server_port < 65536,
           f'profile.server_port={p.server_port} must be 0 (off) or a port.')


def _validate_data(config) -> None:
  d = config.data
  _one_of('data.pipeline', d.pipeline, input_pipeline.PIPELINES)
  _one_of('data.mean', d.mean, transforms.MEAN_MODES)
  _one_of('data.std', d.std, transforms.STD_MODES)
  for mode, name in ((d.mean, 'mean_values'), (d.std, 'std_values')):
    values = tuple(d[name])
    _require(mode != 'given' or (len(values) == d.channels and (
        name == 'mean_values' or min(values) > 0)),
             f'data.{name}={values} must give {d.channels} values (positive for the std) '
             f'with data.{name.split("_")[0]}=given.')
  for name in ('crop_pad', 'prefetch', 'prepared_size', 'crop_size', 'threads', 'processes',
               'statistics_examples'):
    _require(d[name] >= 0, f'data.{name}={d[name]} must not be negative.')
  _require(d.pca_sigma >= 0, f'data.pca_sigma={d.pca_sigma} must not be negative.')
  if d.pipeline == 'memory':
    unsupported = {k: d[k] for k in ('prepared_size', 'crop_size', 'pca_sigma') if d[k]}
    fields = ', '.join(f'data.{k}={v}' for k, v in unsupported.items())
    _require(not unsupported, f'{fields}: the memory pipeline uses images as they are stored '
             '(crops of the padded image, data.crop_pad); set them to 0 or '
             'data.pipeline=stream.')
    return
  _require(config.dataset != 'synthetic',
           'dataset=synthetic is generated in memory; set data.pipeline=memory.')
  _require(not d.crop_pad, f'data.crop_pad={d.crop_pad} is for data.pipeline=memory; the '
           'stream pipeline crops data.crop_size windows of the prepared image.')
  _one_of('data.pca', d.pca, stream.PCA_SOURCES)
  _require(not d.pca_sigma or d.channels == 3,
           'data.pca_sigma needs RGB images; set it to 0 for grey images.')
  size = d.crop_size or d.prepared_size or d.image_size
  _require(size == d.image_size, f'The network input data.image_size={d.image_size} must '
           f'equal the view size {size} (data.crop_size, else data.prepared_size).')
  _require(not d.prepared_size or d.crop_size <= d.prepared_size,
           f'data.crop_size={d.crop_size} is larger than data.prepared_size={d.prepared_size}.')
  _one_of('data.storage', d.storage, ('jpeg', 'raw'))
  _one_of('data.decode_on', d.decode_on, device_decode.PLACES)
  if d.decode_on == 'device':
    _one_of('data.decoder', d.decoder, device_decode.DEVICE_DECODERS)
    _require(d.prepare_once and d.prepared_size and d.crop_size and d.storage == 'jpeg'
             and not d.processes,
             'data.decode_on=device decodes the JPEGs stored once at data.prepared_size and '
             'cuts data.crop_size views in the step; set data.prepare_once=True, '
             'data.prepared_size, data.crop_size, data.storage=jpeg and data.processes=0.')
    _require(device_decode.unavailable(d.decoder) is None,
             device_decode.unavailable(d.decoder) or '')
  else:
    _one_of('data.decoder', d.decoder, decoders.DECODERS[:2])
  _require(d.storage == 'jpeg' or (d.prepare_once and d.prepared_size),
           'data.storage=raw stores the images prepared once at data.prepared_size; set '
           'data.prepare_once=True and data.prepared_size.')
  _require(1 <= d.storage_quality <= 100,
           f'data.storage_quality={d.storage_quality} must be a JPEG quality, 1 to 100.')
  _require(decoders.unavailable(d.decoder) is None, decoders.unavailable(d.decoder) or '')
  _require(not d.statistics or os.path.isfile(os.path.expanduser(d.statistics)),
           f'data.statistics={d.statistics} is not a file (write one with '
           '`python -m scripts.compute_pixel_statistics`).')
  _require(not stream.needs_statistics(d) or d.prepared_size or d.statistics,
           f'data.mean={d.mean!r}, data.std={d.std!r} or data.pca=statistics needs images of '
           'one size: set data.prepared_size, or data.mean=none and data.std=none with '
           'data.pca=imagenet.')


def _validate_paths(config) -> None:
  """Directories the config names: an empty one (an unset shell variable) would mean the
  current directory, and a data_dir that is a file cannot hold datasets."""
  d = config.data
  for name in ('data_dir', 'manual_dir', 'folder'):
    value = d[name]
    _require(value is None or value.strip() != '',
             f'data.{name} is empty (an unset shell variable?); name a directory, or leave '
             'the field out.')
  if d.data_dir:
    path = os.path.expanduser(d.data_dir)
    _require(not os.path.exists(path) or os.path.isdir(path),
             f'data.data_dir={d.data_dir} is a file, not a directory of datasets.')


def validate(config, layout: sharding.Layout) -> None:
  """Fails fast, in one sentence, on any config value that cannot work."""
  _validate_training(config)
  _validate_paths(config)
  _validate_data(config)
  layout.check_batch(config.batch_size)
  layout.check_batch(config.eval_batch_size, 'eval_batch_size')
  spec = model_spec(config)
  _validate_model(spec)
  fine_tuning.frozen_layers(config.freeze, spec)


def _validate_model(spec: model_lib.AlexNetSpec) -> None:
  """The network the spec describes can be built: its shapes are traced (nothing runs)."""
  spec.param_shapes()  # raises ConfigError if the image is too small for the network
  try:
    params = jax.eval_shape(lambda: model_lib.init_params(jax.random.key(0), spec))
    images = jax.ShapeDtypeStruct((1, spec.image_size, spec.image_size, spec.in_channels),
                                  jnp.float32)
    jax.eval_shape(functools.partial(model_lib.apply, spec=spec), params, images)
  except ConfigError:
    raise
  except (TypeError, ValueError) as e:
    raise ConfigError(f'The model config cannot build a network for {spec.image_size}x'
                      f'{spec.image_size} images ({str(e).splitlines()[0][:200]}).') from None


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
      'config': checkpoint_config.config_dict(config),
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
    self.spec = model_spec(config)
    self.dtype = compute_dtype(config)
    if self.dtype == jnp.bfloat16 and self.layout.mesh.devices.flat[0].platform == 'cpu':
      # Measured (docs/performance.md): the compiled step's convolutions and matmuls are all
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
            abstract, functools.partial(checkpoint_config.check, config, self.spec),
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
