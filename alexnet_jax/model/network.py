"""The two-tower AlexNet of Krizhevsky et al. (2012) as pure JAX functions.

Parameters are a dict of arrays. Every tower-split layer stores its kernels on a
leading *tower axis* (`kernel[t]` is tower t's kernel), so a mesh axis can shard
the towers; each tower is computed with its own convolution / matmul on CPU (XLA's
backward pass for `feature_group_count` is slow there, jax-ml/jax#13800), or as one
grouped convolution where `tower_conv` says so (implementations.py: forms chosen per
backend by measurement).

`apply` is written for the *local* towers of one device. Where the paper joins
the towers (section 3.5, Fig. 2: conv3, fc6, fc7 and fc8 see both towers), it
calls `_join`, which gathers the other towers over a named mesh axis when the
towers are spread over devices. With `tower_axis=None` all towers are local and
the same code is the single-device model. Placement (which axis, when) is
decided in `alexnet_jax/parallel/sharding.py`; this module only names the joins.

Layer table for the ImageNet configuration (per tower, two towers):

    conv1 11x11x3 /4   48   -> ReLU -> LRN -> maxpool 3/2   55 -> 27
    conv2  5x5x48 /1  128   -> ReLU -> LRN -> maxpool 3/2   27 -> 13   (own tower)
    conv3  3x3x256/1  192   -> ReLU                         13         (both towers)
    conv4  3x3x192/1  192   -> ReLU                         13         (own tower)
    conv5  3x3x192/1  128   -> ReLU -> maxpool 3/2          13 -> 6    (own tower)
    fc6   9216 -> 2048 -> ReLU -> dropout 0.5                          (both towers)
    fc7   4096 -> 2048 -> ReLU -> dropout 0.5                          (both towers)
    fc8   4096 -> classes (each tower holds the rows for its own fc7 units; the
          partial logits are summed across towers, which is the paper's dense
          fc8 exactly)
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.errors import ConfigError
from alexnet_jax.model import implementations
from alexnet_jax.model.layers import conv  # noqa: F401
from alexnet_jax.model.layers import dropout_masks  # noqa: F401
from alexnet_jax.model.layers import grouped_conv  # noqa: F401
from alexnet_jax.model.layers import local_response_norm  # noqa: F401
from alexnet_jax.model.layers import max_pool  # noqa: F401
from alexnet_jax.model.layers import pad_channels  # noqa: F401
from alexnet_jax.model.layers import space_to_depth_conv  # noqa: F401

Params = dict[str, dict[str, jax.Array]]

CONV_LAYERS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5')
# Layers whose input is the concatenation of all towers (paper section 3.5).
JOINED_LAYERS = frozenset({'conv3', 'fc6', 'fc7', 'fc8'})
# Paper section 5: biases are 1 in conv2, conv4, conv5 and the hidden FC layers.
ONE_BIAS_LAYERS = frozenset({'conv2', 'conv4', 'conv5', 'fc6', 'fc7'})


@dataclasses.dataclass(frozen=True)
class AlexNetSpec:
  """Hyperparameters of the network; `from_config` reads them from `config.model`."""

  num_classes: int = 1000
  image_size: int = 224
  in_channels: int = 3
  num_towers: int = 2
  conv_features: tuple[int, ...] = (48, 128, 192, 192, 128)  # per tower
  conv_kernels: tuple[int, ...] = (11, 5, 3, 3, 3)
  conv1_stride: int = 4
  # 'cuda_convnet': output 1 + ceil((in - k) / stride), the missing pixels
  # padded with zeros at the bottom/right (224 -> 55); 'same': k // 2 on every
  # side; or a number of pixels on every side, e.g. '2' (torchvision).
  conv1_padding: str = 'cuda_convnet'
  fc_features: int = 2048  # per tower
  lrn: bool = True
  # LRN, section 3.3: k=2, n=5, alpha=1e-4, beta=0.75.
  lrn_k: float = 2.0
  lrn_n: int = 5
  lrn_alpha: float = 1e-4
  lrn_beta: float = 0.75
  # The paper's LRN stays within a tower (each GPU normalised its own maps). Caffe's
  # bvlc_alexnet runs it across all 96 and 256 channels: a tower's edge channels see the
  # neighbouring tower's, which `towers` mode brings over from the other device.
  lrn_across_towers: bool = False
  pool_window: int = 3  # overlapping pooling, section 3.4
  pool_stride: int = 2
  dropout_rate: float = 0.5
  # 'paper': dropout on fc6's and fc7's outputs (section 4.2); 'inputs': on fc6's and fc7's
  # inputs, as torchvision's alexnet (Dropout, Linear, ReLU, Dropout, Linear, ReLU, Linear).
  dropout_placement: str = 'paper'
  init_std: float = 0.01  # section 5: N(0, 0.01) for every weight
  # fc8's weights; -1: init_std (the paper). 0 starts every class at the same logit, so the
  # first loss is ln(classes) whatever the activations' scale: narrow nets need a larger
  # init_std to train, and with it N(0, init_std) logits start far from chance.
  head_init_std: float = -1.0
  init_bias_one: bool = True
  # How layers are computed (implementations.py): forms with the same sums, 'auto' by backend.
  conv1_impl: str = 'auto'
  conv1_input: str = 'auto'
  pool_backward: str = 'auto'
  tower_conv: str = 'auto'
  lrn_impl: str = 'auto'

  @classmethod
  def from_config(cls, model_config, num_classes: int, image_size: int,
                  in_channels: int) -> 'AlexNetSpec':
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in model_config.items() if k in fields}
    for k in ('conv_features', 'conv_kernels'):
      if k in kwargs:
        kwargs[k] = tuple(int(v) for v in kwargs[k])
    return cls(**kwargs, num_classes=num_classes, image_size=image_size,
               in_channels=in_channels)

  # ---- shapes -------------------------------------------------------------
  def conv1_pads(self) -> tuple[tuple[int, int], tuple[int, int]]:
    k, s, n = self.conv_kernels[0], self.conv1_stride, self.image_size
    if self.conv1_padding == 'cuda_convnet':
      out = 1 + math.ceil(max(n - k, 0) / s)
      extra = (out - 1) * s + k - n
      return ((0, extra), (0, extra))
    if self.conv1_padding == 'same':
      p = k // 2
    elif str(self.conv1_padding).isdigit():
      p = int(self.conv1_padding)
    else:
      raise ConfigError(f"model.conv1_padding={self.conv1_padding!r} is not 'cuda_convnet', "
                        "'same' or a number of pixels.")
    return ((p, p), (p, p))

  def feature_sizes(self) -> list[int]:
    """Spatial size after conv1, pool1, pool2, pool5 (55, 27, 13, 6 for ImageNet)."""
    (lo, hi), _ = self.conv1_pads()
    c1 = (self.image_size + lo + hi - self.conv_kernels[0]) // self.conv1_stride + 1
    pool = lambda n: (n - self.pool_window) // self.pool_stride + 1
    p1 = pool(c1)
    p2 = pool(p1)  # conv2..5 are 'same' convolutions
    p5 = pool(p2)
    return [c1, p1, p2, p5]

  def param_shapes(self) -> dict[str, dict[str, tuple[int, ...]]]:
    """Shapes of every parameter; leading axis T is the tower axis."""
    t = self.num_towers
    f = self.conv_features
    k = self.conv_kernels
    # Input channels of each conv: conv1 sees the image, conv3 both towers.
    cin = [self.in_channels, f[0], t * f[1], f[2], f[3]]
    shapes = {}
    for i, name in enumerate(CONV_LAYERS):
      shapes[name] = {'kernel': (t, k[i], k[i], cin[i], f[i]), 'bias': (t, f[i])}
    if self.dropout_placement not in ('paper', 'inputs'):
      raise ConfigError(f"model.dropout_placement={self.dropout_placement!r} is not 'paper' or "
                        "'inputs'.")
    if self.lrn_across_towers and min(f[0], f[1]) < self.lrn_n // 2:
      raise ConfigError(f'model.lrn_across_towers needs at least {self.lrn_n // 2} channels per '
                        f'tower in conv1 and conv2, not {f[0]} and {f[1]}.')
    p5 = self.feature_sizes()[-1]
    if p5 < 1:
      raise ConfigError(f'image_size {self.image_size} is too small for this network: '
                       'the last pooling layer would have no output.')
    flat = p5 * p5 * f[4]
    h = self.fc_features
    shapes['fc6'] = {'kernel': (t, t * flat, h), 'bias': (t, h)}
    shapes['fc7'] = {'kernel': (t, t * h, h), 'bias': (t, h)}
    # fc8: tower t holds the rows that multiply its own fc7 units.
    shapes['fc8'] = {'kernel': (t, h, self.num_classes), 'bias': (self.num_classes,)}
    return shapes

  def num_params(self) -> int:
    return sum(int(np.prod(s)) for layer in self.param_shapes().values()
               for s in layer.values())


@functools.partial(jax.jit, static_argnames=('spec', 'dtype'))
def init_params(key: jax.Array, spec: AlexNetSpec, dtype=jnp.float32) -> Params:
  """Paper section 5: weights ~ N(0, init_std) (fc8: head_init_std, where set); biases 1 in
  conv2/4/5, fc6/7, else 0. Jitted, so that a caller outside jit compiles one program (one
  persistent-cache entry) rather than each layer's sampler on its own."""
  params = {}
  shapes = spec.param_shapes()
  keys = jax.random.split(key, len(shapes))
  for k, (name, layer) in zip(keys, shapes.items()):
    bias_value = 1.0 if (spec.init_bias_one and name in ONE_BIAS_LAYERS) else 0.0
    std = spec.head_init_std if name == 'fc8' and spec.head_init_std >= 0 else spec.init_std
    params[name] = {
        'kernel': std * jax.random.normal(k, layer['kernel'], dtype),
        'bias': jnp.full(layer['bias'], bias_value, dtype),
    }
  return params


