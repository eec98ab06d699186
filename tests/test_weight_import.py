"""Model-zoo weights: files written here in each format from random weights, imported, and
the project's logits against independent float64 N-C-H-W references with the source
framework's semantics (tests/zoo_reference.py; Caffe: grouped convolutions, LRN over all
channels with k=1, BGR input, C-H-W flattening; torchvision: its layer list). Those
references are checked against the same networks in PyTorch, and a `.pth` that torch.save
wrote is read (torch from requirements-test.txt; CI installs it)."""

import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax.model import config as model_config
from alexnet_jax.model import network
from alexnet_jax.weights import caffe_format
from alexnet_jax.weights import importers
from configs import bvlc_alexnet
from configs import torchvision_alexnet
from tests import helpers
from tests import test_sharding
from tests import zoo_reference

# Narrow networks with the zoo networks' geometry (kernels, strides, groups, 227 / 224).
CAFFE_NARROW = dict(conv_features=(8, 16, 24, 24, 16), fc_features=32)
TV_NARROW = dict(conv_features=(16, 24, 32, 24, 16), fc_features=48)


def spec_of(config, classes=10, **model_fields):
  for k, v in model_fields.items():
    config.model[k] = v
  config.data.num_classes = classes
  return model_config.model_spec(config)


# ---- a protobuf writer (the test's own, from caffe.proto's field numbers) ---------------------


def varint(n: int) -> bytes:
  out = b''
  while True:
    b, n = n & 0x7F, n >> 7
    out += bytes([b | (0x80 if n else 0)])
    if not n:
      return out


def field(number: int, payload: bytes) -> bytes:  # length-delimited
  return varint(number << 3 | 2) + varint(len(payload)) + payload


def field_varint(number: int, value: int) -> bytes:
  return varint(number << 3) + varint(value)


def blob_proto(a: np.ndarray, old_dims: bool) -> bytes:
  data = field(5, np.asarray(a, '<f4').tobytes())
  if old_dims:  # num, channels, height, width (the 2014 files)
    dims = (1,) * (4 - a.ndim) + a.shape
    return b''.join(field_varint(i + 1, d) for i, d in enumerate(dims)) + data
  return field(7, field(1, b''.join(varint(d) for d in a.shape))) + data


def caffemodel(blobs: dict, v1: bool) -> bytes:
  out = field(1, b'AlexNet')
  layers = [('data', 'Data', 5, []), *[(n, 'Convolution' if n.startswith('conv') else
                                          'InnerProduct', 4 if n.startswith('conv') else 14, b)
                                         for n, b in blobs.items()], ('prob', 'Softmax', 20, [])]
  for name, kind, v1_type, bs in layers:
    if v1:
      msg = field(4, name.encode()) + field_varint(5, v1_type) + b''.join(
          field(6, blob_proto(b, old_dims=True)) for b in bs)
      msg += field(7, struct.pack('<f', 1.0))  # blobs_lr: a field the reader skips
      out += field(2, msg)
    else:
      msg = field(1, name.encode()) + field(2, kind.encode()) + b''.join(
          field(7, blob_proto(b, old_dims=False)) for b in bs)
      msg += field(6, field(1, b'')) + field_varint(10, 1)  # param, phase: skipped
      out += field(100, msg)
  return out


# ---- the references -----------------------------------------------------------------------


