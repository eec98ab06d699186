"""The paper's host-side image operations (sections 2 and 4.1), in numpy and Pillow.

Every function takes one image (H, W, C), or where it says so a batch (..., H, W, C), and
returns a new array; randomness comes only from the `np.random.Generator` passed in, so a
transform is a pure function of (image, rng state) and a loader that seeds a batch's
generator from (seed, step) is deterministic.

  prepare:  `decode` -> `resize_and_centre_crop`: shorter side to 256, central 256x256 (uint8)
  train:    `train_draws` -> `TrainDraws.windows`, `crop`: a random 224 crop, whether to
            reflect it, the PCA lighting shift
  test:     `centre_crop`, the 10 crops (`ten_crop_windows`: 4 corners, centre, reflections)
  mean/PCA: `PixelStatistics`: the training set's per-pixel mean and RGB eigenvectors

The host does only the uint8 half of a view; the float half (reflection, mean, PCA shift)
runs on the device inside the step (`alexnet_jax.model.pixels.normalize`), driven by each view's
window (top, left, reflected) and shift. Pixel values stay on the 0-255 scale; the card's PCA
constants are on the 0-1 scale and are multiplied by `PIXEL_SCALE` (255) when applied.
"""

from __future__ import annotations

import dataclasses
import io
import re
from typing import Any

import numpy as np

# PCA of the RGB covariance over ImageNet's training pixels, 0-1 scale (reference card;
# the constants of fb.resnet.torch and many ports). Eigenvectors are the columns.
IMAGENET_EIGVAL = np.array([0.2175, 0.0188, 0.0045], np.float64)
IMAGENET_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009],
                            [-0.5808, -0.0045, -0.8140],
                            [-0.5836, -0.6948, 0.4203]], np.float64)
PIXEL_SCALE = 255.0
# The most pixels an image may have to be decoded: an 8192 x 8192 photo (192 MiB in RGB). A
# "decompression bomb" (a PNG of a few kilobytes that says it is 40000 x 40000) fails at its
# header, before any memory is taken for it.
MAX_IMAGE_PIXELS = 1 << 26


class ImageTooLargeError(ValueError):
  """An image with more than MAX_IMAGE_PIXELS pixels."""


def _decode_errors():
  from PIL import Image
  return (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


# What Pillow raises on data it cannot decode (broken, truncated, not an image, too large).
DECODE_ERRORS = _decode_errors()
EXIF_ORIENTATION = 0x0112


def record_name(record) -> str:
  """' (<file name>)' of a dataset record that has one (image folders, ImageNet), else '':
  what a decode error names."""
  name = record.get('file_name', b'') if isinstance(record, dict) else b''
  name = name.decode() if isinstance(name, bytes) else str(name)
  return f' ({name})' if name else ''


PREPARED_SIZE = 256  # the paper's stored images: shorter side 256, central 256x256
CROP_SIZE = 224  # the network's input


# ---- preparation (once per image, uint8) -----------------------------------------


_QUIET = []


def _quiet_pillow_bomb_warning() -> None:
  """Pillow warns on images over 89 million pixels at open; MAX_IMAGE_PIXELS is lower, so
  such an image fails here in one sentence anyway (the filter is set once, at first use)."""
  if not _QUIET:
    import warnings

    from PIL import Image
    warnings.filterwarnings('ignore', category=Image.DecompressionBombWarning)
    _QUIET.append(True)


def open_image(image, max_pixels: int = MAX_IMAGE_PIXELS):
  """Encoded image bytes or an image file's path as a loaded PIL image, upright: an EXIF
  orientation (a photo taken with the camera turned) is applied, as every photo viewer
  shows it. Raises one of DECODE_ERRORS on data Pillow cannot read, and ImageTooLargeError,
  from the header alone, on more than `max_pixels` pixels."""
  from PIL import Image
  from PIL import ImageOps
  _quiet_pillow_bomb_warning()
  source = io.BytesIO(image) if isinstance(image, (bytes, bytearray, memoryview)) else image
  try:
    pil = Image.open(source)
  except Image.DecompressionBombError as e:  # Pillow's own limit, higher than ours
    n = re.search(r'\((\d+) pixels\)', str(e))
    raise ImageTooLargeError(f'it is {int(n.group(1)) if n else "over 178 million":,} pixels, '
                             f'more than the {max_pixels:,} that are decoded; resize it '
                             'first') from None
  w, h = pil.size
  if w * h > max_pixels:
    raise ImageTooLargeError(f'it is {w}x{h} pixels, more than the {max_pixels:,} that are '
                             'decoded; resize it first')
  pil.load()
  if pil.getexif().get(EXIF_ORIENTATION, 1) != 1:
    pil = ImageOps.exif_transpose(pil)
  return pil


def _to_pil(image):
  from PIL import Image
  if isinstance(image, (bytes, bytearray, memoryview)):
    return open_image(image)
  if isinstance(image, Image.Image):
    return image
  array = np.asarray(image, np.uint8)
  return Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[2] == 1 else array)