# ---- the network -------------------------------------------------------------


def _join(xs: list[jax.Array], tower_axis: str | None) -> jax.Array:
  """Stack the local towers' maps and gather the remote ones: (T, ...) in tower order.

  This is the only place activations cross devices in the paper's split; the
  backward pass of the all-gather is a reduce-scatter of the gradients.
  """
  x = jnp.stack(xs)
  if tower_axis is not None:
    x = jax.lax.all_gather(x, tower_axis, axis=0, tiled=True)
  return x


def _lrn_across_towers(xs: list[jax.Array], lrn_fn, h: int,
                       tower_axis: str | None) -> list[jax.Array]:
  """LRN over the channels of all towers (Caffe's): each tower is normalised with its
  neighbours' `h` edge channels beside it, zeros past the first and last tower (the window
  clipped there, as within a tower). Towers on other devices send their edges: two
  collective permutes of `h` channels, forward and back, are all this adds."""
  firsts, lasts = [x[..., :h] for x in xs], [x[..., -h:] for x in xs]
  zeros = jnp.zeros_like(firsts[0])
  left, right = zeros, zeros
  if tower_axis is not None:
    n = jax.lax.axis_size(tower_axis)
    left = jax.lax.ppermute(lasts[-1], tower_axis, [(d, d + 1) for d in range(n - 1)])
    right = jax.lax.ppermute(firsts[0], tower_axis, [(d + 1, d) for d in range(n - 1)])
  lefts, rights = [left] + lasts[:-1], firsts[1:] + [right]
  return [lrn_fn(jnp.concatenate([l, x, r], axis=-1))[..., h:h + x.shape[-1]]
          for l, x, r in zip(lefts, xs, rights)]


