"""The paper's Figure 4 (section 6.1) for a checkpoint: test images with their five most
probable classes, and test images with the training images nearest to them in fc7's
feature space (Euclidean distance of the 4096-d, here T * fc units, activations).

The training images are a bounded sample (`train_sample`, drawn with a fixed seed and stated
on the figure) on a large training set: the paper searched all 1.2 million.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.model import network as model_lib
from alexnet_jax.model import pixels
from alexnet_jax.outputs import figures

SHOWN, QUERIES, NEIGHBOURS = 8, 5, 6
READ_BATCH = 256


def features(params, spec, read, indices, mean, scale, compute_dtype=jnp.float32):
  """(views uint8 (N, S, S, C), labels, softmax (N, classes), fc7 (N, D)) of `indices` as
  `read` (a `Data.eval_read`-like reader of centre views) gives them."""

  @jax.jit
  def forward(params, batch):
    logits, fc7 = model_lib.apply(params, pixels.normalize(batch, mean, scale), spec,
                                  compute_dtype=compute_dtype, with_fc7=True)
    return jax.nn.softmax(logits.astype(jnp.float32)), fc7.astype(jnp.float32)

  views, labels, probs, fc7 = [], [], [], []
  for start in range(0, len(indices), READ_BATCH):
    chunk = np.asarray(indices[start:start + READ_BATCH])
    pad = READ_BATCH - len(chunk)  # one compiled shape for every chunk
    batch, y = read(np.concatenate([chunk, np.repeat(chunk[-1:], pad)]))
    p, f = (np.asarray(a)[:len(chunk)] for a in forward(params, batch))
    views.append(np.asarray(batch['pixels'])[:len(chunk)])
    labels.append(np.asarray(y)[:len(chunk)])
    probs.append(p)
    fc7.append(f)
  return (np.concatenate(views), np.concatenate(labels), np.concatenate(probs),
          np.concatenate(fc7))


def nearest(queries: np.ndarray, pool: np.ndarray, k: int) -> np.ndarray:
  """Indices (Q, k) of the `k` rows of `pool` nearest each query row (Euclidean), nearest
  first."""
  d2 = (np.sum(queries.astype(np.float64) ** 2, 1)[:, None] - 2.0 * queries @ pool.T
        + np.sum(pool.astype(np.float64) ** 2, 1)[None, :])
  return np.argsort(d2, axis=1, kind='stable')[:, :k]


def save(params, spec, data, mean, scale, names, out_dir: str, step: int,
         train_sample: int = 10_000, seed: int = 0, compute_dtype=jnp.float32) -> list[str]:
  """Writes figure4_top5_step<step>.png and figure4_neighbours_step<step>.png (the second
  only where the pipeline reads training images); returns their paths."""
  rng = np.random.default_rng(seed)
  shown = np.sort(rng.choice(data.info.num_eval, min(SHOWN, data.info.num_eval),
                             replace=False))
  views, labels, probs, fc7 = features(params, spec, lambda i: data.eval_read(i, False),
                                       shown, mean, scale, compute_dtype)
  os.makedirs(out_dir, exist_ok=True)
  paths = [figures.save_top5(views, labels, probs, names,
                             os.path.join(out_dir, f'figure4_top5_step{step}.png'),
                             f'Five most probable classes, step {step} (true class in red)')]
  if data.train_read is None:
    return paths
  n = min(train_sample, data.info.num_train)
  sample = np.sort(rng.choice(data.info.num_train, n, replace=False))
  train_views, train_labels, _, train_fc7 = features(params, spec, data.train_read, sample,
                                                      mean, scale, compute_dtype)
  q = min(QUERIES, len(views))
  near = nearest(fc7[:q], train_fc7, min(NEIGHBOURS, n))
  where = 'all' if n == data.info.num_train else f'a random {n:,} of the {data.info.num_train:,}'
  paths.append(figures.save_neighbours(
      views[:q], labels[:q], train_views[near], train_labels[near], names,
      os.path.join(out_dir, f'figure4_neighbours_step{step}.png'),
      f'Test images (left) and the training images nearest in fc7, step {step}: searched '
      f'{where} training images'))
  return paths
