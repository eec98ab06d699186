"""The paper's per-image transforms (sections 2 and 4.1), in numpy and Pillow.

Every function takes one image, (H, W, C), and returns a new array; randomness comes only
from the `np.random.Generator` passed in, so a transform is a pure function of (image, rng
state) and a loader that seeds its generators from (seed, step, example) is deterministic.

  prepare:  `resize_and_centre_crop`   shorter side to 256, central 256x256 (uint8, Pillow)
  train:    `subtract_mean` -> `random_crop` (224 of 256) -> `random_reflection`
            -> `pca_lighting` (sigma 0.1)    (`train_view` = `train_crop` + `normalize`)
  test:     `centre_crop`, `ten_crop` (4 corners, centre, and their reflections)

Pixel values stay on the 0-255 scale; the card's PCA constants are on the 0-1 scale and are
multiplied by `PIXEL_SCALE` (255) when applied.

The loaders run the uint8 half on the host (`train_crop`: the crop and the random draws)
and leave the rest (`normalize`: reflection, mean and PCA shift) to the device, inside the
jitted step (`input_pipeline.normalize`): the host moves bytes, the device does arithmetic.
"""

from __future__ import annotations

import numpy as np

# PCA of the RGB covariance over ImageNet's training pixels, 0-1 scale (reference card;
# the constants of fb.resnet.torch and many ports). Eigenvectors are the columns.
IMAGENET_EIGVAL = np.array([0.2175, 0.0188, 0.0045], np.float64)
IMAGENET_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009],
                            [-0.5808, -0.0045, -0.8140],
                            [-0.5836, -0.6948, 0.4203]], np.float64)
PIXEL_SCALE = 255.0
# What Pillow raises on data it cannot decode (broken, truncated, not an image).
DECODE_ERRORS = (OSError, ValueError, SyntaxError)
PREPARED_SIZE = 256  # the paper's stored images: shorter side 256, central 256x256
CROP_SIZE = 224  # the network's input


# ---- preparation (once per image, uint8) -----------------------------------------


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
  if isinstance(image, np.ndarray):
    image = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
  if channels is not None:
    image = image.convert('L' if channels == 1 else 'RGB')
  elif image.mode not in ('L', 'RGB'):
    image = image.convert('RGB')
  w, h = image.size
  if w == h == size:  # already prepared (stored at this size): no resampling, no crop
    return np.asarray(image, np.uint8).reshape(size, size, -1)
  if min(w, h) == size:
    left, top = (w - size) // 2, (h - size) // 2
    array = np.asarray(image.crop((left, top, left + size, top + size)), np.uint8)
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


# ---- training views ----------------------------------------------------------------


def subtract_mean(image: np.ndarray, mean: np.ndarray) -> np.ndarray:
  """float32 image minus the training set's mean: a per-pixel mean (H, W, C) of the same size
  as the image, or a per-channel mean (C,)."""
  return image.astype(np.float32) - np.asarray(mean, np.float32)


def crop(image: np.ndarray, top: int, left: int, size: int) -> np.ndarray:
  """The size x size window whose top-left pixel is (top, left)."""
  h, w = image.shape[:2]
  if not (0 <= top <= h - size and 0 <= left <= w - size):
    raise ValueError(f'A {size}x{size} window at ({top}, {left}) does not fit in {h}x{w}.')
  return image[top:top + size, left:left + size]


def random_crop_offset(shape, size: int, rng: np.random.Generator) -> tuple[int, int]:
  """(top, left), each uniform over every position where the window fits: 0 .. H - size."""
  h, w = shape[:2]
  if h < size or w < size:
    raise ValueError(f'Cannot take a {size}x{size} crop of a {h}x{w} image.')
  top, left = rng.integers(0, [h - size + 1, w - size + 1])
  return int(top), int(left)


def random_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
  return crop(image, *random_crop_offset(image.shape, size, rng), size)


def reflect(image: np.ndarray) -> np.ndarray:
  """Horizontal reflection: column j becomes column W - 1 - j."""
  return image[:, ::-1]


