"""The stream loader (alexnet_jax/data/stream.py): deterministic for a seed, the same with
any number of decode threads or processes, resumable at exactly the next batch, sharded by
rows, and the paper's view once the device has normalised it (tests/reference.py)."""

import gc
import io
import os
import time

import jax
import numpy as np
import pytest

from alexnet_jax.data import batching
from alexnet_jax.data import stream
from alexnet_jax.data import transforms
from alexnet_jax.errors import BadDataError
from alexnet_jax.model import pixels
from alexnet_jax.parallel import sharding
from tests import helpers
from tests import reference

AUGMENT = stream.Augment(prepared_size=32, crop_size=24)


@pytest.fixture(scope='module')
def source():
  """20 JPEGs of various sizes and aspect ratios, cut from a real photograph."""
  return helpers.jpeg_records(20, sizes=(40, 90), classes=5)


def loader(source, seed=1, threads=0, processes=0, batch=4, augment=AUGMENT):
  return stream.StreamLoader(source, batch, seed, augment, threads, processes)


def single_device_layout():
  return sharding.Layout(sharding.make_mesh(1, 1, jax.devices()[:1]), 'towers')


def assert_same(a, b):
  """Two host batches ((pixel_batch, labels)) are equal."""
  (xa, ya), (xb, yb) = a, b
  assert sorted(xa) == sorted(xb) == ['pixels', 'shift', 'window']
  for key in xa:
    np.testing.assert_array_equal(xa[key], xb[key])
  np.testing.assert_array_equal(ya, yb)


def test_same_seed_same_batches_other_seed_other_batches(source):
  a, b, c = loader(source), loader(source), loader(source, seed=2)
  for step in (0, 3, 7):  # 7: second epoch (5 steps per epoch)
    assert_same(a.host_batch(step), b.host_batch(step))
    x = a.host_batch(step)[0]
    assert x['pixels'].shape == (4, 24, 24, 3) and x['pixels'].dtype == np.uint8
    assert x['window'].shape == (4, 3) and x['shift'].shape == (4, 3)
  assert not np.array_equal(a.host_batch(0)[0]['pixels'], c.host_batch(0)[0]['pixels'])
  epoch = np.concatenate([a.indices(s) for s in range(a.steps_per_epoch)])
  assert sorted(epoch) == list(range(20))
  np.testing.assert_array_equal(a.host_batch(2)[1], [source[i]['label'] for i in a.indices(2)])


def test_a_restored_loader_yields_exactly_the_batches_an_uninterrupted_one_yields(source):
  straight = list(loader(source).host_batches(0, 8))
  first = list(loader(source).host_batches(0, 3))  # then the run stops at step 3 ...
  resumed = list(loader(source).host_batches(3, 5))  # ... and a new loader starts there
  assert len(first + resumed) == 8
  for a, b in zip(straight, first + resumed):
    assert_same(a, b)


def test_rows_of_a_process_are_the_rows_of_the_global_batch(source):
  full_x, full_y = loader(source).host_batch(5)
  x, y = loader(source).host_batch(5, slice(2, 4))
  assert_same((x, y), ({k: v[2:4] for k, v in full_x.items()}, full_y[2:4]))


def test_switches_off_give_the_prepared_image(source):
  plain = stream.Augment(prepared_size=32, crop_size=0, flip=False, pca_sigma=0)
  l = loader(source, augment=plain)
  x, _ = l.host_batch(0)
  want = np.stack([transforms.decode(source[i]['image'], 32) for i in l.indices(0)])
  np.testing.assert_array_equal(x['pixels'], want)
  np.testing.assert_array_equal(x['window'], 0)
  np.testing.assert_array_equal(x['shift'], 0)


