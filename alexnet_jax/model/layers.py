"""The network's layers as pure functions of one tower's arrays (NHWC): convolution (and
conv1's strided convolution as a stride-1 one over blocks), local response normalisation
(section 3.3) and overlapping max pooling (section 3.4), each with the backward pass XLA:CPU
runs fastest, and the mesh-independent dropout masks. `model.apply` composes them into the
two-tower network; `tests/test_model.py` checks each against float64 NumPy.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp

from alexnet_jax.errors import ConfigError


def conv(x: jax.Array, kernel: jax.Array, bias: jax.Array, stride: int = 1,
         padding=None) -> jax.Array:
  """One tower's convolution, NHWC x HWIO."""
  if padding is None:  # 'same' for the odd kernels of conv2..5
    p = kernel.shape[0] // 2
    padding = ((p, p), (p, p))
  y = jax.lax.conv_general_dilated(
      x, kernel.astype(x.dtype), (stride, stride), padding,
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return y + bias.astype(x.dtype)


def space_to_depth_conv(x: jax.Array, kernel: jax.Array, bias: jax.Array, stride: int,
                        padding) -> jax.Array:
  """`conv(x, kernel, bias, stride, padding)` for a strided convolution (conv1: 11x11 stride
  4), computed as a stride-1 convolution of stride x stride blocks: the image's blocks become
  channels (224+3 -> 57x57x48) and the kernel, zero-padded to a multiple of the stride
  (11 -> 12), becomes 3x3x48. The same sums (the padded taps multiply zeros), but XLA:CPU
  runs the stride-1 convolution and its kernel gradient much faster than the strided one's
  (a window-dilated convolution)."""
  k, s = kernel.shape[0], stride
  (top, bottom), (left, right) = padding
  b, h, w, c = x.shape
  out_h = (h + top + bottom - k) // s + 1
  out_w = (w + left + right - k) // s + 1
  blocks = -(-k // s)  # kernel taps per dimension, in blocks of the stride
  size_h, size_w = (out_h - 1 + blocks) * s, (out_w - 1 + blocks) * s
  x = jnp.pad(x, ((0, 0), (top, size_h - h - top), (left, size_w - w - left), (0, 0)))
  x = x.reshape(b, size_h // s, s, size_w // s, s, c).transpose(0, 1, 3, 2, 4, 5)
  x = x.reshape(b, size_h // s, size_w // s, s * s * c)
  kernel = jnp.pad(kernel, ((0, blocks * s - k), (0, blocks * s - k), (0, 0), (0, 0)))
  kernel = kernel.reshape(blocks, s, blocks, s, c, -1).transpose(0, 2, 1, 3, 4, 5)
  kernel = kernel.reshape(blocks, blocks, s * s * c, -1)
  return conv(x, kernel, bias, 1, 'VALID')


def _window_sum(v, n):
  """Sum over the n channels centred on each channel, clipped at the tower's edges."""
  c = v.shape[-1]
  half = n // 2
  padded = jnp.pad(v, [(0, 0)] * (v.ndim - 1) + [(half, n - 1 - half)])
  return sum(padded[..., i:i + c] for i in range(n))


def _lrn_parts(x, k, n, alpha, beta):
  """base = k + alpha/n * (window sum of x^2) and scale = base^-beta."""
  base = k + (alpha / n) * _window_sum(jnp.square(x), n)
  if beta == 0.75:
    scale = jax.lax.rsqrt(base) * jnp.sqrt(jax.lax.rsqrt(base))  # base ** -0.75
  else:
    scale = base ** (-beta)
  return base, scale


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _lrn(x, k, n, alpha, beta):
  return x * _lrn_parts(x, k, n, alpha, beta)[1]


def _lrn_fwd(x, k, n, alpha, beta):
  base, scale = _lrn_parts(x, k, n, alpha, beta)
  return x * scale, (x, scale, scale / base)


def _lrn_bwd(k, n, alpha, beta, residuals, g):
  # y_j = x_j base_j^-beta, base_j = k + alpha/n sum_{i in W(j)} x_i^2, so
  # dx_i = g_i scale_i - 2 beta alpha/n x_i sum_{j: i in W(j)} g_j x_j scale_j / base_j;
  # the window is symmetric (n odd), so that last sum is the same window sum.
  x, scale, scale_over_base = residuals
  t = g * x * scale_over_base
  return (g * scale - (2.0 * beta * alpha / n) * x * _window_sum(t, n),)


_lrn.defvjp(_lrn_fwd, _lrn_bwd)


def local_response_norm(x: jax.Array, k: float = 2.0, n: int = 5,
                        alpha: float = 1e-4, beta: float = 0.75,
                        backward: str = 'custom') -> jax.Array:
  """Section 3.3 LRN across the channels of one tower.

  Convention: alpha is divided by n, as in cuda-convnet(2), Caffe and PyTorch's
  `LocalResponseNorm(n, alpha, beta, k)`, which is the convention that trained the
  published model (TensorFlow's `local_response_normalization` would take
  alpha / n directly). The window is clipped at the tower's first and last
  channel and never crosses towers. Written as shifted slices so that XLA fuses
  it with its neighbours (it is memory bound), with a hand-written backward pass
  (XLA would recompute the window and the power once per tap).
  """
  if n % 2 == 0:
    raise ConfigError(f'LRN size n={n} must be odd (a window centred on each channel).')
  acc = jnp.promote_types(x.dtype, jnp.float32)  # bfloat16 inputs: accumulate in float32
  if backward == 'autodiff':  # the same forward, differentiated by JAX (implementations.py)
    y = x.astype(acc) * _lrn_parts(x.astype(acc), float(k), int(n), float(alpha),
                                   float(beta))[1]
    return y.astype(x.dtype)
  return _lrn(x.astype(acc), float(k), int(n), float(alpha), float(beta)).astype(x.dtype)


def _pool_forward(x, window, stride):
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1),
                               (1, stride, stride, 1), 'VALID')


def _window_taps(x, window, stride, out_h, out_w):
  """x at tap (di, dj) of every output's window, (B, out_h, out_w, C), taps in row-major
  order."""
  for di in range(window):
    for dj in range(window):
      yield di, dj, jax.lax.slice(
          x, (0, di, dj, 0),
          (x.shape[0], di + stride * (out_h - 1) + 1, dj + stride * (out_w - 1) + 1,
           x.shape[3]), (1, stride, stride, 1))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool(x, window, stride):
  return _pool_forward(x, window, stride)


def _max_pool_fwd(x, window, stride):
  y = _pool_forward(x, window, stride)
  return y, (x, y)


def _max_pool_bwd(window, stride, residuals, g):
  # Each output's gradient goes to the first tap of its window (row-major) that holds the
  # maximum, as XLA's select-and-scatter (`ge`) and PyTorch route it; ties are common
  # (ReLU zeros). The first such tap of every window is found on the output grid; then the
  # input gradient is built as `stride` x `stride` interleaved grids, one per (row, column)
  # parity, each a sum of shifted tap shares, which XLA fuses into one pass over the
  # input. XLA:CPU runs select-and-scatter as packed reduce-windows instead (measured:
  # pool1's backward 80 ms against 14 here, batch 32).
  x, y = residuals
  b, h, w, c = x.shape
  out_h, out_w = y.shape[1:3]
  taps = list(_window_taps(x, window, stride, out_h, out_w))
  first = jnp.full(y.shape, len(taps), jnp.int32)
  for k, (_, _, tap) in reversed(list(enumerate(taps))):
    first = jnp.where(tap == y, k, first)
  grid_h, grid_w = -(-h // stride), -(-w // stride)  # rows / columns of one parity
  rows = []
  for a in range(stride):
    row = []
    for p in range(stride):
      acc = jnp.zeros((b, grid_h, grid_w, c), x.dtype)
      for k, (di, dj, _) in enumerate(taps):
        if di % stride == a and dj % stride == p:
          sh, sw = di // stride, dj // stride  # input (stride i + di) = grid row i + sh
          share = jnp.where(first == k, g, 0).astype(x.dtype)
          acc = acc + jax.lax.pad(share, jnp.zeros((), x.dtype),
                                  [(0, 0, 0), (sh, grid_h - out_h - sh, 0),
                                   (sw, grid_w - out_w - sw, 0), (0, 0, 0)])
      row.append(acc)
    rows.append(jnp.stack(row, axis=3))  # (B, grid_h, grid_w, parity p, C)
  dx = jnp.stack(rows, axis=2).reshape(b, grid_h * stride, grid_w * stride, c)
  return (dx[:, :h, :w],)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(x: jax.Array, window: int = 3, stride: int = 2,
             backward: str = 'custom') -> jax.Array:
  """Overlapping max pooling (section 3.4), VALID as in cuda-convnet, NHWC. `backward`:
  'custom' (above) or 'xla' (reduce_window differentiated by XLA: select-and-scatter)."""
  if backward == 'xla':
    return _pool_forward(x, int(window), int(stride))
  return _max_pool(x, int(window), int(stride))


def pad_channels(x: jax.Array, kernel: jax.Array, channels: int):
  """The image and conv1's kernel with zero input channels up to `channels` (3 -> 4 for
  tensor cores): the added channel multiplies zeros, so the sums are unchanged."""
  extra = channels - x.shape[-1]
  if extra <= 0:
    return x, kernel
  x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, extra)])
  kernel = jnp.pad(kernel, [(0, 0), (0, 0), (0, extra), (0, 0)])
  return x, kernel


