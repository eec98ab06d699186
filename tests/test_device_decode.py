"""The device-decode path (data.decode_on=device) with its host stand-in: the batch the step
sees equals the host path's, on one device and on a mesh; damage stops it in one sentence."""

import io

import jax
import numpy as np
from PIL import Image
import pytest

from alexnet_jax.data import device_decode
from alexnet_jax.data import stream
from alexnet_jax.errors import BadDataError
from alexnet_jax.model import pixels

SIZE, CROP = 40, 32


def stored_jpegs(n, seed=0):
  """Prepared SIZE x SIZE JPEGs as `data.prepare_once` stores them (4:4:4, q95), of smooth
  random images (a JPEG of noise would be a poor stand-in for a photograph)."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    small = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((SIZE, SIZE), Image.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, 'JPEG', quality=95, subsampling=0)
    out.append(buf.getvalue())
  return out


def loaders(n=24, batch=8, decoder='pillow'):
  source = [{'image': data, 'label': i % 3} for i, data in enumerate(stored_jpegs(n))]
  augment = stream.Augment(prepared_size=SIZE, crop_size=CROP, decoder=decoder)
  host = stream.StreamLoader(source, batch, 7, augment)
  device = stream.StreamLoader(source, batch, 7, augment,
                               device_decoder=device_decode.make(decoder, SIZE, 3))
  return source, host, device


def sharding(mesh_shape):
  mesh = jax.make_mesh(mesh_shape, ('data', 'model'), devices=jax.devices()[:np.prod(mesh_shape)])
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))


@pytest.mark.parametrize('decoder', ['pillow', 'turbo'])
@pytest.mark.parametrize('mesh_shape', [(1, 1), (2, 1), (2, 2)])
def test_device_batches_are_the_host_batches(decoder, mesh_shape):
  """Steps 0-4 (an epoch boundary included): views cut on the device and normalised equal
  the host path's, bitwise; windows and shifts are drawn as the host draws them."""
  if decoder == 'turbo':
    pytest.importorskip('simplejpeg')
  if len(jax.devices()) < np.prod(mesh_shape):
    pytest.skip(f'needs {np.prod(mesh_shape)} devices (tests/conftest.py sets 8 on CPU)')
  _, host, device = loaders(decoder=decoder)
  images = sharding(mesh_shape)
  mean = np.random.default_rng(1).uniform(0, 255, (SIZE, SIZE, 3)).astype(np.float32)
  norm = jax.jit(lambda b: pixels.normalize(b, mean, crop_size=CROP))
  for (h, hl), (d, dl) in zip(host.batches(0, 5, images, images, prefetch_size=0),
                              device.batches(0, 5, images, images, prefetch_size=0)):
    assert set(d) == {'prepared', 'window', 'shift'} and d['prepared'].shape == (8, SIZE, SIZE, 3)
    assert d['prepared'].sharding == images
    np.testing.assert_array_equal(np.asarray(dl), np.asarray(hl))
    np.testing.assert_array_equal(np.asarray(d['window']), np.asarray(h['window']))
    np.testing.assert_array_equal(np.asarray(d['shift']), np.asarray(h['shift']))
    d, h = jax.device_get(d), jax.device_get(h)  # the step normalises each device's rows
    crops = pixels.device_crops(d['prepared'], d['window'], CROP)
    np.testing.assert_array_equal(np.asarray(crops), h['pixels'])
    np.testing.assert_array_equal(np.asarray(norm(d)), np.asarray(norm(h)))


def test_device_crops_against_numpy_slices():
  """The crop in the step against hand-indexed windows (an independent reference)."""
  rng = np.random.default_rng(0)
  prepared = rng.integers(0, 256, (4, 9, 11, 3), dtype=np.uint8)
  window = np.array([[0, 0, 0], [4, 6, 1], [2, 3, 0], [4, 0, 1]], np.int32)
  got = np.asarray(pixels.device_crops(prepared, window, 5))
  for i, (top, left, _) in enumerate(window):
    np.testing.assert_array_equal(got[i], prepared[i, top:top + 5, left:left + 5])


def test_a_damaged_stored_image_stops_the_batch_in_one_sentence():
  source, _, device = loaders()
  source[int(device.indices(0)[3])]['image'] = b'\xff\xd8' + b'\x00' * 50
  images = sharding((1, 1))
  with pytest.raises(BadDataError) as e:
    next(device.batches(0, 1, images, images, prefetch_size=0))
  message = str(e.value)
  assert 'damaged' in message and 'data.data_dir' in message and message.count('. ') == 0


def test_nvimgcodec_missing_says_what_to_do():
  import importlib.util
  if importlib.util.find_spec('nvidia') and importlib.util.find_spec('nvidia.nvimgcodec'):
    pytest.skip('nvImageCodec is installed here: the GPU check tests it (benchmarks.gpu_check)')
  message = device_decode.unavailable('nvimgcodec')
  assert 'pip install nvidia-nvimgcodec-cu13' in message and 'data.decode_on=host' in message
  assert message.count('. ') == 0


def test_place_decodes_rows_once_and_copies_them_across_the_model_axis():
  if len(jax.devices()) < 4:
    pytest.skip('needs 4 devices (tests/conftest.py sets 8 on CPU)')
  calls = []

  class Counting(device_decode.HostStandIn):
    def decode(self, encoded, device):
      calls.append(len(encoded))
      return super().decode(encoded, device)

  encoded = np.empty((8,), object)
  encoded[:] = stored_jpegs(8)
  out = device_decode.place(encoded, Counting(SIZE, 3), sharding((2, 2)), 8, slice(0, 8))
  assert calls == [4, 4]
  want = np.stack([np.asarray(Image.open(io.BytesIO(e))) for e in encoded])
  np.testing.assert_array_equal(np.asarray(out), want)


@pytest.mark.parametrize('change, expected', [
    ({'storage': 'raw'}, 'data.decode_on=device decodes the JPEGs stored once'),
    ({'processes': 2}, 'data.processes=0'),
    ({'decoder': 'vips'}, 'data.decoder'),
    ({'decode_on': 'gpu'}, 'data.decode_on'),
])
def test_device_decode_configs_that_cannot_work_fail_in_one_sentence(change, expected):
  from alexnet_jax.errors import ConfigError
  from alexnet_jax.train import run_setup
  from configs import alexnet
  config = alexnet.get_config()
  config.data.decode_on = 'device'
  config.data.update(change)
  layout = run_setup.build_layout(config, jax.devices()[:1])
  with pytest.raises(ConfigError) as e:
    run_setup.validate(config, layout)
  assert expected in str(e.value) and str(e.value).count('. ') == 0, str(e.value)