def resize_and_centre_crop(image, size: int = PREPARED_SIZE,
                           channels: int | None = None) -> np.ndarray:
  """The paper's preparation: rescale so that the shorter side is `size` (bilinear, Pillow),
  then the central size x size crop. `image` is a PIL image or an (H, W[, C]) uint8 array;
  `channels` (1 or 3) converts the colour mode, None keeps it. Returns (size, size, C) uint8.

  The new longer side is round(longer * size / shorter), at least `size`; the crop starts at
  ((H' - size) // 2, (W' - size) // 2). An image whose shorter side is already `size` is not
  resampled, only cropped.
  """
  from PIL import Image
  image = _to_pil(image)
  if channels is not None:
    image = image.convert('L' if channels == 1 else 'RGB')
  elif image.mode not in ('L', 'RGB'):
    image = image.convert('RGB')
  w, h = image.size
  if min(w, h) == size:  # already prepared (stored at this size): no resampling
    left, top = (w - size) // 2, (h - size) // 2
    array = np.asarray(image if w == h else image.crop((left, top, left + size, top + size)),
                       np.uint8)
    return array.reshape(size, size, -1)
  scale = size / min(w, h)
  new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
  left, top = (new_w - size) // 2, (new_h - size) // 2
  # Resampling only the window that the crop keeps (Pillow's `box`, in source coordinates)
  # gives the pixels of resize-then-crop (within rounding: at most 1 of 255), about 20% faster.
  sx, sy = w / new_w, h / new_h
  box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
  array = np.asarray(image.resize((size, size), Image.BILINEAR, box=box), np.uint8)
  return array.reshape(size, size, -1)


def decode(image: Any, prepared_size: int, channels: int = 3) -> np.ndarray:
  """An encoded image (bytes), a PIL image or a uint8 array as the paper's prepared image
  (prepared_size x prepared_size x channels uint8; prepared_size 0: only the colour mode).
  Raises one of DECODE_ERRORS on data Pillow cannot read."""
  pil = _to_pil(image)
  if prepared_size:
    return resize_and_centre_crop(pil, prepared_size, channels)
  out = np.asarray(pil.convert('L' if channels == 1 else 'RGB'), np.uint8)
  return out.reshape(*out.shape[:2], channels)


# ---- training views ----------------------------------------------------------------


def crop(image: np.ndarray, top: int, left: int, size: int) -> np.ndarray:
  """The size x size window whose top-left pixel is (top, left), of an image or a batch
  (..., H, W, C)."""
  h, w = image.shape[-3:-1]
  if not (0 <= top <= h - size and 0 <= left <= w - size):
    raise ValueError(f'A {size}x{size} window at ({top}, {left}) does not fit in {h}x{w}.')
  return image[..., top:top + size, left:left + size, :]