def grouped_conv(xs: list[jax.Array], kernels: jax.Array, biases: jax.Array,
                 padding=None) -> list[jax.Array]:
  """The towers' stride-1 convolutions (tower t: xs[t] with kernels[t]) as one convolution
  with feature_group_count = towers: inputs side by side on the channel axis, kernels on
  the output axis, the output split back per tower."""
  towers = len(xs)
  x = jnp.concatenate(xs, axis=-1)
  kernel = jnp.concatenate(list(kernels), axis=-1)  # (k, k, C, T * F)
  if padding is None:
    p = kernel.shape[0] // 2
    padding = ((p, p), (p, p))
  y = jax.lax.conv_general_dilated(
      x, kernel.astype(x.dtype), (1, 1), padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      feature_group_count=towers)
  y = y + jnp.concatenate(list(biases), axis=-1).astype(x.dtype)
  return jnp.split(y, towers, axis=-1)


def dropout_masks(key: jax.Array, example_ids: jax.Array, layer: int,
                  tower_ids: Sequence[int] | jax.Array, width: int,
                  rate: float) -> jax.Array:
  """Keep-masks of shape (local_towers, batch, width) / (1 - rate).

  Each mask is drawn from fold_in(key, example, layer, tower): a function of the
  global example index and the global tower index only, so the masks are the
  same for every mesh and every way of splitting the batch.
  """

  def one(ex, tw):
    k = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, ex), layer), tw)
    return jax.random.bernoulli(k, 1.0 - rate, (width,))

  per_tower = jax.vmap(jax.vmap(one, in_axes=(0, None)), in_axes=(None, 0))
  keep = per_tower(example_ids, jnp.asarray(tower_ids))
  return keep.astype(jnp.float32) / (1.0 - rate)
