"""Batches for training and evaluation, placed on the mesh.

Two pipelines, chosen by `data.pipeline` (`load`):
  memory: small fixed-size datasets (Fashion-MNIST, CIFAR) decoded once into host memory
          (`TrainLoader`: random crops of the zero-padded image and reflections);
  stream: ImageNet-style datasets of encoded images, decoded every step in parallel
          (`streaming.StreamTrainLoader`: the paper's 256x256 images, random 224 crops,
          reflections, PCA lighting, 10-crop test).

Both hand the device the same batch: uint8 pixels plus, per view, the window it was cut from
in the prepared image and its PCA shift (`pixel_batch`). The float work (reflection for the
stream pipeline, mean subtraction, the shift) runs on the device inside the jitted step
(`normalize`): the host moves a quarter of the bytes of float32 and does no arithmetic on
pixels.

In both, the training order is a pure function of (seed, step): epoch e is the permutation
drawn from (seed, e), so a loader's position is just the step it is at and a restarted run
continues with exactly the next batch. Augmentation draws its randomness from (seed, step,
example) and so does not depend on the number of processes or decode threads either.

Each process produces only its own rows of every global batch (`process_rows`) and
`jax.make_array_from_process_local_data` assembles the global array with the layout's batch
sharding.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import datasets
from alexnet_jax import transforms
from alexnet_jax.errors import ConfigError

PIPELINES = ('memory', 'stream')
MEAN_MODES = ('pixel', 'channel', 'none')


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


@dataclasses.dataclass(frozen=True)
class Data:
  """What a run reads from its dataset (`load`)."""
  info: DataInfo
  mean: np.ndarray  # subtracted on the device: per pixel (H, W, C) of the prepared image, or (C,)
  loader: Any  # TrainLoader or streaming.StreamTrainLoader: .steps_per_epoch, .batches(...)
  # (global_batch, image_sharding, label_sharding, ten_crop=False) -> (images, labels, weights)
  eval_batches: Callable[..., Iterator]
  test_view: Callable[[Any], tuple[np.ndarray, np.ndarray]]  # PIL image -> (uint8 view, window)


# ---- the batch the device receives -------------------------------------------


def pixel_batch(pixels: np.ndarray, window: np.ndarray | None = None,
                shift: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """Images as the device receives them: uint8 `pixels` (..., S, S, C) and, per view, the
  `window` (top, left, reflect) it was cut from in the prepared image (where the per-pixel
  mean is taken from, and whether the device reflects view and mean; zeros: the mean as it
  is, no reflection) and the PCA `shift` (C,) to add."""
  lead, channels = pixels.shape[:-3], pixels.shape[-1]
  return {'pixels': pixels,
          'window': np.zeros((*lead, 3), np.int32) if window is None else window,
          'shift': np.zeros((*lead, channels), np.float32) if shift is None else shift}


def normalize(images, mean) -> jax.Array:
  """The network's float32 input from a `pixel_batch` (on the device, inside the step):
  pixels minus the mean under each view's window, reflected where the window says so, plus
  the view's PCA shift; `transforms.normalize` is the same in numpy. Float32 `images` are
  taken as already normalised."""
  if not isinstance(images, dict):
    return images
  pixels = images['pixels']
  size, channels = pixels.shape[-3], pixels.shape[-1]
  x = pixels.astype(jnp.float32)
  window = images['window']
  if mean is not None:
    mean = jnp.asarray(mean, jnp.float32)
    if mean.ndim == 3:  # per pixel: the window of the view
      crop = lambda w: jax.lax.dynamic_slice(mean, (w[0], w[1], 0), (size, size, channels))
      mean = jax.vmap(crop)(window.reshape(-1, 3)).reshape(pixels.shape)
    x = x - mean
  reflect = (window[..., 2] > 0)[..., None, None, None]
  x = jnp.where(reflect, jnp.flip(x, axis=-2), x)
  return x + images['shift'][..., None, None, :]


# ---- sources -----------------------------------------------------------------


def load(config) -> Data:
  """The run's data, by `data.pipeline` (the config's edge for everything data)."""
  d = config.data
  if d.pipeline not in PIPELINES:
    raise ConfigError(f'data.pipeline={d.pipeline!r} is not one of {", ".join(PIPELINES)}.')
  if d.pipeline == 'stream':
    from alexnet_jax import streaming  # pylint: disable=import-outside-toplevel
    return streaming.load(config)
  unsupported = {k: d[k] for k in ('prepared_size', 'crop_size', 'pca_sigma') if d[k]}
  if unsupported:
    fields = ', '.join(f'data.{k}={v}' for k, v in unsupported.items())
    raise ConfigError(f'{fields}: the memory pipeline uses images as they are stored (crops of '
                      'the padded image, data.crop_pad); set them to 0 or data.pipeline=stream.')
  train, evals, info = load_dataset(config)
  size, channels = info.image_size, info.channels

  def test_view(image):
    view = transforms.resize_and_centre_crop(image, size, channels)
    return view, np.zeros((3,), np.int32)

  return Data(info=info, mean=mean_image(train.images, d.mean),
              loader=TrainLoader(train, config.batch_size, config.seed, pad=d.crop_pad,
                                 flip=d.flip),
              eval_batches=lambda batch, images, labels, ten_crop=False: eval_batches(
                  evals, batch, images, labels, d.crop_pad if ten_crop else None),
              test_view=test_view)


def load_dataset(config) -> tuple[Split, Split, DataInfo]:
  """Train and eval splits of `config.dataset` decoded into memory (synthetic data is
  generated)."""
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
    builder = datasets.process_zero_first(
        lambda: datasets.builder_for(config.dataset, d.data_dir, d.manual_dir, d.folder))
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
  raise ConfigError(f'data.mean={mode!r} is not one of {", ".join(MEAN_MODES)}.')


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


class EpochOrder:
  """Which examples batch `step` holds, for both loaders: epoch `step // steps_per_epoch`'s
  permutation drawn from (seed, epoch), so batch `step` is a pure function of (seed, step)
  and a loader's position is the step it is at. Subclasses give `host_batch` (or
  `host_batches`); `batches` places them on the mesh."""

  def __init__(self, num_examples: int, global_batch: int, seed: int):
    if num_examples < global_batch:
      raise ConfigError(f'batch_size={global_batch} is larger than the '
                       f'{num_examples} training examples.')
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

  def host_batch(self, step: int, image_rows: slice | None = None,
                 label_rows: slice | None = None) -> tuple[dict, np.ndarray]:
    raise NotImplementedError

  def host_batches(self, start_step: int, num_steps: int, image_rows: slice | None = None,
                   label_rows: slice | None = None) -> Iterator[tuple[dict, np.ndarray]]:
    """host_batch(s) for s in start_step .. start_step + num_steps - 1, in order."""
    for step in range(start_step, start_step + num_steps):
      yield self.host_batch(step, image_rows, label_rows)

  def batches(self, start_step: int, num_steps: int, image_sharding, label_sharding,
              prefetch: int = 2) -> Iterator[tuple[dict, jax.Array]]:
    """Global batches start_step .. start_step + num_steps - 1 placed with the shardings
    (each process makes only its rows), `prefetch` ahead in a background thread."""
    rows = (process_rows(image_sharding, self.global_batch),
            process_rows(label_sharding, self.global_batch))
    placed = ((to_global(images, image_sharding, self.global_batch),
               to_global(labels, label_sharding, self.global_batch))
              for images, labels in self.host_batches(start_step, num_steps, *rows))
    yield from _prefetch(placed, prefetch)


class TrainLoader(EpochOrder):
  """Deterministic, resumable training batches of a split in memory."""

  def __init__(self, split: Split, global_batch: int, seed: int, pad: int = 0,
               flip: bool = False):
    super().__init__(len(split.labels), global_batch, seed)
    self.split, self.pad, self.flip = split, pad, flip

  def host_batch(self, step: int, image_rows: slice | None = None,
                 label_rows: slice | None = None) -> tuple[dict, np.ndarray]:
    """Rows of batch `step` (all by default): a `pixel_batch` of the augmented uint8 images
    (the mean is subtracted from the whole image, window 0), and labels."""
    idx = self.indices(step)
    image_rows = image_rows or slice(0, self.global_batch)
    label_rows = label_rows or image_rows
    images = self.split.images[idx[image_rows]]
    if self.pad or self.flip:
      rngs = [np.random.default_rng([self.seed, step, j])
              for j in range(image_rows.start, image_rows.stop)]
      images = augment(images, rngs, self.pad, self.flip)
    return pixel_batch(images), self.split.labels[idx[label_rows]]


def eval_batches(split: Split, global_batch: int, image_sharding, label_sharding,
                 ten_crop_pad: int | None = None):
  """The whole eval split in order as `pixel_batch`es; the last batch is padded with
  weight-0 examples. `ten_crop_pad` (not None): the 10 views of `ten_crop`,
  (B, 10, H, W, C), for the multi-view test."""
  n = len(split.labels)
  rows = process_rows(image_sharding, global_batch)
  label_rows = process_rows(label_sharding, global_batch)
  for start in range(0, n, global_batch):
    idx = np.arange(start, start + global_batch)
    weights = (idx < n).astype(np.float32)
    idx = np.minimum(idx, n - 1)
    images = split.images[idx[rows]]
    if ten_crop_pad is not None:
      images = ten_crop(images, ten_crop_pad)
    yield (to_global(pixel_batch(images), image_sharding, global_batch),
           to_global(split.labels[idx[label_rows]], label_sharding, global_batch),
           to_global(weights[label_rows], label_sharding, global_batch))


def to_global(local, sharding, global_batch: int):
  """Assembles the global batch (an array or a dict of arrays) from each process's rows."""
  if isinstance(local, dict):
    return {k: to_global(v, sharding, global_batch) for k, v in local.items()}
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