def _towers_to_channels(x: jax.Array) -> jax.Array:
  """(T, B, ..., C) -> (B, ..., T*C): tower t's maps are channels [t*C, (t+1)*C)."""
  return jnp.moveaxis(x, 0, -2).reshape(*x.shape[1:-1], x.shape[0] * x.shape[-1])


def apply(params: Params, images: jax.Array, spec: AlexNetSpec, *,
          train: bool = False, dropout_key: jax.Array | None = None,
          example_ids: jax.Array | None = None,
          conv_tower_axis: str | None = None,
          fc_tower_axis: str | None = None,
          fc_batch_axis: str | None = None,
          compute_dtype=jnp.float32, with_fc7: bool = False,
          activations: bool = False) -> jax.Array:
  """Logits (float32, or float64 for float64 compute) for a batch of NHWC images.

  Args:
    params: the parameters of the towers held here (tower axis of length
      T / devices on the tower axis) and the shared fc8 bias.
    images: (B, H, W, C) float images, mean already subtracted.
    spec: the network's hyperparameters.
    train: apply dropout (then `dropout_key` and `example_ids` are required).
    dropout_key: key of this step; masks are drawn per (example, tower).
    example_ids: global index of each example of the fully connected stage.
    conv_tower_axis: mesh axis the conv towers are spread over (paper split),
      None when every conv tower is local.
    fc_tower_axis: mesh axis the fully connected towers are spread over.
    fc_batch_axis: for the hybrid of "One weird trick": the conv stage saw a
      slice of the batch; gather the batch over this axis before fc6.
    compute_dtype: dtype of activations and matmuls (parameters are cast).
    with_fc7: also return fc7's activations (B, T * units), the feature space of the
      paper's Figure 4 (section 6.1); the towers held here only.
    activations: also return (last) every layer's output in the compute dtype, the towers
      held here side by side on the last axis: {'conv1' (after its ReLU), 'lrn1', 'pool1',
      'conv2', 'lrn2', 'pool2', 'conv3', 'conv4', 'conv5', 'pool5', 'fc6', 'fc7' (after
      ReLU and dropout), 'fc8' (the logits)}; for studying the network layer by layer.
  """
  x = images.astype(compute_dtype)
  local_t = params['conv1']['kernel'].shape[0]
  form = {name: implementations.choose(name, getattr(spec, field)) for name, field in (
      ('conv1', 'conv1_impl'), ('conv1_input', 'conv1_input'),
      ('pool_backward', 'pool_backward'), ('tower_conv', 'tower_conv'), ('lrn', 'lrn_impl'))}

  taps = {}

  def tap(name, xs):
    if activations:
      taps[name] = jnp.concatenate(xs, axis=-1)
    return xs

  def tower_ids(axis, n_local):
    first = 0 if axis is None else jax.lax.axis_index(axis) * n_local
    return first + jnp.arange(n_local)

  def conv_tower(name, xs, stride=1, padding=None):
    p = params[name]
    if form['tower_conv'] == 'grouped' and len(xs) > 1 and stride == 1:
      return tap(name, [jax.nn.relu(y)
                        for y in grouped_conv(xs, p['kernel'], p['bias'], padding)])
    return tap(name, [jax.nn.relu(conv(xi, p['kernel'][t], p['bias'][t], stride, padding))
                      for t, xi in enumerate(xs)])

  def conv_shared_input(name, xi, stride=1, padding=None):
    # Towers that see the same input (conv1: the image, conv3: both towers) run as
    # one convolution with their kernels side by side on the output axis; every
    # output channel is computed exactly as by its own tower's convolution.
    p = params[name]
    kernel = jnp.concatenate(list(p['kernel']), axis=-1)
    bias = jnp.concatenate(list(p['bias']), axis=-1)
    if name == 'conv1' and form['conv1_input'] == 'pad4':
      xi, kernel = pad_channels(xi, kernel, 4)
    space_to_depth = stride > 1 and form['conv1'] == 'space_to_depth'
    apply_conv = space_to_depth_conv if space_to_depth else conv
    y = jax.nn.relu(apply_conv(xi, kernel, bias, stride, padding))
    return tap(name, jnp.split(y, local_t, axis=-1))

  def norm_pool(xs, lrn, index):
    if lrn and spec.lrn:
      lrn_fn = lambda xi: local_response_norm(xi, spec.lrn_k, spec.lrn_n, spec.lrn_alpha,
                                              spec.lrn_beta, backward=form['lrn'])
      if spec.lrn_across_towers:
        xs = _lrn_across_towers(xs, lrn_fn, spec.lrn_n // 2, conv_tower_axis)
      else:
        xs = [lrn_fn(xi) for xi in xs]
      tap(f'lrn{index}', xs)
    return tap(f'pool{index}', [max_pool(xi, spec.pool_window, spec.pool_stride,
                                         backward=form['pool_backward']) for xi in xs])

  # conv1, conv2: each tower sees the image, then only itself.
  xs = conv_shared_input('conv1', x, spec.conv1_stride, spec.conv1_pads())
  xs = norm_pool(xs, lrn=True, index=1)
  xs = norm_pool(conv_tower('conv2', xs), lrn=True, index=2)
  # conv3 sees both towers.
  joined = _towers_to_channels(_join(xs, conv_tower_axis))
  xs = conv_shared_input('conv3', joined)
  xs = conv_tower('conv4', xs)
  xs = norm_pool(conv_tower('conv5', xs), lrn=False, index=5)

  # fc6 sees both towers' pool5 maps, flattened tower by tower.
  flat = _join([xi.reshape(xi.shape[0], -1) for xi in xs], conv_tower_axis)
  flat = jnp.moveaxis(flat, 0, 1).reshape(flat.shape[1], -1)  # (B, T * features)
  if fc_batch_axis is not None:
    flat = jax.lax.all_gather(flat, fc_batch_axis, axis=0, tiled=True)

  fc_local_t = params['fc6']['kernel'].shape[0]
  fc_towers = tower_ids(fc_tower_axis, fc_local_t)

  def dense_towers(name, h_in, layer_index):
    p = params[name]
    if train and spec.dropout_rate > 0 and spec.dropout_placement == 'inputs':
      # One mask per example for the input every fc tower reads (tower id 0 for all).
      mask = dropout_masks(dropout_key, example_ids, layer_index + 10, fc_towers[:1] * 0,
                           h_in.shape[-1], spec.dropout_rate)[0]
      h_in = h_in * mask.astype(compute_dtype)
    # One batched matmul over the tower axis: the kernel gradient lands in the
    # stacked (T, in, out) layout with no per-tower slices or copies.
    h_towers = jnp.broadcast_to(h_in, (fc_local_t, *h_in.shape))
    y = jnp.einsum('tbi,tio->tbo', h_towers, p['kernel'].astype(compute_dtype))
    hs = list(jax.nn.relu(y + p['bias'][:, None].astype(compute_dtype)))
    if train and spec.dropout_rate > 0 and spec.dropout_placement == 'paper':
      masks = dropout_masks(dropout_key, example_ids, layer_index, fc_towers,
                            hs[0].shape[-1], spec.dropout_rate)
      hs = [h * masks[t].astype(compute_dtype) for t, h in enumerate(hs)]
    return tap(name, hs)

  hs = dense_towers('fc6', flat, 6)
  hs = dense_towers('fc7', _towers_to_channels(_join(hs, fc_tower_axis)), 7)
  # fc8 = sum over towers of (own fc7 units) @ (own rows of the fc8 kernel).
  w8 = params['fc8']['kernel']
  out_dtype = jnp.promote_types(compute_dtype, jnp.float32)  # logits at least float32
  logits = sum((h @ w8[t].astype(compute_dtype)).astype(out_dtype) for t, h in enumerate(hs))
  if fc_tower_axis is not None:
    logits = jax.lax.psum(logits, fc_tower_axis)
  logits = logits + params['fc8']['bias'].astype(out_dtype)
  tap('fc8', [logits])
  extra = (jnp.concatenate(hs, axis=-1),) if with_fc7 else ()
  extra += (taps,) if activations else ()
  return (logits, *extra) if extra else logits