def caffe_blobs(spec, seed=0):
  rng = np.random.default_rng(seed)
  f, t = [c * spec.num_towers for c in spec.conv_features], spec.num_towers
  cin = [3, f[0] // t, f[1], f[2] // t, f[3] // t]
  shapes = [(f[i], cin[i], k, k) for i, k in enumerate(spec.conv_kernels)]
  h = spec.fc_features * t
  shapes += [(h, f[4] * 36), (h, h), (spec.num_classes, h)]
  # He-scaled weights: the images' differences reach the logits through eight layers.
  return {name: (rng.normal(0, 1.5 / np.sqrt(np.prod(s[1:])), s).astype(np.float32),
                 rng.normal(0, 0.01, s[0]).astype(np.float32))
          for name, s in zip(importers.LAYERS, shapes)}


def relative_error(got, want):
  assert np.ptp(want) > 0.1 and np.ptp(want, axis=0).min() > 1e-3  # logits that differ
  return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


def logits(params, spec, images):
  params = jax.tree.map(jnp.asarray, params)
  with jax.default_matmul_precision('highest'):
    return np.asarray(jax.jit(lambda p, x: network.apply(p, x, spec))(params, images))


# ---- the tests ----------------------------------------------------------------------------


@pytest.mark.parametrize('v1', [False, True], ids=['layer-format', 'V1-format'])
def test_caffe_weights_give_caffes_logits(tmp_path, v1):
  spec = spec_of(bvlc_alexnet.get_config(), **CAFFE_NARROW)
  blobs = caffe_blobs(spec)
  path = tmp_path / 'net.caffemodel'
  path.write_bytes(caffemodel(blobs, v1))
  params = importers.from_caffe(str(path), spec)
  rgb = np.random.default_rng(1).uniform(-120, 120, (2, 227, 227, 3)).astype(np.float32)
  want = zoo_reference.caffe_alexnet(blobs, rgb[..., ::-1])
  rel = relative_error(logits(params, spec, rgb), want)
  assert rel < 1e-5, rel


def torchvision_state(spec, seed=0):
  """A state dict with torchvision's names and layouts, random He-scaled weights."""
  rng = np.random.default_rng(seed)
  f, h = spec.conv_features, spec.fc_features
  shapes = [(f[0], 3, 11, 11), (f[1], f[0], 5, 5), (f[2], f[1], 3, 3), (f[3], f[2], 3, 3),
            (f[4], f[3], 3, 3), (h, f[4] * 36), (h, h), (spec.num_classes, h)]
  state = {}
  for (name, prefix), s in zip(importers.TORCHVISION_NAMES.items(), shapes):
    state[f'{prefix}.weight'] = rng.normal(0, 1.5 / np.sqrt(np.prod(s[1:])), s).astype(np.float32)
    state[f'{prefix}.bias'] = rng.normal(0, 0.01, s[0]).astype(np.float32)
  return state


def test_torchvision_weights_give_torchvisions_logits():
  spec = spec_of(torchvision_alexnet.get_config(), **TV_NARROW)
  state = torchvision_state(spec)
  params = importers.from_torchvision_state(state, spec, 'test')
  x = np.random.default_rng(1).normal(0, 1, (2, 224, 224, 3)).astype(np.float32)
  rel = relative_error(logits(params, spec, x), zoo_reference.torchvision_alexnet(state, x))
  assert rel < 1e-5, rel


def test_a_pth_file_is_read_as_its_state_dict(tmp_path):
  torch = pytest.importorskip('torch')  # only reading the file needs torch
  spec = spec_of(torchvision_alexnet.get_config(), **TV_NARROW)
  state = torchvision_state(spec)
  torch.save({k: torch.from_numpy(v) for k, v in state.items()}, tmp_path / 'alexnet.pth')
  got = importers.from_torchvision(str(tmp_path / 'alexnet.pth'), spec)
  for a, b in zip(jax.tree.leaves(got),
                  jax.tree.leaves(importers.from_torchvision_state(state, spec, 'test'))):
    np.testing.assert_array_equal(a, b)


def test_the_numpy_references_are_pytorchs_networks():
  """Where torch is installed: the float64 NumPy references above give the logits of the
  same networks written in PyTorch (Caffe's LRN as F.local_response_norm, groups=2)."""
  pytest.importorskip('torch')
  spec = spec_of(bvlc_alexnet.get_config(), **CAFFE_NARROW)
  blobs = caffe_blobs(spec)
  bgr = np.random.default_rng(1).uniform(-120, 120, (2, 227, 227, 3))
  np.testing.assert_allclose(zoo_reference.caffe_alexnet(blobs, bgr),
                             zoo_reference.caffe_alexnet_torch(blobs, bgr), rtol=1e-10,
                             atol=1e-10)
  state = torchvision_state(spec_of(torchvision_alexnet.get_config(), **TV_NARROW))
  x = np.random.default_rng(1).normal(0, 1, (2, 224, 224, 3))
  np.testing.assert_allclose(zoo_reference.torchvision_alexnet(state, x),
                             zoo_reference.torchvision_alexnet_torch(state, x), rtol=1e-10,
                             atol=1e-10)


def test_caffes_mean_image_is_read_as_rgb(tmp_path):
  bgr = np.random.default_rng(0).uniform(0, 255, (1, 3, 8, 6)).astype(np.float32)
  for old in (False, True):
    (tmp_path / 'mean.binaryproto').write_bytes(blob_proto(bgr, old_dims=old))
    mean = importers.caffe_mean(str(tmp_path / 'mean.binaryproto'))
    np.testing.assert_array_equal(mean, bgr[0, ::-1].transpose(1, 2, 0))


def test_weights_that_do_not_fit_fail_in_one_sentence(tmp_path):
  spec = spec_of(bvlc_alexnet.get_config(), **CAFFE_NARROW)
  blobs = caffe_blobs(spec_of(bvlc_alexnet.get_config(), classes=7, **CAFFE_NARROW))
  (tmp_path / 'net.caffemodel').write_bytes(caffemodel(blobs, False))
  with pytest.raises(importers.WeightImportError, match='fc8 has weights of shape') as e:
    importers.from_caffe(str(tmp_path / 'net.caffemodel'), spec)
  assert str(e.value).count('. ') == 0
  (tmp_path / 'net.prototxt').write_text('name: "AlexNet"\nlayer { name: "conv1" }\n')
  with pytest.raises(caffe_format.CaffeFormatError, match='not a readable Caffe|no Caffe'):
    importers.from_caffe(str(tmp_path / 'net.prototxt'), spec)


def test_lrn_across_towers_exchanges_only_the_edge_channels_in_towers_mode():
  """Caffe's LRN crosses the tower boundary: in towers mode each device sends its 2 edge
  channels of LRN1's and LRN2's maps to the other (and their gradients back), nothing more;
  and the towers-mode step is the one-device step."""
  spec = spec_of(bvlc_alexnet.get_config(), classes=1000)
  batch = 4
  colls = test_sharding.compiled_collectives(test_sharding.layout_for('towers', 1, 2), spec,
                                             batch)
  permutes = [c for c in colls if c.op == 'collective-permute']
  measured = sum(c.bytes_sent for c in permutes)
  # Per image and device: 2 channels of 55x55 (LRN1) and 27x27 (LRN2), float32, forward
  # and backward.
  assert measured == batch * 2 * (55 * 55 + 27 * 27) * 4 * 2, measured
  assert {c.axes for c in permutes} == {'model'}
  small = spec_of(bvlc_alexnet.get_config(), **CAFFE_NARROW)
  small = small.__class__(**{**small.__dict__, 'image_size': 227})
  one, first = test_sharding.five_step_losses(test_sharding.layout_for('towers', 1, 1), small, 8)
  two, second = test_sharding.five_step_losses(test_sharding.layout_for('towers', 1, 2), small,
                                               8)
  np.testing.assert_allclose(two, one, rtol=1e-5)
  for got, want in zip(jax.tree.leaves(test_sharding.host_state(second)),
                       jax.tree.leaves(test_sharding.host_state(first))):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_the_import_script_writes_a_checkpoint_that_eval_and_predict_read(tmp_path):
  overrides = ['--config.model.conv_features=(8,16,24,24,16)', '--config.model.fc_features=32',
               '--config.data.num_classes=10']
  spec = spec_of(bvlc_alexnet.get_config(), **CAFFE_NARROW)
  (tmp_path / 'net.caffemodel').write_bytes(caffemodel(caffe_blobs(spec), v1=True))
  mean = np.full((1, 3, 256, 256), 100.0, np.float32)
  (tmp_path / 'mean.binaryproto').write_bytes(blob_proto(mean, old_dims=True))
  result = helpers.run_script('scripts.import_weights', f'--caffe={tmp_path / "net.caffemodel"}',
                              f'--caffe_mean={tmp_path / "mean.binaryproto"}',
                              f'--workdir={tmp_path / "bvlc"}',
                              '--config=configs/bvlc_alexnet.py', *overrides)
  assert result.returncode == 0, result.stderr[-2000:]
  assert (tmp_path / 'bvlc' / 'caffe_mean.npz').exists()
  again = helpers.run_script('scripts.import_weights', f'--caffe={tmp_path / "net.caffemodel"}',
                             f'--workdir={tmp_path / "bvlc"}')
  assert again.returncode != 0 and 'already holds checkpoints' in again.stderr
  params = helpers.load_state(tmp_path / 'bvlc', 0)['params']
  want = importers.from_caffe(str(tmp_path / 'net.caffemodel'), spec)
  for got, ref in zip(jax.tree.leaves(params), jax.tree.leaves(want)):
    np.testing.assert_array_equal(got, ref)
