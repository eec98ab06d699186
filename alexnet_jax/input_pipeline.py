"""Batches for training and evaluation, placed on the mesh.

Small datasets (Fashion-MNIST, CIFAR) are decoded once into host memory. The
training order is a pure function of (seed, step): epoch e is the permutation
drawn from (seed, e), so a loader's position is just the step it is at and a
restarted run continues with exactly the next batch. Augmentation draws its
randomness from (seed, step, example) and so does not depend on the number of
processes either.

Each process produces only its own rows of every global batch
(`process_rows`) and `jax.make_array_from_process_local_data` assembles the
global array with the layout's batch sharding.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from typing import Iterator

import jax
import numpy as np

from alexnet_jax import datasets
from alexnet_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Split:
  images: np.ndarray  # (N, H, W, C) uint8
  labels: np.ndarray  # (N,) int32


@dataclasses.dataclass(frozen=True)
class DataInfo:
  num_classes: int
  image_size: int
  channels: int
  num_train: int
  num_eval: int
  class_names: tuple[str, ...]


# ---- sources -----------------------------------------------------------------


def load_dataset(config) -> tuple[Split, Split, DataInfo]:
  """Train and eval splits of `config.dataset` (synthetic data is generated)."""
  d = config.data
  if config.dataset == 'synthetic':
    rng = np.random.default_rng(config.seed)
    n_train, n_eval = d.synthetic_train_examples, d.synthetic_eval_examples
    shape = (d.image_size, d.image_size, d.channels)
    make = lambda n: Split(rng.integers(0, 256, (n, *shape), dtype=np.uint8),
                           rng.integers(0, d.num_classes, (n,), dtype=np.int32))
    train, evals = make(n_train), make(n_eval)
    names = tuple(str(i) for i in range(d.num_classes))
  else:
    builder = datasets.builder_for(config.dataset, d.data_dir, d.manual_dir)
    train = Split(*datasets.load_arrays(builder, d.train_split))
    evals = Split(*datasets.load_arrays(builder, d.eval_split))
    names = tuple(datasets.class_names(builder))
  info = DataInfo(num_classes=len(names), image_size=train.images.shape[1],
                  channels=train.images.shape[3], num_train=len(train.labels),
                  num_eval=len(evals.labels), class_names=names)
  return train, evals, info


def mean_image(images: np.ndarray, mode: str) -> np.ndarray:
  """Training-set mean to subtract (paper section 2: the per-pixel mean)."""
  if mode == 'pixel':
    return images.mean(axis=0, dtype=np.float64).astype(np.float32)
  if mode == 'channel':
    return images.mean(axis=(0, 1, 2), dtype=np.float64).astype(np.float32)
  if mode == 'none':
    return np.zeros((images.shape[-1],), np.float32)
  raise ConfigError(f'data.mean={mode!r} is not one of pixel, channel, none.')


# ---- augmentation ------------------------------------------------------------


def augment(images: np.ndarray, rngs: list[np.random.Generator], pad: int,
            flip: bool) -> np.ndarray:
  """Random crops of the zero-padded image and horizontal reflections (section 4.1)."""
  n, h, w, _ = images.shape
  out = np.empty_like(images)
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0))) if pad else images
  for i, r in enumerate(rngs):
    dy, dx = (r.integers(0, 2 * pad + 1, 2) if pad else (0, 0))
    crop = padded[i, dy:dy + h, dx:dx + w]
    out[i] = crop[:, ::-1] if (flip and r.random() < 0.5) else crop
  return out


def ten_crop(images: np.ndarray, pad: int) -> np.ndarray:
  """The paper's test-time views (section 4.1) for images already at the network's input size:
  the four corner crops and the centre crop of the image zero-padded by `pad` (the windows
  training's random crops range over), and their horizontal reflections.

  (N, H, W, C) -> (N, 10, H, W, C): views 0-4 are top-left, top-right, bottom-left,
  bottom-right, centre; views 5-9 are the same reflected. The centre crop is the image itself.
  """
  n, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0))) if pad else images
  offsets = [(0, 0), (0, 2 * pad), (2 * pad, 0), (2 * pad, 2 * pad), (pad, pad)]
  crops = np.stack([padded[:, dy:dy + h, dx:dx + w] for dy, dx in offsets], axis=1)
  return np.concatenate([crops, crops[:, :, :, ::-1]], axis=1)


# ---- loaders -----------------------------------------------------------------


def process_rows(sharding, global_batch: int) -> slice:
  """The rows of a global batch that this process's devices hold under `sharding`."""
  if jax.process_count() == 1:
    return slice(0, global_batch)
  spans = {idx[0].indices(global_batch)[:2]
           for idx in sharding.addressable_devices_indices_map((global_batch,)).values()}
  start, stop = min(s for s, _ in spans), max(e for _, e in spans)
  if sum(e - s for s, e in spans) != stop - start:
    raise ConfigError('This process\'s devices do not hold a contiguous block of the batch; '
                     'order the mesh so that each process holds whole rows of the data axis.')
  return slice(start, stop)


class TrainLoader:
  """Deterministic, resumable training batches: batch `step` depends only on (seed, step)."""

  def __init__(self, split: Split, mean: np.ndarray, global_batch: int, seed: int,
               pad: int = 0, flip: bool = False):
    if len(split.labels) < global_batch:
      raise ConfigError(f'batch_size={global_batch} is larger than the '
                       f'{len(split.labels)} training examples.')
    self.split, self.mean = split, mean
    self.global_batch, self.seed, self.pad, self.flip = global_batch, seed, pad, flip
    self.steps_per_epoch = len(split.labels) // global_batch  # the remainder is dropped
    self._perm_epoch, self._perm = None, None

  def _permutation(self, epoch: int) -> np.ndarray:
    if epoch != self._perm_epoch:
      self._perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.split.labels))
      self._perm_epoch = epoch
    return self._perm

  def indices(self, step: int) -> np.ndarray:
    """Indices (into the split) of the global batch of `step`."""
    epoch, i = divmod(step, self.steps_per_epoch)
    return self._permutation(epoch)[i * self.global_batch:(i + 1) * self.global_batch]

  def host_batch(self, step: int, image_rows: slice | None = None,
                 label_rows: slice | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows of batch `step` (all by default): float32 images minus the mean, and labels."""
    idx = self.indices(step)
    image_rows = image_rows or slice(0, self.global_batch)
    label_rows = label_rows or image_rows
    images = self.split.images[idx[image_rows]]
    if self.pad or self.flip:
      rngs = [np.random.default_rng([self.seed, step, j])
              for j in range(image_rows.start, image_rows.stop)]
      images = augment(images, rngs, self.pad, self.flip)
    return images.astype(np.float32) - self.mean, self.split.labels[idx[label_rows]]

  def batches(self, start_step: int, num_steps: int, image_sharding, label_sharding,
              prefetch: int = 2) -> Iterator[tuple[jax.Array, jax.Array]]:
    """Batches start_step .. start_step + num_steps - 1, prepared in a background thread."""
    rows = (process_rows(image_sharding, self.global_batch),
            process_rows(label_sharding, self.global_batch))

    def produce(step):
      images, labels = self.host_batch(step, *rows)
      return (to_global(images, image_sharding, self.global_batch),
              to_global(labels, label_sharding, self.global_batch))

    yield from _prefetch((produce(s) for s in range(start_step, start_step + num_steps)),
                         prefetch)


def eval_batches(split: Split, mean: np.ndarray, global_batch: int, image_sharding,
                 label_sharding, views=None):
  """The whole eval split in order; the last batch is padded with weight-0 examples.

  `views` (e.g. `functools.partial(ten_crop, pad=2)`) maps uint8 images (B, H, W, C) to
  (B, V, H, W, C) for a multi-view test.
  """
  n = len(split.labels)
  rows = process_rows(image_sharding, global_batch)
  label_rows = process_rows(label_sharding, global_batch)
  for start in range(0, n, global_batch):
    idx = np.arange(start, start + global_batch)
    weights = (idx < n).astype(np.float32)
    idx = np.minimum(idx, n - 1)
    images = split.images[idx[rows]]
    if views is not None:
      images = views(images)
    images = images.astype(np.float32) - mean
    yield (to_global(images, image_sharding, global_batch),
           to_global(split.labels[idx[label_rows]], label_sharding, global_batch),
           to_global(weights[label_rows], label_sharding, global_batch))


def to_global(local: np.ndarray, sharding, global_batch: int) -> jax.Array:
  """Assembles the global batch from each process's rows."""
  if jax.process_count() == 1:
    return jax.device_put(local, sharding)
  return jax.make_array_from_process_local_data(
      sharding, local, (global_batch, *local.shape[1:]))


def _prefetch(iterator, size: int):
  """Runs `iterator` in a thread, `size` items ahead; re-raises its errors here."""
  if size <= 0:
    yield from iterator
    return
  q: queue.Queue = queue.Queue(maxsize=size)
  done = object()

  def worker():
    try:
      for item in iterator:
        q.put(item)
      q.put(done)
    except BaseException as e:  # pylint: disable=broad-except
      q.put(e)

  threading.Thread(target=worker, daemon=True).start()
  while (item := q.get()) is not done:
    if isinstance(item, BaseException):
      raise item
    yield item
