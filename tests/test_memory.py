"""The memory loader (alexnet_jax/data/memory.py) and the batch machinery it shares with the
stream loader (alexnet_jax/data/batching.py): epoch order, resume, crops, eval padding."""

import jax
import numpy as np
import pytest

from alexnet_jax.data import batching
from alexnet_jax.data import memory
from alexnet_jax.errors import ConfigError
from alexnet_jax.parallel import sharding
from tests import reference


def make_loader(n=40, batch=8, seed=3, **kw):
  images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 1), np.uint8)
  split = memory.Split(images, np.arange(n, dtype=np.int32))
  return memory.MemoryLoader(split, batch, seed, **kw)


def test_each_epoch_is_a_permutation_and_order_depends_on_seed():
  loader = make_loader()
  epoch = np.concatenate([loader.host_batch(s)[1] for s in range(loader.steps_per_epoch)])
  assert sorted(epoch) == list(range(40))
  nxt = np.concatenate([loader.host_batch(s)[1] for s in range(5, 10)])
  assert sorted(nxt) == list(range(40)) and not np.array_equal(nxt, epoch)
  other = make_loader(seed=4)
  assert not np.array_equal(other.host_batch(0)[1], loader.host_batch(0)[1])
  with pytest.raises(ConfigError, match='batch_size=50 is larger than the 40'):
    make_loader(batch=50)


def test_a_new_loader_resumes_at_exactly_the_next_batch():
  a, b = make_loader(pad=1, flip=True), make_loader(pad=1, flip=True)
  for step in (0, 7, 12):  # a restarted run builds a new loader and asks for `step`
    (xa, ya), (xb, yb) = a.host_batch(step), b.host_batch(step)
    np.testing.assert_array_equal(ya, yb)
    for key in ('pixels', 'window', 'shift'):
      np.testing.assert_array_equal(xa[key], xb[key])
    assert xa['pixels'].dtype == np.uint8 and xa['pixels'].shape == (8, 4, 4, 1)
  straight = list(a.host_batches(0, 6))
  resumed = list(b.host_batches(0, 2)) + list(make_loader(pad=1, flip=True).host_batches(2, 4))
  for (xa, ya), (xb, yb) in zip(straight, resumed):
    np.testing.assert_array_equal(xa['pixels'], xb['pixels'])
    np.testing.assert_array_equal(ya, yb)


def test_rows_of_a_process_are_the_rows_of_the_global_batch():
  loader = make_loader(pad=1, flip=True)
  x, y = loader.host_batch(3)
  part_x, part_y = loader.host_batch(3, slice(2, 6))
  np.testing.assert_array_equal(part_x['pixels'], x['pixels'][2:6])
  np.testing.assert_array_equal(part_y, y[2:6])
  _, labels = loader.host_batch(3, slice(0, 4), slice(4, 8))  # labels of other rows
  np.testing.assert_array_equal(labels, y[4:8])


def test_random_crops_cover_the_padded_range_and_reflect():
  image = np.arange(16, dtype=np.uint8).reshape(4, 4, 1) + 1
  loader = make_loader(pad=1, flip=True)
  seen, flips = set(), 0
  padded = np.pad(image[..., 0], 1)
  for step in range(400):
    out = loader.views(image[None], step, slice(0, 1))[0, ..., 0]
    matches = [(dy, dx, f) for dy in range(3) for dx in range(3) for f in (0, 1)
               if np.array_equal(out, (padded[dy:dy + 4, dx:dx + 4][:, ::-1] if f
                                       else padded[dy:dy + 4, dx:dx + 4]))]
    assert matches, out
    seen.add(matches[0][:2])
    flips += matches[0][2]
  assert seen == {(dy, dx) for dy in range(3) for dx in range(3)}
  assert 150 < flips < 250  # 200 +- 10 (1 sd)


def test_eval_batches_cover_the_split_once_with_weight_zero_padding():
  layout = sharding.Layout(sharding.make_mesh(1, 1, jax.devices()[:1]), 'towers')
  images = np.arange(7 * 3 * 3, dtype=np.uint8).reshape(7, 3, 3, 1)
  labels = np.arange(7, dtype=np.int32) + 10
  read = lambda idx: ({'pixels': images[idx]}, labels[idx])
  got = list(batching.eval_batches(7, read, 4, layout.batch_sharding(),
                                   layout.label_sharding()))
  assert len(got) == 2
  np.testing.assert_array_equal(np.concatenate([np.asarray(x['pixels']) for x, _, _ in got]),
                                images[[0, 1, 2, 3, 4, 5, 6, 6]])
  np.testing.assert_array_equal(np.concatenate([np.asarray(y) for _, y, _ in got]),
                                labels[[0, 1, 2, 3, 4, 5, 6, 6]])
  np.testing.assert_array_equal(np.concatenate([np.asarray(w) for _, _, w in got]),
                                [1] * 7 + [0])


def test_ten_crop_eval_views_of_the_padded_image(tmp_path):
  from configs import fashion_mnist
  config = fashion_mnist.get_config()
  config.dataset, config.data.mean = 'synthetic', 'none'
  config.data.synthetic_train_examples, config.data.synthetic_eval_examples = 16, 4
  config.data.num_classes, config.batch_size = 3, 8
  data = memory.load(config)
  centre, labels = data.eval_read(np.arange(4), False)
  ten, _ = data.eval_read(np.arange(4), True)
  assert ten['pixels'].shape == (4, 10, 28, 28, 1)
  for i in range(4):
    padded = np.pad(centre['pixels'][i], ((2, 2), (2, 2), (0, 0)))
    np.testing.assert_array_equal(ten['pixels'][i], reference.ten_crop(padded, 28))
  np.testing.assert_array_equal(ten['pixels'][:, 4], centre['pixels'])


def test_prefetch_yields_in_order_and_reraises_errors_here():
  def items():
    yield from range(5)
    raise RuntimeError('broken source')

  got = []
  with pytest.raises(RuntimeError, match='broken source'):
    for x in batching.prefetch(items(), 2):
      got.append(x)
  assert got == list(range(5))
