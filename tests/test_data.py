"""Data: idx files through the tfds builder, missing data, deterministic resumable batches."""

import gzip
import struct

import numpy as np
import pytest

from alexnet_jax import datasets, input_pipeline
from alexnet_jax.errors import DatasetNotFoundError


def write_idx(path, array):
  magic = 0x0800 | array.ndim
  with gzip.open(path, 'wb') as f:
    f.write(struct.pack('>I', magic) + struct.pack('>' + 'I' * array.ndim, *array.shape))
    f.write(array.astype(np.uint8).tobytes())


@pytest.fixture
def idx_dir(tmp_path):
  rng = np.random.default_rng(0)
  arrays = {'train': (rng.integers(0, 256, (30, 28, 28)), rng.integers(0, 10, 30)),
            'test': (rng.integers(0, 256, (12, 28, 28)), rng.integers(0, 10, 12))}
  for split, (images_name, labels_name) in datasets.FASHION_MNIST_FILES.items():
    write_idx(tmp_path / images_name, arrays[split][0])
    write_idx(tmp_path / labels_name, arrays[split][1])
  return tmp_path, arrays


def test_read_idx_hand_made_file(tmp_path):
  path = tmp_path / 'x.gz'
  with gzip.open(path, 'wb') as f:  # magic 0x00000803: uint8, 3 dims; 2 x 2 x 3
    f.write(bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(12)))
  np.testing.assert_array_equal(datasets.read_idx(path), np.arange(12).reshape(2, 2, 3))


def test_tfds_builder_round_trips_idx_files(idx_dir, tmp_path):
  source, arrays = idx_dir
  builder = datasets.fashion_mnist_builder(str(tmp_path / 'tfds'), str(source))
  assert builder.builder_config.name == 'subset30x12'
  for split in ('train', 'test'):
    images, labels = datasets.load_arrays(builder, split)
    np.testing.assert_array_equal(images[..., 0], arrays[split][0])  # PNG is lossless
    np.testing.assert_array_equal(labels, arrays[split][1])
  assert datasets.class_names(builder)[9] == 'Ankle boot'


def test_missing_fashion_mnist_says_where_to_put_files(tmp_path, monkeypatch):
  monkeypatch.setattr(datasets, 'DEBIAN_FASHION_MNIST', tmp_path / 'no-debian')
  monkeypatch.setattr(datasets, 'EMBEDDED_FASHION_MNIST', tmp_path / 'no-embedded')
  with pytest.raises(DatasetNotFoundError) as e:
    datasets.fashion_mnist_builder(str(tmp_path / 'tfds'), str(tmp_path / 'empty'))
  message = str(e.value)
  assert 'train-images-idx3-ubyte.gz' in message and 'data.manual_dir' in message
  assert message.count('.') >= 1 and '\n' not in message


def test_missing_imagenet_names_the_tars(tmp_path):
  with pytest.raises(DatasetNotFoundError, match='ILSVRC2012_img_train.tar'):
    datasets.builder_for('imagenet2012', str(tmp_path), str(tmp_path))


def test_embedded_subset_is_real_fashion_mnist():
  counts = datasets.idx_counts(datasets.EMBEDDED_FASHION_MNIST)
  assert counts == {'train': 10_000, 'test': 2_000}
  labels = datasets.read_idx(datasets.EMBEDDED_FASHION_MNIST / 't10k-labels-idx1-ubyte.gz')
  assert np.bincount(labels).min() > 150  # all ten classes


def make_loader(n=40, batch=8, seed=3, **kw):
  images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 1), np.uint8)
  split = input_pipeline.Split(images, np.arange(n, dtype=np.int32))
  return input_pipeline.TrainLoader(split, batch, seed, **kw)


def test_each_epoch_is_a_permutation_and_order_depends_on_seed():
  loader = make_loader()
  epoch = np.concatenate([loader.host_batch(s)[1] for s in range(loader.steps_per_epoch)])
  assert sorted(epoch) == list(range(40))
  nxt = np.concatenate([loader.host_batch(s)[1] for s in range(5, 10)])
  assert sorted(nxt) == list(range(40)) and not np.array_equal(nxt, epoch)
  other = make_loader(seed=4)
  assert not np.array_equal(other.host_batch(0)[1], loader.host_batch(0)[1])


def test_a_new_loader_resumes_at_exactly_the_next_batch():
  a, b = make_loader(pad=1, flip=True), make_loader(pad=1, flip=True)
  for step in (0, 7, 12):  # a restarted run builds a new loader and asks for `step`
    (xa, ya), (xb, yb) = a.host_batch(step), b.host_batch(step)
    np.testing.assert_array_equal(ya, yb)
    for key in ('pixels', 'window', 'shift'):
      np.testing.assert_array_equal(xa[key], xb[key])
    assert xa['pixels'].dtype == np.uint8 and xa['pixels'].shape == (8, 4, 4, 1)


def test_random_crops_cover_the_padded_range_and_reflect():
  image = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1) + 1
  seen, flips = set(), 0
  for i in range(400):
    rng = np.random.default_rng(i)
    out = input_pipeline.augment(image, [rng], pad=1, flip=True)[0, ..., 0]
    padded = np.pad(image[0, ..., 0], 1)
    matches = [(dy, dx, f) for dy in range(3) for dx in range(3) for f in (0, 1)
               if np.array_equal(out, (padded[dy:dy + 4, dx:dx + 4][:, ::-1] if f
                                       else padded[dy:dy + 4, dx:dx + 4]))]
    assert matches, out
    seen.add(matches[0][:2])
    flips += matches[0][2]
  assert seen == {(dy, dx) for dy in range(3) for dx in range(3)}
  assert 150 < flips < 250


def test_mean_image_is_per_pixel():
  images = np.stack([np.full((2, 2, 1), 10), np.full((2, 2, 1), 20)]).astype(np.uint8)
  images[1, 0, 0, 0] = 40
  mean = input_pipeline.mean_image(images, 'pixel')
  np.testing.assert_array_equal(mean[..., 0], [[25, 15], [15, 15]])
  np.testing.assert_array_equal(input_pipeline.mean_image(images, 'channel'), [17.5])
