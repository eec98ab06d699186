"""The network a config names (`config.model` with the data's classes, size and channels),
and the checks of those fields, made before anything is read or compiled."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from alexnet_jax.errors import ConfigError
from alexnet_jax.errors import one_of
from alexnet_jax.errors import require
from alexnet_jax.model import implementations
from alexnet_jax.model import network

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def model_spec(config) -> network.AlexNetSpec:
  return network.AlexNetSpec.from_config(
      config.model, num_classes=config.data.num_classes, image_size=config.data.image_size,
      in_channels=config.data.channels)


def compute_dtype(config):
  return DTYPES[config.model.dtype]


def validate(config) -> None:
  """Fails in one sentence on a model field that cannot work, then traces the network the
  config describes (nothing runs)."""
  m = config.model
  for name in ('num_towers', 'conv1_stride', 'fc_features', 'pool_window', 'pool_stride'):
    require(m[name] >= 1, f'model.{name}={m[name]} must be at least 1.')
  require(config.data.image_size >= 1,
          f'data.image_size={config.data.image_size} must be at least 1.')
  require(config.data.num_classes >= 2, f'data.num_classes={config.data.num_classes} must be '
          'the number of classes of the dataset, at least 2.')
  require(config.data.channels in (1, 3),
          f'data.channels={config.data.channels} must be 1 (grey) or 3 (RGB).')
  require(0 <= m.dropout_rate < 1, f'model.dropout_rate={m.dropout_rate} must be in [0, 1).')
  require(m.init_std > 0, f'model.init_std={m.init_std} must be positive.')
  require(m.head_init_std >= 0 or m.head_init_std == -1,
          f'model.head_init_std={m.head_init_std} must be a standard deviation (0 or more), '
          'or -1 for model.init_std.')
  for name in ('conv_features', 'conv_kernels'):
    value = tuple(m[name])
    require(len(value) == len(network.CONV_LAYERS) and all(v >= 1 for v in value),
            f'model.{name}={value} must be {len(network.CONV_LAYERS)} positive numbers, one '
            'per convolution (conv1-conv5).')
  require(all(k % 2 for k in tuple(m.conv_kernels)[1:]),
          f'model.conv_kernels={tuple(m.conv_kernels)} must be odd after conv1: '
          'conv2-conv5 keep the map size with k // 2 pixels of padding.')
  one_of('model.dtype', m.dtype, DTYPES)
  for switch, field in (('conv1', 'conv1_impl'), ('conv1_input', 'conv1_input'),
                        ('pool_backward', 'pool_backward'), ('tower_conv', 'tower_conv'),
                        ('lrn', 'lrn_impl')):
    one_of(f'model.{field}', m[field], ('auto',) + implementations.CHOICES[switch])
  check_buildable(model_spec(config))


def check_buildable(spec: network.AlexNetSpec) -> None:
  """The network the spec describes can be built: its shapes are traced (nothing runs)."""
  spec.param_shapes()  # raises ConfigError if the image is too small for the network
  try:
    params = jax.eval_shape(lambda: network.init_params(jax.random.key(0), spec))
    images = jax.ShapeDtypeStruct((1, spec.image_size, spec.image_size, spec.in_channels),
                                  jnp.float32)
    jax.eval_shape(functools.partial(network.apply, spec=spec), params, images)
  except ConfigError:
    raise
  except (TypeError, ValueError) as e:
    raise ConfigError(f'The model config cannot build a network for {spec.image_size}x'
                      f'{spec.image_size} images ({str(e).splitlines()[0][:200]}).') from None
