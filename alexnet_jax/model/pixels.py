"""The batch the device receives, and its normalisation inside the jitted step.

Both loaders hand the device the same batch (`pixel_batch`): uint8 pixels plus, per view, the
window it was cut from in the prepared image and its PCA shift. The float work (reflection,
mean subtraction, the shift) runs on the device inside the step (`normalize`): the host moves
a quarter of the bytes of float32 and does no arithmetic on pixels.

With the decode on the device (`data.decode_on=device`, `alexnet_jax/data/device_decode.py`)
the host sends only the stored JPEG bytes with the same windows and shifts; the device
decodes the prepared images, and the step cuts each view from its image (`device_crops`),
so the batch the network sees is the one the host would have cut.

This module is the contract between the loaders (`alexnet_jax.data`) and the steps
(`alexnet_jax.train.steps`); it imports neither.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def pixel_batch(pixels: np.ndarray, window: np.ndarray | None = None,
                shift: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """Images as the device receives them: uint8 `pixels` (..., S, S, C) and, per view, the
  `window` (top, left, reflect) it was cut from in the prepared image (where the per-pixel
  mean is taken from, and whether the device reflects view and mean; zeros: the mean as it
  is, no reflection) and the PCA `shift` (C,) to add."""
  lead, channels = pixels.shape[:-3], pixels.shape[-1]
  return {'pixels': pixels,
          'window': np.zeros((*lead, 3), np.int32) if window is None else window,
          'shift': np.zeros((*lead, channels), np.float32) if shift is None else shift}


def device_crops(prepared, window, size: int) -> jax.Array:
  """The views of a device-decoded batch: the size x size window at each row's (top, left)
  of its prepared image (B, H, W, C), cut on the device. The host drew the windows inside
  the image, as for a host crop (`transforms.TrainDraws.windows`)."""
  channels = prepared.shape[-1]
  cut = lambda image, w: jax.lax.dynamic_slice(image, (w[0], w[1], 0), (size, size, channels))
  return jax.vmap(cut)(prepared, window)


def normalize(images, mean, scale=None, crop_size: int | None = None) -> jax.Array:
  """The network's float32 input from a `pixel_batch` (on the device, inside the step):
  pixels minus the mean under each view's window, reflected where the window says so, plus
  the view's PCA shift, all times `scale`. `mean` is per pixel of the prepared image
  (H, W, C), per channel (C,), or None; `scale` per channel (C,) (data.std=channel: one over
  the training set's standard deviation around that mean) or None (the paper: 0-255 less
  the mean). Float32 `images` are taken as already normalised. A device-decoded batch
  ('prepared' images instead of 'pixels') has its views cut first, `crop_size` square."""
  if not isinstance(images, dict):
    return images
  window = images['window']
  if 'prepared' in images:
    if not crop_size:
      raise ValueError('A device-decoded batch needs the crop size of its views.')
    pixels = device_crops(images['prepared'], window, crop_size)
  else:
    pixels = images['pixels']
  size, channels = pixels.shape[-3], pixels.shape[-1]
  x = pixels.astype(jnp.float32)
  if mean is not None:
    mean = jnp.asarray(mean, jnp.float32)
    if mean.ndim == 3:  # per pixel: the window of the view
      crop = lambda w: jax.lax.dynamic_slice(mean, (w[0], w[1], 0), (size, size, channels))
      mean = jax.vmap(crop)(window.reshape(-1, 3)).reshape(pixels.shape)
    x = x - mean
  reflect = (window[..., 2] > 0)[..., None, None, None]
  x = jnp.where(reflect, jnp.flip(x, axis=-2), x)
  x = x + images['shift'][..., None, None, :]
  return x if scale is None else x * jnp.asarray(scale, jnp.float32)