def crop_windows(shape, place: np.ndarray, size: int | None) -> np.ndarray:
  """(top, left) of each row's size x size window in an (H, W, ...) image, from `place`
  (N, 2), uniform in [0, 1): floor(place * (H - size + 1)), so each of the H - size + 1
  positions (and W's) is equally likely. `size` None: no crop, every window at (0, 0)."""
  place = np.asarray(place, np.float64)
  if size is None:
    return np.zeros(place.shape, np.int32)
  h, w = shape[:2]
  if h < size or w < size:
    raise ValueError(f'Cannot take a {size}x{size} crop of a {h}x{w} image.')
  positions = np.array([h - size + 1, w - size + 1])
  # min: a place within 2^-53 of 1 can round up to `positions` in the product.
  return np.minimum(np.floor(place * positions), positions - 1).astype(np.int32)


def pca_shift(alpha: np.ndarray, eigval=IMAGENET_EIGVAL, eigvec=IMAGENET_EIGVEC,
              scale: float = PIXEL_SCALE) -> np.ndarray:
  """The RGB value added to every pixel of an image (section 4.1), for each row of `alpha`
  (..., 3), a_i ~ N(0, sigma): [p1 p2 p3][a1 l1, a2 l2, a3 l3]^T, times `scale` (the
  constants are on the 0-1 scale, pixels on 0-255). Its covariance over draws is
  scale^2 P diag(sigma^2 l^2) P^T."""
  alpha = np.asarray(alpha, np.float64) * np.asarray(eigval, np.float64)
  return (alpha @ np.asarray(eigvec, np.float64).T * scale).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class TrainDraws:
  """The random part of a batch's training views (section 4.1), one row per example."""
  place: np.ndarray  # (N, 2) uniform in [0, 1): where the crop lies along H and W
  reflect: np.ndarray  # (N,) bool, each true with probability 1/2
  shift: np.ndarray  # (N, C) float32: the PCA lighting shift, 0 where it is off

  def windows(self, shape, crop_size: int | None = CROP_SIZE, flip: bool = True):
    """(N, 3) int32 windows (top, left, reflected) in an image of `shape` (H, W, C): where
    each view is cut and the per-pixel mean is taken from, and whether both are reflected."""
    reflected = self.reflect & bool(flip)
    return np.concatenate([crop_windows(shape, self.place, crop_size),
                           reflected[:, None].astype(np.int32)], axis=1)


def train_draws(rng: np.random.Generator, n: int, channels: int = 3, pca_sigma: float = 0.1,
                eigval=IMAGENET_EIGVAL, eigvec=IMAGENET_EIGVEC) -> TrainDraws:
  """The draws of n training views at once, in this order: the crops' places (n, 2), the
  reflections (n), the PCA lighting's alphas (n, 3; `pca_sigma` 0: no shift), whatever is
  switched off, so that turning one switch leaves the others' draws alone. A loader draws a
  whole global batch from one generator seeded (seed, step): one call, where a Generator
  per example held the GIL for 25 us an image and kept decode threads from scaling."""
  place = rng.random((n, 2))
  reflect = rng.random(n) < 0.5
  alpha = rng.normal(0.0, 1.0, (n, 3))
  if not pca_sigma:
    return TrainDraws(place, reflect, np.zeros((n, channels), np.float32))
  if channels != 3:
    raise ValueError(f'PCA lighting needs RGB images, not {channels} channels.')
  return TrainDraws(place, reflect, pca_shift(alpha * pca_sigma, eigval, eigvec))


# ---- test views ---------------------------------------------------------------------