@pytest.mark.parametrize('mean_shape', [(32, 32, 3), (3,)])
def test_the_device_half_gives_the_paper_view(source, mean_shape):
  """What the step computes from a host batch (pixels.normalize, on the device) equals the
  paper's view composed step by step in float64 (reference.train_view)."""
  mean = np.random.default_rng(0).uniform(0, 255, mean_shape).astype(np.float32)
  l = loader(source)
  flips = []
  for step in (0, 1, 2, 6):
    x, _ = l.host_batch(step)
    flips += list(x['window'][:, 2])
    got = np.asarray(jax.jit(pixels.normalize)(x, mean))
    assert got.dtype == np.float32
    place, reflected, alpha = reference.batch_draws(1, step, l.global_batch, sigma=0.1)
    for j, i in enumerate(l.indices(step)):
      prepared = transforms.decode(source[i]['image'], 32)
      top, left = reference.crop_offset(place[j], 32, 32, 24)
      want = reference.train_view(prepared, top, left, reflected[j], alpha[j], mean,
                                  crop_size=24)
      np.testing.assert_allclose(got[j], want, rtol=0, atol=1e-4)
  assert 0 < sum(flips) < len(flips)  # reflected and plain views both checked


def test_eval_views(source):
  centre, window = stream.eval_views(source[1], AUGMENT)
  prepared = transforms.decode(source[1]['image'], 32)
  np.testing.assert_array_equal(centre, prepared[4:28, 4:28])
  np.testing.assert_array_equal(window, [4, 4, 0])
  ten, windows = stream.eval_views(source[1], AUGMENT, ten_crop=True)
  assert ten.shape == (10, 24, 24, 3)
  np.testing.assert_array_equal(ten[4], centre)
  np.testing.assert_array_equal(ten[9], centre)  # reflected by the device (windows[9, 2])
  np.testing.assert_array_equal(windows[:, :2], [[0, 0], [0, 8], [8, 0], [8, 8], [4, 4]] * 2)
  np.testing.assert_array_equal(windows[:, 2], [0] * 5 + [1] * 5)


def test_decode_threads_give_the_same_batches(source):
  want = list(loader(source).host_batches(2, 9))  # across an epoch boundary (5 steps)
  got = list(loader(source, threads=3).host_batches(2, 9))
  assert len(got) == 9
  for a, b in zip(want, got):
    assert_same(a, b)


@pytest.mark.slow
def test_grain_worker_processes_give_the_same_batches(source):
  want = list(loader(source).host_batches(2, 6))
  got = list(loader(source, threads=2, processes=2).host_batches(2, 6))
  assert len(got) == 6
  for a, b in zip(want, got):
    assert_same(a, b)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir('/dev/shm'), reason='POSIX shared memory in /dev/shm')
def test_worker_processes_leave_no_shared_memory_behind(source):
  """Workers write each batch into shared memory; the main process frees it, and a batch
  that fails in a worker (images of two sizes in one batch) frees its block there."""
  before = set(os.listdir('/dev/shm'))
  got = list(loader(source, processes=1).host_batches(0, 3))
  assert [type(x['pixels']).__name__ for x, _ in got] == ['SharedMemoryArray'] * 3
  del got
  whole = stream.Augment(prepared_size=0, crop_size=0)
  with pytest.raises(BadDataError, match='not the size of the batch'):
    list(loader(source, processes=1, augment=whole).host_batches(0, 2))
  deadline = time.monotonic() + 30  # the main process unlinks in a background thread
  while set(os.listdir('/dev/shm')) - before and time.monotonic() < deadline:
    gc.collect()
    time.sleep(0.1)
  assert set(os.listdir('/dev/shm')) - before == set()


def test_batches_are_placed_with_the_mesh_batch_sharding(source):
  layout = sharding.Layout(sharding.make_mesh(4, 2, jax.devices()[:8]), 'towers')
  l = loader(source, batch=4)
  got = list(l.batches(1, 3, layout.batch_sharding(), layout.label_sharding()))
  assert len(got) == 3
  for step, (images, labels) in zip(range(1, 4), got):
    assert all(v.sharding == layout.batch_sharding() for v in images.values())
    assert_same(({k: np.asarray(v) for k, v in images.items()}, np.asarray(labels)),
                l.host_batch(step))


