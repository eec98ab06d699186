"""The stream loader's decoders (alexnet_jax/data/decoders.py) against Pillow, the
reference: the same pixels, the same failures, and raw storage end to end."""

import io

import numpy as np
import pytest

from alexnet_jax.data import decoders
from alexnet_jax.data import stream
from alexnet_jax.data import transforms
from tests import helpers


def jpeg(array, quality=95, subsampling=0, exif=None) -> bytes:
  from PIL import Image
  out = io.BytesIO()
  image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
  kwargs = {'exif': exif} if exif is not None else {}
  image.save(out, 'JPEG', quality=quality, subsampling=subsampling, **kwargs)
  return out.getvalue()


def photo(width, height, channels=3):
  image = helpers.photo().resize((width, height))
  array = np.asarray(image.convert('L' if channels == 1 else 'RGB'), np.uint8)
  return array.reshape(height, width, channels)


@pytest.mark.parametrize('size, quality, subsampling, channels, prepared', [
    ((256, 256), 95, 0, 3, 256),   # the stored images: decoded as they are
    ((256, 256), 90, 2, 3, 256),   # 4:2:0 at q90
    ((500, 375), 90, 2, 3, 256),   # an original: decoded, then resized and cropped
    ((64, 48), 95, 0, 1, 36),      # grey
    ((60, 44), 95, 0, 3, 0),       # prepared_size 0: as it is
], ids=['stored', 'q90-420', 'original', 'grey', 'unprepared'])
def test_turbo_gives_pillows_pixels(size, quality, subsampling, channels, prepared):
  pytest.importorskip('simplejpeg')
  data = jpeg(photo(*size, channels), quality, subsampling)
  want = transforms.decode(data, prepared, channels)
  got = decoders.decode(data, prepared, channels, 'turbo')
  assert got.shape == want.shape and got.dtype == np.uint8
  np.testing.assert_array_equal(got, want)


def test_turbo_leaves_exif_orientation_and_other_formats_to_pillow():
  """A photo whose EXIF says it is rotated is read upright, as Pillow reads it; a PNG too."""
  pytest.importorskip('simplejpeg')
  from PIL import Image
  exif = Image.Exif()
  exif[transforms.EXIF_ORIENTATION] = 6  # rotated 90 degrees clockwise
  data = jpeg(photo(60, 44), exif=exif.tobytes())
  got = decoders.decode(data, 0, 3, 'turbo')
  assert got.shape == (60, 44, 3)  # upright: the camera's portrait
  np.testing.assert_array_equal(got, transforms.decode(data, 0, 3))
  out = io.BytesIO()
  Image.fromarray(photo(40, 30)).save(out, 'PNG')
  np.testing.assert_array_equal(decoders.decode(out.getvalue(), 0, 3, 'turbo'), photo(40, 30))


@pytest.mark.parametrize('decoder', ['pillow', 'turbo'])
def test_broken_and_oversized_jpegs_fail_as_decode_errors(decoder, monkeypatch):
  pytest.importorskip('simplejpeg')
  data = jpeg(photo(64, 48))
  for bad in (data[:len(data) // 2], data[:40], b'\xff\xd8 not a JPEG'):
    with pytest.raises(transforms.DECODE_ERRORS):
      decoders.decode(bad, 36, 3, decoder)
  if decoder == 'turbo':  # from the header, before decoding (Pillow's: test_transforms)
    monkeypatch.setattr(transforms, 'MAX_IMAGE_PIXELS', 64 * 48 - 1)
    with pytest.raises(transforms.ImageTooLargeError):
      decoders.decode(data, 36, 3, decoder)


def test_raw_records_round_trip_without_a_copy_and_a_wrong_length_is_a_decode_error():
  array = photo(36, 36)
  data = decoders.to_raw(array)
  assert len(data) == 36 * 36 * 3
  got = decoders.decode(data, 36, 3, 'raw')
  np.testing.assert_array_equal(got, array)
  assert not got.flags.writeable  # a view of the record's bytes
  with pytest.raises(transforms.DECODE_ERRORS, match='not the 3888'):
    decoders.decode(data[:-1], 36, 3, 'raw')


def test_the_loaders_batches_are_the_same_from_raw_and_from_pillow():
  """Raw records of the images Pillow prepares give the very batches (views, windows, PCA
  shifts), at every step: the decoder changes the bytes read, not the augmentation."""
  prepared = [transforms.decode(jpeg(photo(60 + i, 44)), 36, 3) for i in range(12)]
  encoded = [{'image': jpeg(a), 'label': i % 2} for i, a in enumerate(prepared)]
  reference = [{'image': transforms.decode(r['image'], 36, 3), 'label': r['label']}
               for r in encoded]
  raw = [{'image': decoders.to_raw(r['image']), 'label': r['label']} for r in reference]
  augment = dict(prepared_size=36, crop_size=32)
  batches = {}
  for name, source, decoder in (('pillow', encoded, 'pillow'), ('raw', raw, 'raw')):
    loader = stream.StreamLoader(source, 4, 0, stream.Augment(**augment, decoder=decoder))
    batches[name] = list(loader.host_batches(0, 5))
  for (a, la), (b, lb) in zip(batches['pillow'], batches['raw']):
    np.testing.assert_array_equal(la, lb)
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])

# A run that stores the folder raw, is killed and resumes bitwise: test_fault_tolerance's stream
# test, parametrized over data.storage and data.decoder.
