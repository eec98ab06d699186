"""How an image becomes the stored size x size image (`data.prepared_geometry`).

  centre_crop  the paper's (section 2): shorter side to `size`, then the central square
               (`transforms.resize_and_centre_crop`, bilinear, Pillow)
  warp         Caffe's (`convert_imageset --resize_height=256 --resize_width=256`, with which
               the model zoo's bvlc_alexnet was trained and measured): the whole image
               resized to size x size, its aspect ratio not kept, by OpenCV's `cv::resize`
               INTER_LINEAR (`warp`)

The geometry is part of the stored dataset's name (`builders.PreparedImages`), so stores of
the two never mix.
"""

from __future__ import annotations

import numpy as np

from alexnet_jax.data import decoders
from alexnet_jax.data import transforms

GEOMETRIES = ('centre_crop', 'warp')
# OpenCV's fixed-point bilinear weights (INTER_RESIZE_COEF_BITS = 11, imgproc/resize.cpp).
_COEF_SCALE = 1 << 11


def _taps(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per output coordinate: the two source indices and their 11-bit weights, as OpenCV
  computes them: the source coordinate (x + 0.5) * in / out - 0.5 in float32, clamped to
  the edge pixels (border replicate), each weight rounded to the nearest (even) integer."""
  x = ((np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5).astype(
      np.float32)
  left = np.floor(x)
  frac = (x - left).astype(np.float32)
  left = left.astype(np.int64)
  frac[left < 0] = 0
  left[left < 0] = 0
  frac[left >= in_size - 1] = 0
  left[left >= in_size - 1] = in_size - 1
  right = np.minimum(left + 1, in_size - 1)
  scale = np.float32(_COEF_SCALE)
  w0 = np.round((np.float32(1) - frac) * scale).astype(np.int64)
  w1 = np.round(frac * scale).astype(np.int64)
  return left, right, np.stack([w0, w1])


def warp(image: np.ndarray, size: int) -> np.ndarray:
  """An (H, W, C) uint8 image resized to (size, size, C) as OpenCV's INTER_LINEAR resize
  of 8-bit images computes it (2.4 and 3.x, the versions Caffe was built with; 4.x's
  bit-exact variant may differ by one level): a horizontal pass of exact integer sums with
  11-bit weights, then the vertical pass as its SIMD code rounds it,
  (((S0 >> 4) * b0 >> 16) + ((S1 >> 4) * b1 >> 16) + 2) >> 2. No antialiasing, as in
  OpenCV."""
  h, w = image.shape[:2]
  x0, x1, wx = _taps(size, w)
  y0, y1, wy = _taps(size, h)
  # int32 holds every value: 255 * 2049 >> 4 is 32,655, times a weight at most 66.9 M.
  src = image.astype(np.int32)
  wx, wy = wx.astype(np.int32), wy.astype(np.int32)
  rows = np.take(src, x0, axis=1) * wx[0][None, :, None]
  rows += np.take(src, x1, axis=1) * wx[1][None, :, None]
  rows >>= 4
  out = (np.take(rows, y0, axis=0) * wy[0][:, None, None]) >> 16
  out += (np.take(rows, y1, axis=0) * wy[1][:, None, None]) >> 16
  out += 2
  out >>= 2
  return np.clip(out, 0, 255).astype(np.uint8)


def prepare(image, size: int, channels: int = 3, geometry: str = 'centre_crop',
            decoder: str = 'pillow') -> np.ndarray:
  """Encoded image bytes (or a PIL image or array) as the stored (size, size, channels)
  uint8 image of `geometry`, decoded by `decoder` (`decoders.DECODERS`; Pillow and
  libjpeg-turbo give the same pixels). Raises one of transforms.DECODE_ERRORS on data
  that cannot be decoded."""
  if geometry == 'centre_crop':
    return decoders.decode(image, size, channels, decoder)
  if geometry != 'warp':
    raise ValueError(f'Unknown geometry {geometry!r}; one of {GEOMETRIES}.')
  array = decoders.decode(image, 0, channels, decoder)  # the whole image, upright
  return warp(array, size)


def centre_view(image, size: int, crop_size: int = 0, channels: int = 3,
                geometry: str = 'centre_crop'):
  """`transforms.centre_view` of an image prepared by `geometry`: what evaluation sees of
  it (predictions on image files). Returns (uint8 view, window)."""
  if geometry == 'centre_crop':
    return transforms.centre_view(image, size, crop_size, channels)
  prepared = prepare(image, size, channels, geometry)
  view_size = crop_size or size
  return (transforms.centre_crop(prepared, view_size),
          transforms.ten_crop_windows(prepared.shape, view_size)[4])