def test_records_that_fail_to_decode_are_counted_skipped_and_stop_the_run(source, caplog):
  broken = list(source)
  broken[3] = {'image': b'not a jpeg', 'label': 3, 'file_name': b'n0_broken.JPEG'}
  broken[4] = dict(broken[4], image=broken[4]['image'][:40])  # truncated JPEG
  l = stream.StreamLoader(broken, 4, 1, AUGMENT, threads=2, max_bad_records=5)
  good = loader(source)
  with caplog.at_level('WARNING'):
    batches = list(l.host_batches(0, 5))  # one epoch: records 3 and 4 each seen once
  assert l.bad_records == 2
  assert sum('failed to decode' in r.message for r in caplog.records) == 2
  assert any('n0_broken.JPEG' in r.message for r in caplog.records)
  # Record 3 is replaced by record 4's successor (5), record 4 by 5, labels included.
  for step, (x, y) in enumerate(batches):
    idx = l.indices(step)
    want = [5 if i in (3, 4) else i for i in idx]
    np.testing.assert_array_equal(y, [source[i]['label'] for i in want])
    for j, i in enumerate(want):
      view, window, shift = good.view(transforms.decode(source[i]['image'], 32), step, j)
      np.testing.assert_array_equal(x['pixels'][j], view)
      np.testing.assert_array_equal(x['window'][j], window)
      np.testing.assert_array_equal(x['shift'][j], shift)
  strict = stream.StreamLoader(broken, 4, 1, AUGMENT, max_bad_records=1)
  with pytest.raises(BadDataError, match='max_bad_records=1'):
    list(strict.host_batches(0, 5))


def test_pixel_statistics_by_hand():
  from PIL import Image
  def png(array):
    out = io.BytesIO()
    Image.fromarray(array).save(out, 'PNG')
    return out.getvalue()
  # Two 4x4 images: every pixel 128 + 51 u and 128 - 51 u, u = (1, 2, 2) / 3 (rounded to
  # integers: (145, 162, 162) and (111, 94, 94)); mean 128 everywhere, covariance along u.
  a = np.broadcast_to(np.array([145, 162, 162], np.uint8), (4, 4, 3)).copy()
  b = np.broadcast_to(np.array([111, 94, 94], np.uint8), (4, 4, 3)).copy()
  source = [{'image': png(a)}, {'image': png(b)}, {'image': b'broken'}]
  stats = stream.pixel_statistics(source, prepared_size=4)
  assert stats['count'] == 2 and stats['bad'] == 1
  np.testing.assert_allclose(stats['mean'], 128)
  d = np.array([17, 34, 34]) / 255  # each image's offset from the mean, 0-1 scale
  np.testing.assert_allclose(stats['eigval'], [d @ d, 0, 0], atol=1e-12)
  np.testing.assert_allclose(stats['eigvec'][:, 0], -d / np.linalg.norm(d), atol=1e-9)


def test_a_crop_larger_than_the_image_is_an_error_not_bad_data(source):
  unprepared = stream.StreamLoader(source, 4, 0, stream.Augment(prepared_size=0, crop_size=100))
  with pytest.raises(ValueError, match='Cannot take a 100x100 crop'):
    unprepared.host_batch(0)
  assert unprepared.bad_records == 0


def eval_batches(records, batch, layout, ten_crop=False):
  return list(batching.eval_batches(len(records), lambda idx: stream.eval_reader(
      records, AUGMENT)(idx, ten_crop), batch, layout.batch_sharding(), layout.label_sharding()))


