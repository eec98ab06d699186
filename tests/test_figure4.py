"""The paper's Figure 4: fc7 is the layer fc8 reads, the neighbours are the Euclidean
nearest, and both figures are drawn."""

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.data import batching
from alexnet_jax.model import network
from alexnet_jax.model import pixels
from alexnet_jax.outputs import figure4
from tests.test_sharding import SMALL


def test_fc7_is_what_fc8_reads():
  params = network.init_params(jax.random.key(0), SMALL)
  x = np.random.default_rng(0).normal(0, 60, (4, 32, 32, 3)).astype(np.float32)
  with jax.default_matmul_precision('highest'):
    logits, fc7 = network.apply(params, jnp.asarray(x), SMALL, with_fc7=True)
    plain = network.apply(params, jnp.asarray(x), SMALL)
  w8 = np.asarray(params['fc8']['kernel'], np.float64)  # (T, units, classes)
  want = np.asarray(fc7, np.float64) @ w8.reshape(-1, w8.shape[-1]) + np.asarray(
      params['fc8']['bias'], np.float64)
  np.testing.assert_allclose(np.asarray(logits), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(logits), np.asarray(plain))
  assert fc7.shape == (4, SMALL.num_towers * SMALL.fc_features) and np.all(np.asarray(fc7) >= 0)


def test_nearest_are_the_euclidean_nearest():
  rng = np.random.default_rng(0)
  pool = rng.normal(size=(300, 16)).astype(np.float32)
  queries = pool[[5, 77, 200]] + rng.normal(0, 1e-3, (3, 16)).astype(np.float32)
  near = figure4.nearest(queries, pool, 6)
  brute = np.argsort(np.linalg.norm(queries[:, None].astype(np.float64) - pool[None], axis=-1),
                     axis=1)[:, :6]
  np.testing.assert_array_equal(near, brute)
  assert list(near[:, 0]) == [5, 77, 200]


def test_both_figures_are_written(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, SMALL.num_classes, 40).astype(np.int32)
  read = lambda indices: (pixels.pixel_batch(images[indices]), labels[indices])
  info = batching.DataInfo(num_classes=SMALL.num_classes, image_size=32, channels=3,
                           num_train=40, num_eval=40,
                           class_names=tuple(f'class {i}' for i in range(10)))
  data = batching.Data(info=info, mean=np.zeros(3, np.float32), loader=None,
                       eval_read=lambda indices, ten_crop: read(indices), train_read=read)
  params = network.init_params(jax.random.key(0), SMALL)
  paths = figure4.save(params, SMALL, data, np.zeros(3, np.float32), None, info.class_names,
                       str(tmp_path), 7, train_sample=25)
  assert [p.rsplit('/', 1)[1] for p in paths] == ['figure4_top5_step7.png',
                                                  'figure4_neighbours_step7.png']
  from PIL import Image
  assert all(Image.open(p).size[0] > 500 for p in paths)
