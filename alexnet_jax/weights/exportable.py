"""What every exporter takes and must match: the network (parameters and spec), the input
normalisation its checkpoint was trained with, its class names and config, and the JAX
logits its exported copy is checked against.

Every export is the inference network (no dropout) in float32, whatever `model.dtype`
trained it. Where a format carries the preprocessing (ONNX, StableHLO) its input is the
image as decoded: float32 pixels (batch, H, W, C) on the 0-255 scale, RGB (or grey), of the
network's input size, from which it subtracts the mean and multiplies by the scale exactly as
the project's evaluation does for the centre view (`pixels.normalize`). A per-pixel mean of a
larger prepared image (the stream pipeline's 256x256) is cut to its central window, the
window of the centre view.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata

import jax
import numpy as np

from alexnet_jax.model import network
from alexnet_jax.model import pixels

# The plain forms of the layers (implementations.py): the same sums as any other form, with
# no backend lookup at trace time, so a traced function means the same on every platform.
PLAIN_FORMS = dict(conv1_impl='strided', conv1_input='as_is', tower_conv='grouped',
                   pool_backward='xla', lrn_impl='autodiff')
CHECK_IMAGES = 2  # random images each written file is checked on
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Network:
  """A network to export. `params`: numpy float32 in `spec.param_shapes()`; `mean`: what
  training subtracted, per pixel (S, S, C) of the prepared image or per channel (C,);
  `scale`: per channel (C,) or None (the paper's 0-255 scale)."""
  params: dict
  spec: network.AlexNetSpec
  mean: np.ndarray
  scale: np.ndarray | None = None
  class_names: tuple[str, ...] = ()
  config: dict | None = None
  step: int = 0
  source: str = ''

  @classmethod
  def of(cls, params, spec, mean=None, scale=None, class_names=None, **kwargs) -> 'Network':
    """With numpy float32 parameters, zero mean by default and numbered classes."""
    params = jax.tree.map(lambda a: np.asarray(a, np.float32), params)
    mean = np.zeros((spec.in_channels,), np.float32) if mean is None else mean
    names = tuple(class_names or (str(i) for i in range(spec.num_classes)))
    return cls(params, dataclasses.replace(spec, **PLAIN_FORMS), np.asarray(mean, np.float32),
               None if scale is None else np.asarray(scale, np.float32), names, **kwargs)

  @property
  def input_shape(self) -> tuple[int, int, int]:
    return (self.spec.image_size, self.spec.image_size, self.spec.in_channels)

  def mean_window(self) -> tuple[int, int]:
    """(top, left) of the centre view in a per-pixel mean (`transforms.ten_crop_offsets`)."""
    if self.mean.ndim != 3:
      return 0, 0
    size = self.spec.image_size
    return (self.mean.shape[0] - size) // 2, (self.mean.shape[1] - size) // 2

  def input_mean(self) -> np.ndarray:
    """The mean subtracted from an input of the network's size: (H, W, C) or (C,)."""
    if self.mean.ndim != 3:
      return self.mean
    top, left = self.mean_window()
    size = self.spec.image_size
    return np.ascontiguousarray(self.mean[top:top + size, left:left + size])

  def input_scale(self) -> np.ndarray:
    """The per-channel scale, ones for the paper's 0-255 scale."""
    return np.ones((self.spec.in_channels,), np.float32) if self.scale is None else self.scale


def check_images(net: Network, count: int = CHECK_IMAGES, seed: int = 0) -> np.ndarray:
  """Random pixels (count, H, W, C): whole numbers in 0-255, as float32."""
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (count, *net.input_shape)).astype(np.float32)


@functools.partial(jax.jit, static_argnames='spec')
def _logits(params, batch, mean, scale, spec):
  return network.apply(params, pixels.normalize(batch, mean, scale), spec)


def jax_logits(net: Network, images: np.ndarray) -> np.ndarray:
  """The project's own logits for float32 pixels (B, H, W, C): the centre view normalised by
  `pixels.normalize`, as evaluation does, then `network.apply` at float32 precision."""
  top, left = net.mean_window()
  windows = np.tile(np.array([top, left, 0], np.int32), (len(images), 1))
  batch = pixels.pixel_batch(np.asarray(images, np.float32), windows)
  with jax.default_matmul_precision('highest'):
    return np.asarray(_logits(net.params, batch, net.mean, net.scale, net.spec))


def relative_error(got, want) -> float:
  """max |got - want| / max |want|, in float64."""
  want = np.asarray(want, np.float64)
  return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


def project_version() -> str:
  try:
    return importlib.metadata.version('alexnet-jax')
  except importlib.metadata.PackageNotFoundError:
    return 'unknown (alexnet-jax is not installed)'


def lrn_form(spec: network.AlexNetSpec) -> str:
  if not spec.lrn:
    return 'none'
  where = 'across all channels of both towers (Caffe)' if spec.lrn_across_towers else (
      'within each tower (the paper)' if spec.num_towers > 1 else 'across the channels')
  return (f'after conv1 and conv2, {where}: x / (k + alpha / n * window sum of x^2)^beta, '
          f'k={spec.lrn_k}, n={spec.lrn_n}, alpha={spec.lrn_alpha}, beta={spec.lrn_beta}')


def description(net: Network, with_preprocessing: bool = True) -> dict:
  """What every format states about itself (as metadata, doc strings or a sidecar file)."""
  spec = net.spec
  mean = net.input_mean()
  out = {
      'format_version': FORMAT_VERSION,
      'producer': f'alexnet_jax {project_version()}',
      'source': net.source, 'step': net.step,
      'network': 'inference (dropout off), float32',
      'towers': spec.num_towers,
      'lrn': lrn_form(spec),
      'spec': {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)
               if f.name not in PLAIN_FORMS},
      'class_names': list(net.class_names),
      'normalisation': {
          'input': (f'float32 pixels, NHWC (batch, {spec.image_size}, {spec.image_size}, '
                    f'{spec.in_channels}), {"RGB" if spec.in_channels == 3 else "grey"}, '
                    '0-255'),
          'formula': '(pixels - mean) * scale',
          'mean': 'per pixel (H, W, C)' if mean.ndim == 3 else
                  [float(v) for v in mean],
          'scale': None if net.scale is None else [float(v) for v in net.scale],
          'included': with_preprocessing,
      },
      'config': net.config,
  }
  if mean.ndim == 3:
    out['normalisation']['mean_source'] = (
        f'the central {spec.image_size}x{spec.image_size} window (top, left = '
        f'{net.mean_window()}) of the training set\'s {net.mean.shape[0]}x'
        f'{net.mean.shape[1]} mean image')
  return out