def ten_crop_offsets(shape, size: int) -> list[tuple[int, int]]:
  """(top, left) of the paper's five test windows in an (H, W, ...) image: top-left,
  top-right, bottom-left, bottom-right corners and the centre ((H - size) // 2, (W - size) // 2)."""
  h, w = shape[:2]
  return [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size),
          ((h - size) // 2, (w - size) // 2)]


def ten_crop_windows(shape, size: int) -> np.ndarray:
  """The 10 test windows as (top, left, reflected) rows: the five of `ten_crop_offsets`,
  then the same five reflected."""
  five = np.array(ten_crop_offsets(shape, size), np.int32)
  return np.concatenate([np.c_[five, np.zeros(5, np.int32)], np.c_[five, np.ones(5, np.int32)]])


def ten_crop_unreflected(image: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
  """The pixels of the 10 test views of an image or a batch (..., H, W, C), stacked on axis
  -4: views 5-9 are copies of views 0-4, for a device that reflects them (the windows' third
  column)."""
  five = [crop(image, t, l, size) for t, l in ten_crop_offsets(image.shape[-3:], size)]
  return np.stack(five + five, axis=-4)


def ten_crop(image: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
  """The paper's 10 test views (section 4.1) of an image or a batch, stacked on axis -4:
  views 0-4 the windows of `ten_crop_offsets`, views 5-9 the same windows reflected."""
  views = ten_crop_unreflected(image, size)
  views[..., 5:, :, :, :] = views[..., :5, :, ::-1, :]
  return views


def centre_crop(image: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
  return crop(image, *ten_crop_offsets(image.shape[-3:], size)[4], size)


def centre_view(image: Any, size: int, crop_size: int = 0, channels: int = 3):
  """The centre view of any image as the eval split gives it: the image prepared at `size`
  (shorter side, central square), then its central `crop_size` crop (0: all of it). Returns
  (uint8 view, window)."""
  prepared = decode(image, size, channels)
  view_size = crop_size or size
  return centre_crop(prepared, view_size), ten_crop_windows(prepared.shape, view_size)[4]


# ---- the training set's mean and PCA (section 2 and 4.1) -------------------------------


class PixelStatistics:
  """The per-pixel mean image and the RGB covariance over images of one size, accumulated in
  float64 (sums of uint8 values are exact, so the mean does not depend on how the images are
  grouped into `add` calls)."""

  CHUNK = 1024  # images per float64 matrix product, to bound memory

  def __init__(self, pca: bool = True):
    """`pca`: also accumulate the RGB covariance (for `pca`; RGB images only)."""
    self.total = self.moments = self.squares = None
    self.count = 0
    self.with_pca = pca

  def add(self, images: np.ndarray) -> None:
    """One image (H, W, C) or a batch (N, H, W, C) of uint8 pixels."""
    images = np.asarray(images)
    images = images.reshape(-1, *images.shape[-3:])
    if self.total is None:
      channels = images.shape[-1]
      self.total = np.zeros(images.shape[1:], np.float64)
      self.moments = np.zeros((channels, channels), np.float64)
      self.squares = np.zeros((channels,), np.float64)
    self.total += images.sum(axis=0, dtype=np.float64)
    for start in range(0, len(images), self.CHUNK):  # sum of x^2 per channel, exact in float64
      chunk = images[start:start + self.CHUNK].reshape(-1, images.shape[-1]).astype(np.float64)
      self.squares += np.einsum('pc,pc->c', chunk, chunk)
    if self.with_pca and images.shape[-1] == 3:
      for start in range(0, len(images), self.CHUNK):
        pixels = images[start:start + self.CHUNK].reshape(-1, 3).astype(np.float64)
        self.moments += pixels.T @ pixels
    self.count += len(images)

  def mean(self) -> np.ndarray:
    """The per-pixel mean image (H, W, C), float64, 0-255."""
    return self.total / self.count

  def pca(self) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending) and eigenvectors (columns) of the covariance of every RGB
    pixel, on the 0-1 scale of the reference card's constants. The sign of each eigenvector
    is fixed so that its first non-zero entry is negative, as the card's."""
    mean = self.mean()
    m = mean.reshape(-1, 3).mean(axis=0)  # mean RGB over every pixel
    pixels = self.count * mean.shape[0] * mean.shape[1]
    cov = self.moments / pixels - np.outer(m, m)
    eigval, eigvec = np.linalg.eigh(cov / PIXEL_SCALE**2)
    order = np.argsort(eigval)[::-1]
    eigval, eigvec = eigval[order], eigvec[:, order]
    for i in range(3):
      first = eigvec[np.flatnonzero(np.abs(eigvec[:, i]) > 1e-12)[0], i]
      if first > 0:
        eigvec[:, i] = -eigvec[:, i]
    return eigval, eigvec

  def as_dict(self) -> dict:
    """What scripts/compute_pixel_statistics.py writes and data.statistics reads: mean
    (float32), count, the per-channel mean square (for `std_around`) and, for RGB, eigval
    and eigvec."""
    pixels = self.count * self.total.shape[0] * self.total.shape[1]
    out = {'mean': self.mean().astype(np.float32), 'count': self.count,
           'mean_square': self.squares / pixels}
    if self.with_pca and self.total.shape[-1] == 3:
      out['eigval'], out['eigvec'] = self.pca()
    return out


def std_around(mean_image: np.ndarray, mean_square: np.ndarray, mode: str) -> np.ndarray:
  """The training set's standard deviation per channel (C,) around the mean that `mode`
  subtracts (`mean_to_subtract`), from its mean image (H, W, C) and its mean square per
  channel E[x^2]: E[x^2] - E_pixels[mu_p^2] for 'pixel', E[x^2] - E[x]^2 for 'channel',
  sqrt(E[x^2]) for 'none'."""
  mu = np.asarray(mean_image, np.float64).reshape(-1, np.shape(mean_image)[-1])
  subtracted = {'pixel': (mu ** 2).mean(axis=0), 'channel': mu.mean(axis=0) ** 2,
                'none': 0.0}[mode]
  return np.sqrt(np.maximum(np.asarray(mean_square, np.float64) - subtracted, 0.0))


def scale_to_unit_std(std: np.ndarray) -> np.ndarray:
  """What the device multiplies the centred pixels by for data.std=channel: 1 / std, with
  std at least one level of 255 (a folder of flat images has almost none)."""
  return (1.0 / np.maximum(np.asarray(std, np.float64), 1.0)).astype(np.float32)


# 'given': the values of data.mean_values / data.std_values (per channel, 0-255 scale), those
# a published network was trained with (Caffe's and torchvision's ImageNet means and stds).
STD_MODES = ('none', 'channel', 'given')
MEAN_MODES = ('pixel', 'channel', 'none', 'given')


def mean_and_scale(d, stats: dict | None) -> tuple[np.ndarray, np.ndarray | None]:
  """What the device subtracts and multiplies by for `config.data` `d`, from the training
  set's statistics `stats` (None where `d` needs none) or the given values."""
  if d.mean == 'given':
    mean = np.asarray(d.mean_values, np.float32)
  elif d.mean == 'none':
    mean = np.zeros((d.channels,), np.float32)
  else:
    mean = mean_to_subtract(stats['mean'], d.mean)
  scale = None
  if d.std == 'given':
    scale = (1.0 / np.asarray(d.std_values, np.float64)).astype(np.float32)
  elif d.std == 'channel':
    around = 'channel' if d.mean == 'given' else d.mean
    scale = scale_to_unit_std(std_around(stats['mean'], stats['mean_square'], around))
  return mean, scale


def mean_to_subtract(mean_image: np.ndarray, mode: str) -> np.ndarray:
  """What the device subtracts (section 2: the per-pixel mean) from the training set's mean
  image (H, W, C): the image itself ('pixel'), its channel means (C,) or zeros ('none')."""
  mean_image = np.asarray(mean_image)
  if mode == 'pixel':
    return mean_image.astype(np.float32)
  if mode == 'channel':
    return mean_image.reshape(-1, mean_image.shape[-1]).astype(np.float64).mean(
        axis=0).astype(np.float32)
  return np.zeros((mean_image.shape[-1],), np.float32)