def random_reflection(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """The image or its reflection, each with probability 1/2."""
  return reflect(image) if rng.random() < 0.5 else image


def pca_shift(rng: np.random.Generator, sigma: float = 0.1, eigval=IMAGENET_EIGVAL,
              eigvec=IMAGENET_EIGVEC, scale: float = PIXEL_SCALE) -> np.ndarray:
  """The RGB value added to every pixel of one image (section 4.1):
  [p1 p2 p3][a1 l1, a2 l2, a3 l3]^T with a_i ~ N(0, sigma), times `scale` (the constants are
  on the 0-1 scale, pixels on 0-255). Its covariance over draws is
  scale^2 P diag(sigma^2 l^2) P^T."""
  alpha = rng.normal(0.0, sigma, 3)
  return (np.asarray(eigvec) @ (alpha * np.asarray(eigval)) * scale).astype(np.float32)


def pca_lighting(image: np.ndarray, rng: np.random.Generator, sigma: float = 0.1,
                 eigval=IMAGENET_EIGVAL, eigvec=IMAGENET_EIGVEC,
                 scale: float = PIXEL_SCALE) -> np.ndarray:
  """PCA colour augmentation of an RGB image (float32 out): one draw of `pca_shift` added to
  every pixel."""
  if image.shape[-1] != 3:
    raise ValueError(f'PCA lighting needs RGB images, not {image.shape[-1]} channels.')
  return image.astype(np.float32) + pca_shift(rng, sigma, eigval, eigvec, scale)


def pca_from_pixels(pixels: np.ndarray, scale: float = PIXEL_SCALE):
  """Eigenvalues (descending) and eigenvectors (columns) of the RGB covariance of `pixels`
  (..., 3) on the 0-255 scale, returned on the 0-1 scale like the card's constants. The sign
  of each eigenvector is fixed so that its first non-zero entry is negative, as the card's."""
  x = pixels.reshape(-1, 3).astype(np.float64) / scale
  cov = np.cov(x, rowvar=False)
  eigval, eigvec = np.linalg.eigh(cov)
  order = np.argsort(eigval)[::-1]
  eigval, eigvec = eigval[order], eigvec[:, order]
  for i in range(3):
    first = eigvec[np.flatnonzero(np.abs(eigvec[:, i]) > 1e-12)[0], i]
    if first > 0:
      eigvec[:, i] = -eigvec[:, i]
  return eigval, eigvec


def train_crop(image: np.ndarray, rng: np.random.Generator, crop_size: int | None = CROP_SIZE,
               flip: bool = True, pca_sigma: float = 0.1, eigval=IMAGENET_EIGVAL,
               eigvec=IMAGENET_EIGVEC):
  """The host's half of one training view of a prepared image: a random crop (`crop_size`
  None: off) of the uint8 image, whether to reflect it (`flip`: with probability 1/2) and
  the PCA shift (`pca_sigma` 0: off). The generator is used in that order: crop offset,
  reflection, PCA.

  Returns (crop, window, shift): the uint8 crop, unreflected (a view of `image`; a reflected
  copy costs numpy 25x a plain one, 3-byte runs); window = (top, left, reflected), which says
  where the per-pixel mean is taken from and whether view and mean are reflected; the
  float32 shift (C,) to add to every pixel. The rest (`normalize`: reflection, mean, shift)
  runs on the device, so the host only moves bytes, a quarter of what float32 would be."""
  top = left = 0
  view = image
  if crop_size is not None:
    top, left = random_crop_offset(image.shape, crop_size, rng)
    view = crop(view, top, left, crop_size)
  reflected = bool(flip and rng.random() < 0.5)
  shift = np.zeros((image.shape[-1],), np.float32)
  if pca_sigma:
    if image.shape[-1] != 3:
      raise ValueError(f'PCA lighting needs RGB images, not {image.shape[-1]} channels.')
    shift = pca_shift(rng, pca_sigma, eigval, eigvec)
  return view, np.array([top, left, reflected], np.int32), shift


def normalize(view: np.ndarray, window, shift, mean=None) -> np.ndarray:
  """The float half of a view, in numpy (the device does the same, `input_pipeline.
  normalize`): the uint8 crop minus the mean under it, reflected if window[2] says so, plus
  the PCA shift. A per-pixel mean (H, W, C) of the prepared image is cropped at the window;
  a per-channel mean (C,) is subtracted as it is."""
  out = view.astype(np.float32)
  top, left, reflected = (int(v) for v in window)
  if mean is not None:
    mean = np.asarray(mean, np.float32)
    out -= crop(mean, top, left, view.shape[0]) if mean.ndim == 3 else mean
  if reflected:
    out = reflect(out)
  return out + np.asarray(shift, np.float32)


def train_view(image: np.ndarray, rng: np.random.Generator, mean=None,
               crop_size: int | None = CROP_SIZE, flip: bool = True,
               pca_sigma: float = 0.1, eigval=IMAGENET_EIGVAL,
               eigvec=IMAGENET_EIGVEC) -> np.ndarray:
  """One whole training view of a prepared image, float32: `train_crop` then `normalize`.
  Equal to `pca_lighting(random_reflection(crop(subtract_mean(image, mean))))` with the
  same draws (`mean` None: off; a per-pixel mean is cropped and reflected with the image)."""
  view, window, shift = train_crop(image, rng, crop_size, flip, pca_sigma, eigval, eigvec)
  return normalize(view, window, shift, mean)


# ---- test views ---------------------------------------------------------------------


def ten_crop_offsets(shape, size: int) -> list[tuple[int, int]]:
  """(top, left) of the paper's five test windows: top-left, top-right, bottom-left,
  bottom-right corners and the centre ((H - size) // 2, (W - size) // 2)."""
  h, w = shape[:2]
  return [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size),
          ((h - size) // 2, (w - size) // 2)]


def ten_crop_windows(shape, size: int) -> np.ndarray:
  """The 10 test windows as (top, left, reflected) rows, in `ten_crop`'s order."""
  five = np.array(ten_crop_offsets(shape, size), np.int32)
  return np.concatenate([np.c_[five, np.zeros(5, np.int32)], np.c_[five, np.ones(5, np.int32)]])


def ten_crop_unreflected(image: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
  """`ten_crop` with views 5-9 left unreflected (copies of views 0-4), for a device that
  reflects them (`ten_crop_windows`' third column)."""
  crops = np.stack([crop(image, t, l, size) for t, l in ten_crop_offsets(image.shape, size)])
  return np.concatenate([crops, crops])


def centre_crop(image: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
  return crop(image, *ten_crop_offsets(image.shape, size)[4], size)


def ten_crop(image: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
  """The paper's 10 test views of one image (section 4.1), (10, size, size, C): views 0-4 the
  windows of `ten_crop_offsets`, views 5-9 the same windows reflected."""
  crops = ten_crop_unreflected(image, size)
  crops[5:] = crops[:5, :, ::-1]
  return crops
