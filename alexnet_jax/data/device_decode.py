"""JPEG decoding on the device (`data.decode_on=device`): the host sends the stored
256x256 JPEG bytes, the device decodes the batch, and the step cuts each view
(`pixels.device_crops`).

The host still draws each view's window, reflection and PCA shift from (seed, step)
(`StreamLoader.draws`, the draws of the host path), so a batch is the one
the host path would cut wherever the decoder's pixels equal Pillow's.

Decoders, by `data.decoder`, behind one interface (`decode(encoded, device)` -> a uint8
(B, S, S, C) array on `device`):

  nvimgcodec  nvImageCodec (`pip install nvidia-nvimgcodec-cu13`): nvJPEG on the GPU, and the
              H200's hardware JPEG decoders. Its images come to JAX through DLPack, whose
              `stream` argument makes JAX's stream wait for the decode. Fancy (smooth)
              chroma upsampling as libjpeg-turbo's default; the GPU check measures its
              pixels against Pillow's.
  pillow, turbo
              stand-ins: the host decodes (`decoders.decode`) and copies the images to the
              device. Slower than the host path (whole 256x256 images travel), they exist so
              that the plumbing is tested on CPU, bitwise against the host path.

The images stored once (`data.prepare_once`) were decoded when they were stored, so a
failure here means the stored files are damaged: the run stops, naming what to do, rather
than train on a substitute it cannot choose deterministically on the device.
"""

from __future__ import annotations

import importlib.util
from typing import Sequence

import jax
import numpy as np

from alexnet_jax.data import decoders
from alexnet_jax.data import transforms
from alexnet_jax.errors import BadDataError
from alexnet_jax.errors import ConfigError

PLACES = ('host', 'device')
DEVICE_DECODERS = ('nvimgcodec', 'pillow', 'turbo')
DAMAGED = ('the images stored once in data.data_dir are damaged; delete that prepared dataset '
           'so that the next run stores it again')


def unavailable(decoder: str) -> str | None:
  """Why `decoder` cannot decode on this machine's devices (one sentence), or None."""
  if decoder != 'nvimgcodec':
    return decoders.unavailable(decoder)
  if importlib.util.find_spec('nvidia') is None or importlib.util.find_spec(
      'nvidia.nvimgcodec') is None:
    return ('data.decoder=nvimgcodec needs nvImageCodec: `pip install nvidia-nvimgcodec-cu13`, '
            'or set data.decode_on=host.')
  return None


def host_decoder(decoder: str) -> str:
  """What decodes on the host (evaluation, pixel statistics) when training decodes with
  `decoder` on the device."""
  return 'pillow' if decoder == 'nvimgcodec' else decoder


class HostStandIn:
  """Decodes on the host with `decoders.decode` and copies the images to the device."""

  def __init__(self, size: int, channels: int, decoder: str = 'pillow'):
    self.size, self.channels, self.decoder = size, channels, decoder

  def decode(self, encoded: Sequence[bytes], device) -> jax.Array:
    out = np.empty((len(encoded), self.size, self.size, self.channels), np.uint8)
    for i, data in enumerate(encoded):
      try:
        image = decoders.decode(data, self.size, self.channels, self.decoder)
      except transforms.DECODE_ERRORS as e:
        raise BadDataError(f'A stored image failed to decode ({e}): {DAMAGED}.') from e
      out[i] = image
    return jax.device_put(out, device)


class NvImageCodec:
  """nvImageCodec's batch decode on each GPU, one decoder per device."""

  def __init__(self, size: int, channels: int):
    # Asked here, when the data loads, not in the config's checks: a multi-process run must
    # not start JAX's backend before it joins its cluster.
    if jax.default_backend() != 'gpu':
      raise ConfigError(f'data.decoder=nvimgcodec decodes on a GPU and this run\'s devices '
                        f'are {jax.default_backend()}; set data.decode_on=host.')
    from nvidia import nvimgcodec
    self._nv, self.size, self.channels = nvimgcodec, size, channels
    self._decoders = {}
    spec = nvimgcodec.ColorSpec.GRAY if channels == 1 else nvimgcodec.ColorSpec.RGB
    self._params = nvimgcodec.DecodeParams(color_spec=spec, apply_exif_orientation=False)

  def _decoder(self, device):
    if device not in self._decoders:
      self._decoders[device] = self._nv.Decoder(device_id=device.local_hardware_id,
                                                options=':fancy_upsampling=1')
    return self._decoders[device]

  def decode(self, encoded: Sequence[bytes], device) -> jax.Array:
    import jax.numpy as jnp
    images = self._decoder(device).decode([bytes(d) for d in encoded], params=self._params)
    # Older releases leave a failed image out of the list, newer ones return None for it.
    want = (self.size, self.size, self.channels)
    if len(images) != len(encoded) or any(
        im is None or tuple(im.shape) != want for im in images):
      raise BadDataError(f'nvImageCodec could not decode every stored image of a batch as '
                         f'{want}: {DAMAGED}.')
    with jax.default_device(device):
      return jnp.stack([jnp.from_dlpack(im) for im in images])


def make(decoder: str, size: int, channels: int):
  """The device decoder `decoder` (DEVICE_DECODERS) for prepared images of size x size."""
  if decoder == 'nvimgcodec':
    return NvImageCodec(size, channels)
  return HostStandIn(size, channels, decoder)


def place(encoded: np.ndarray, decoder, sharding, global_batch: int, rows: slice) -> jax.Array:
  """The global (B, S, S, C) array of prepared images under `sharding`, from this process's
  rows `rows` of the batch's stored bytes: each device decodes its own rows (rows that
  several devices hold, across the model axis, are decoded once and copied)."""
  shape = (global_batch, decoder.size, decoder.size, decoder.channels)
  decoded: dict[tuple[int, int], jax.Array] = {}
  arrays = []
  for device, index in sharding.addressable_devices_indices_map(shape).items():
    start, stop, _ = index[0].indices(global_batch)
    key = (start, stop)
    if key not in decoded:
      decoded[key] = decoder.decode(encoded[start - rows.start:stop - rows.start], device)
      arrays.append(decoded[key])
    else:
      arrays.append(jax.device_put(decoded[key], device))
  return jax.make_array_from_single_device_arrays(shape, sharding, arrays)
