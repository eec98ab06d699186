"""The batch machinery both loaders share: epoch order, rows per process, global arrays,
eval batches and prefetch.

Training order is a pure function of (seed, step) (`EpochOrder`): epoch e is the permutation
drawn from (seed, e), so a loader's position is just the step it is at, and a restarted run
continues with exactly the next batch. Augmentation draws the whole global batch's views from
(seed, step) (`transforms.train_draws`) and so depends neither on the number of processes
nor on the decode threads.

Each process reads only its own rows of every global batch (`process_rows`), and
`jax.make_array_from_process_local_data` assembles the global array with the layout's batch
sharding (`to_global`).
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from typing import Any
from typing import Callable
from typing import Iterator

import jax
import numpy as np

from alexnet_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class DataInfo:
  num_classes: int
  image_size: int
  channels: int
  num_train: int
  num_eval: int
  class_names: tuple[str, ...]
  source: str = ''  # where the images come from (`provenance.describe`)


@dataclasses.dataclass(frozen=True)
class Data:
  """What a run reads from its dataset (`input_pipeline.load`)."""
  info: DataInfo
  mean: np.ndarray  # subtracted on the device: per pixel (H, W, C) of the prepared image, or (C,)
  loader: 'EpochOrder'  # .steps_per_epoch, .batches(...)
  # (indices, ten_crop) -> (pixel_batch, labels) of eval examples: their centre views
  # (B, S, S, C), or their 10 crops (B, 10, S, S, C) with ten_crop.
  eval_read: Callable[[np.ndarray, bool], tuple[dict, np.ndarray]]
  # Multiplies the normalised pixels on the device (C,): data.std=channel; None: 1.
  scale: np.ndarray | None = None
  # indices -> (pixel_batch, labels) of training examples, seen as eval examples are (their
  # centre views, no augmentation): the training images Figure 4 shows.
  train_read: Callable[[np.ndarray], tuple[dict, np.ndarray]] | None = None
  # Eval batches read and placed this many ahead of the eval step, in a background thread.
  eval_prefetch: int = 0

  def eval_batches(self, global_batch: int, image_sharding, label_sharding,
                   ten_crop: bool = False):
    """`eval_batches` of the eval split: centre views, or the paper's 10 crops."""
    read = lambda indices: self.eval_read(indices, ten_crop)
    return prefetch(eval_batches(self.info.num_eval, read, global_batch, image_sharding,
                                 label_sharding), self.eval_prefetch)


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


def to_global(local, sharding, global_batch: int):
  """Assembles the global batch (an array or a dict of arrays) from each process's rows."""
  if isinstance(local, dict):
    return {k: to_global(v, sharding, global_batch) for k, v in local.items()}
  if jax.process_count() == 1:
    return jax.device_put(local, sharding)
  return jax.make_array_from_process_local_data(
      sharding, local, (global_batch, *local.shape[1:]))


def prefetch(iterator, size: int):
  """Runs `iterator` in a thread, `size` items ahead; re-raises its errors here. Closing the
  generator (a run ending early) stops the thread and closes `iterator`, so that no decode
  thread or worker process outlives the run."""
  if size <= 0:
    yield from iterator
    return
  q: queue.Queue = queue.Queue(maxsize=size)
  done, stop = object(), threading.Event()

  def put(item) -> bool:
    while not stop.is_set():
      try:
        q.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def worker():
    try:
      for item in iterator:
        if not put(item):
          return
      put(done)
    except BaseException as e:  # pylint: disable=broad-except  (raised, whole, by the reader)
      put(e)
    finally:
      close = getattr(iterator, 'close', None)
      if close is not None:
        close()

  thread = threading.Thread(target=worker, daemon=True)
  thread.start()
  try:
    while (item := q.get()) is not done:
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
    thread.join(timeout=10)


