"""Stored image -> prepared uint8 array, by name (`data.decoder`): what the stream loader
spends its cores on (`benchmarks/input_pipeline.py` measures each).

  pillow  Pillow (`transforms.decode`): any format, EXIF orientation, the reference.
  turbo   libjpeg-turbo through simplejpeg for plain JPEGs (no EXIF block, YCbCr or grey),
          Pillow for anything else. No Python image object, and the stored 256x256 images
          come back as they are, without the copy into a PIL image.
  raw     the prepared images stored undecoded (`data.storage=raw`): each record is the
          (size, size, C) uint8 array's bytes, read with no decoding at all.

Pillow and simplejpeg both call libjpeg-turbo with its accurate integer DCT: on the JPEGs
the tests and the benchmark write, their pixels are identical (`tests/test_decoders.py`).
Where a build of either differs, a run is still bitwise for its own decoder: the batch at a
step is a function of (seed, step) for a given decoder.
"""

from __future__ import annotations

import numpy as np

from alexnet_jax.data import transforms

DECODERS = ('pillow', 'turbo', 'raw')
_JPEG = b'\xff\xd8'
_EXIF_SEARCH = 1 << 16  # an EXIF block (APP1) comes first and is at most 64 KiB


def unavailable(decoder: str) -> str | None:
  """Why `decoder` cannot run on this machine (one sentence), or None."""
  if decoder == 'turbo':
    import importlib.util
    if importlib.util.find_spec('simplejpeg') is None:
      return ('data.decoder=turbo needs simplejpeg (libjpeg-turbo): `pip install simplejpeg`, '
              'or set data.decoder=pillow.')
  return None


def decode(image, prepared_size: int, channels: int = 3, decoder: str = 'pillow'):
  """`transforms.decode` of a stored image (bytes, PIL image or uint8 array) with `decoder`.
  Raises one of transforms.DECODE_ERRORS on data it cannot read."""
  if isinstance(image, (bytes, bytearray, memoryview)):
    if decoder == 'raw':
      return from_raw(image, prepared_size, channels)
    if decoder == 'turbo' and bytes(image[:2]) == _JPEG and b'Exif' not in image[:_EXIF_SEARCH]:
      return _turbo(bytes(image), prepared_size, channels)
  return transforms.decode(image, prepared_size, channels)


def to_raw(array: np.ndarray) -> bytes:
  """What `data.storage=raw` stores for a prepared image."""
  return np.ascontiguousarray(array, np.uint8).tobytes()


def from_raw(data, size: int, channels: int) -> np.ndarray:
  """A raw record as its (size, size, channels) array: a view of the bytes, no copy."""
  want = size * size * channels
  if len(data) != want:
    raise ValueError(f'a raw record of {len(data)} bytes, not the {want} of a {size}x{size}x'
                     f'{channels} image')
  return np.frombuffer(data, np.uint8).reshape(size, size, channels)


def _turbo(data: bytes, prepared_size: int, channels: int) -> np.ndarray:
  import simplejpeg
  height, width, colourspace, _ = simplejpeg.decode_jpeg_header(data)
  if height * width > transforms.MAX_IMAGE_PIXELS:
    raise transforms.ImageTooLargeError(
        f'it is {width}x{height} pixels, more than the {transforms.MAX_IMAGE_PIXELS:,} that '
        'are decoded; resize it first')
  if colourspace not in ('YCbCr', 'Gray'):  # CMYK, YCCK: Pillow's conversion
    return transforms.decode(data, prepared_size, channels)
  array = simplejpeg.decode_jpeg(data, colorspace='GRAY' if channels == 1 else 'RGB')
  if prepared_size and array.shape[:2] != (prepared_size, prepared_size):
    return transforms.resize_and_centre_crop(array, prepared_size, channels)
  return array