def test_eval_batches_cover_the_split_once_with_padding(source):
  layout = single_device_layout()
  mean = np.array([127.3, 119.7, 104.9], np.float32)
  got = eval_batches(source[:7], 4, layout)
  assert len(got) == 2
  images = np.concatenate([np.asarray(pixels.normalize(jax.device_get(x), mean))
                           for x, _, _ in got])
  labels = np.concatenate([np.asarray(y) for _, y, _ in got])
  weights = np.concatenate([np.asarray(w) for _, _, w in got])
  np.testing.assert_array_equal(weights, [1] * 7 + [0])
  np.testing.assert_array_equal(labels, [r['label'] for r in source[:7]] + [source[6]['label']])
  for i in range(7):  # the centre 24x24 of the prepared 32x32, minus the channel means
    want = transforms.decode(source[i]['image'], 32)[4:28, 4:28].astype(np.float32) - mean
    np.testing.assert_array_equal(images[i], want)
  ten = eval_batches(source[:4], 4, layout, ten_crop=True)
  pixel_mean = np.random.default_rng(1).uniform(0, 255, (32, 32, 3)).astype(np.float32)
  x = np.asarray(pixels.normalize(jax.device_get(ten[0][0]), pixel_mean))
  assert x.shape == (4, 10, 24, 24, 3)
  prepared = transforms.decode(source[2]['image'], 32).astype(np.float32) - pixel_mean
  np.testing.assert_allclose(x[2, 3], prepared[8:, 8:], atol=1e-4)  # bottom-right corner
  np.testing.assert_allclose(x[2, 8], prepared[8:, 8:][:, ::-1], atol=1e-4)  # reflected
  x = np.asarray(ten[0][0]['pixels'])
  assert x.shape == (4, 10, 24, 24, 3)
  prepared = transforms.decode(source[2]['image'], 32)
  np.testing.assert_array_equal(x[2, 3], prepared[8:, 8:])  # bottom-right corner
  np.testing.assert_array_equal(x[2, 8], prepared[8:, 8:])  # the device reflects it:
  np.testing.assert_array_equal(np.asarray(ten[0][0]['window'])[2, 8], [8, 8, 1])
  broken = list(source[:3]) + [{'image': b'junk', 'label': 0, 'file_name': b'c/junk.jpg'}]
  with pytest.raises(BadDataError, match=r'Evaluation record 3 \(c/junk.jpg\)'):
    eval_batches(broken, 4, layout)


@pytest.mark.parametrize('ten_crop', [False, True])
def test_evaluation_read_in_parallel_with_prefetch_gives_the_serial_batches(source, ten_crop):
  """Evaluation's views cut by 3 threads and read 2 batches ahead (what the stream pipeline
  does) are the serial reader's batches, in order, each view the prepared image's own crop
  (computed here record by record)."""
  layout = single_device_layout()
  records = source[:11]
  info = batching.DataInfo(num_classes=5, image_size=24, channels=3, num_train=0,
                           num_eval=len(records), class_names=tuple('abcde'))
  mean = np.zeros((3,), np.float32)
  parallel = batching.Data(info=info, mean=mean,
                           loader=None, eval_read=stream.eval_reader(records, AUGMENT, 3),
                           eval_prefetch=2)
  got = list(parallel.eval_batches(4, layout.batch_sharding(), layout.label_sharding(),
                                   ten_crop))
  serial = eval_batches(records, 4, layout, ten_crop)
  assert len(got) == len(serial) == 3
  for (x, y, w), (xs, ys, ws) in zip(got, serial):
    for key in ('pixels', 'window'):
      np.testing.assert_array_equal(np.asarray(x[key]), np.asarray(xs[key]))
    np.testing.assert_array_equal(np.asarray(y), np.asarray(ys))
    np.testing.assert_array_equal(np.asarray(w), np.asarray(ws))
  pixels_ = np.concatenate([np.asarray(x['pixels']) for x, _, _ in got])
  for i, record in enumerate(records):
    prepared = transforms.decode(record['image'], 32)
    want = transforms.ten_crop_unreflected(prepared, 24) if ten_crop else prepared[4:28, 4:28]
    np.testing.assert_array_equal(pixels_[i], want)