class EpochOrder:
  """Which examples batch `step` holds, for both loaders: epoch `step // steps_per_epoch`'s
  permutation drawn from (seed, epoch). Subclasses give `read(step, rows)`, the (images,
  labels) of rows `rows` of batch `step`; `batches` places them on the mesh."""

  def __init__(self, num_examples: int, global_batch: int, seed: int):
    if num_examples < global_batch:
      raise ConfigError(f'batch_size={global_batch} is larger than the '
                        f'{num_examples} training examples; set batch_size to at most '
                        f'{num_examples} (and eval_batch_size to match).')
    self.num_examples, self.global_batch, self.seed = num_examples, global_batch, seed
    self.steps_per_epoch = num_examples // global_batch  # the remainder is dropped
    self._cached = (None, None)  # (epoch, permutation), replaced whole: threads read it

  def _permutation(self, epoch: int) -> np.ndarray:
    cached_epoch, perm = self._cached
    if epoch != cached_epoch:
      perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
      self._cached = (epoch, perm)
    return perm

  def indices(self, step: int) -> np.ndarray:
    """Indices (into the split) of the global batch of `step`."""
    epoch, i = divmod(step, self.steps_per_epoch)
    return self._permutation(epoch)[i * self.global_batch:(i + 1) * self.global_batch]

  def read(self, step: int, rows: slice) -> tuple[dict, np.ndarray, list[str]]:
    """A `pixels.pixel_batch` and the labels of rows `rows` of batch `step`, and the records
    that failed to decode on the way (messages for `report`). Runs in any thread or process."""
    raise NotImplementedError

  def report(self, step: int, problems: list[str]) -> None:
    """Called in the loader's own thread with `read`'s problems of batch `step`."""
    del step, problems

  def read_rows(self, step: int, image_rows: slice | None = None,
                label_rows: slice | None = None) -> tuple[dict, np.ndarray, list[str]]:
    """`read` of batch `step`: images of `image_rows` (all by default), labels of
    `label_rows` (in hybrid layouts a process may hold other label rows than image rows)."""
    image_rows = image_rows or slice(0, self.global_batch)
    images, labels, problems = self.read(step, image_rows)
    if label_rows is not None and label_rows != image_rows:
      labels = self.read(step, label_rows)[1]
    return images, labels, problems

  def host_batch(self, step: int, image_rows: slice | None = None,
                 label_rows: slice | None = None) -> tuple[dict, np.ndarray]:
    """Rows of batch `step` (all by default): a `pixel_batch` and labels."""
    images, labels, problems = self.read_rows(step, image_rows, label_rows)
    self.report(step, problems)
    return images, labels

  def host_batches(self, start_step: int, num_steps: int, image_rows: slice | None = None,
                   label_rows: slice | None = None) -> Iterator[tuple[dict, np.ndarray]]:
    """host_batch(s) for s in start_step .. start_step + num_steps - 1, in order."""
    for step in range(start_step, start_step + num_steps):
      yield self.host_batch(step, image_rows, label_rows)

  def place_images(self, images: dict, sharding, rows: slice):
    """The global image batch from this process's rows `rows` (in the prefetch thread)."""
    del rows
    return to_global(images, sharding, self.global_batch)

  def batches(self, start_step: int, num_steps: int, image_sharding, label_sharding,
              prefetch_size: int = 2) -> Iterator[tuple[dict, Any]]:
    """Global batches start_step .. start_step + num_steps - 1 placed with the shardings
    (each process makes only its rows), `prefetch_size` ahead in a background thread."""
    rows = (process_rows(image_sharding, self.global_batch),
            process_rows(label_sharding, self.global_batch))
    placed = ((self.place_images(images, image_sharding, rows[0]),
               to_global(labels, label_sharding, self.global_batch))
              for images, labels in self.host_batches(start_step, num_steps, *rows))
    yield from prefetch(placed, prefetch_size)


def eval_batches(num_examples: int, read, global_batch: int, image_sharding, label_sharding):
  """The whole eval split in order as (images, labels, weights) global arrays; the last batch
  is padded with weight-0 copies of the last example. `read(indices)` gives a `pixel_batch`
  and the labels of those examples; each process reads only its rows."""
  rows = process_rows(image_sharding, global_batch)
  label_rows = process_rows(label_sharding, global_batch)
  for start in range(0, num_examples, global_batch):
    idx = np.arange(start, start + global_batch)
    weights = (idx < num_examples).astype(np.float32)
    idx = np.minimum(idx, num_examples - 1)
    images, labels = read(idx[rows])
    if label_rows != rows:
      labels = read(idx[label_rows])[1]
    yield (to_global(images, image_sharding, global_batch),
           to_global(labels, label_sharding, global_batch),
           to_global(weights[label_rows], label_sharding, global_batch))
