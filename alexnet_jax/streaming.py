"""Streaming training batches for datasets of encoded images (ImageNet, image folders).

Images are read one by one from a random-access source (a tfds data source, e.g.
`builder.as_data_source(split, decoders={'image': tfds.decode.SkipDecoding()})`, or any
sequence of {'image': encoded bytes or uint8 array, 'label': int}), decoded with Pillow,
prepared as in the paper (`transforms.resize_and_centre_crop`: shorter side 256, central
256x256) and augmented (`transforms.train_crop`). Nothing here needs TensorFlow.

The contract is that of `input_pipeline.EpochOrder`: the examples of batch `step` are
epoch `step // steps_per_epoch`'s permutation drawn from (seed, epoch), and example j's
augmentation draws from (seed, step, j). So batch `step` is a pure function of (seed,
step), the same whatever the number of worker processes or hosts, and a loader's position
is the step it is at: a restarted run asks for `start_step` and gets exactly the next batch.

Parallel decode (`host_batches`): `grain.MapDataset.range(start, stop).map(...)`, each
element one step's rows for this process, in step order, computed by `threads` threads
(Pillow releases the GIL while it decodes and resizes, so threads scale without copying
batches between processes) in this process or, with `processes` > 0, in each of that many
grain worker processes (`mp_prefetch`; batches then come back through shared memory).

The host does only the uint8 half of each view (decode, resize, crop and the random draws:
`transforms.train_crop`); the device reflects, subtracts the mean and adds the PCA shift
inside the step (`input_pipeline.normalize`). Selected by `data.pipeline=stream` (`load`).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
from typing import Any, Iterator, Sequence

import numpy as np

from alexnet_jax import datasets
from alexnet_jax import input_pipeline
from alexnet_jax import transforms
from alexnet_jax.errors import BadDataError, ConfigError

PCA_SOURCES = ('imagenet', 'statistics')  # the card's constants, or the training set's


@dataclasses.dataclass(frozen=True)
class Augment:
  """The training view's switches (each can be off for ablations and small images)."""
  prepared_size: int = transforms.PREPARED_SIZE  # 0: use the images as they are
  crop_size: int = transforms.CROP_SIZE  # 0: no random crop
  flip: bool = True
  pca_sigma: float = 0.1  # 0: no PCA lighting
  eigval: tuple[float, ...] = tuple(transforms.IMAGENET_EIGVAL)
  eigvec: tuple[tuple[float, ...], ...] = tuple(map(tuple, transforms.IMAGENET_EIGVEC))
  channels: int = 3


def decode(image: Any, prepared_size: int, channels: int = 3) -> np.ndarray:
  """An encoded image (bytes), a PIL image or a uint8 array as the paper's prepared image
  (prepared_size x prepared_size x channels uint8; prepared_size 0: only the colour mode)."""
  from PIL import Image
  if isinstance(image, (bytes, bytearray, memoryview)):
    pil = Image.open(io.BytesIO(image))
    pil.load()
  elif isinstance(image, Image.Image):
    pil = image
  else:
    array = np.asarray(image, np.uint8)
    pil = Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[2] == 1 else array)
  if prepared_size:
    return transforms.resize_and_centre_crop(pil, prepared_size, channels)
  pil = pil.convert('L' if channels == 1 else 'RGB')
  out = np.asarray(pil, np.uint8)
  return out.reshape(*out.shape[:2], channels)


def _get(source, indices: Sequence[int]) -> list[dict]:
  getitems = getattr(source, '__getitems__', None)
  if getitems is not None:
    return list(getitems(list(indices)))
  return [source[int(i)] for i in indices]


class StreamTrainLoader(input_pipeline.EpochOrder):
  """Deterministic, resumable training batches decoded from a random-access source."""

  def __init__(self, source, global_batch: int, seed: int, augment: Augment = Augment(),
               threads: int = 0, processes: int = 0, max_bad_records: int = 100):
    super().__init__(len(source), global_batch, seed)
    if augment.pca_sigma and augment.channels != 3:
      raise ConfigError('data.pca_sigma needs RGB images; set it to 0 for grey images.')
    if augment.prepared_size and augment.crop_size > augment.prepared_size:
      raise ConfigError(f'data.crop_size={augment.crop_size} is larger than '
                        f'data.prepared_size={augment.prepared_size}.')
    self.source, self.augment = source, augment
    self.threads, self.processes = threads, processes
    self.max_bad_records = max_bad_records
    self.bad_records = 0  # records that failed to decode in this loader's batches so far
    self._eigval = np.asarray(augment.eigval, np.float64)
    self._eigvec = np.asarray(augment.eigvec, np.float64)

  def view(self, record: dict, step: int, j: int):
    """Example j of batch `step`: (uint8 view, window, PCA shift) of `transforms.train_crop`
    of the decoded, prepared image."""
    return self._augment(decode(record['image'], self.augment.prepared_size,
                                self.augment.channels), step, j)

  def _augment(self, image: np.ndarray, step: int, j: int):
    a = self.augment
    return transforms.train_crop(
        image, np.random.default_rng([self.seed, step, j]), crop_size=a.crop_size or None,
        flip=a.flip, pca_sigma=a.pca_sigma, eigval=self._eigval, eigvec=self._eigvec)

  def _decodable(self, index: int, record: dict, step: int, j: int, bad: dict):
    """The view of `record` and its label; a record that fails to decode is noted in `bad`
    ({index: message}, so each bad record counts once per batch) and replaced by the next
    record of the source that decodes (a deterministic choice), with the same augmentation
    draws and that record's label. Only decoding is guarded: an error in the transforms (a
    crop larger than the image) is a config error and propagates."""
    for _ in range(self.num_examples):
      try:
        image = decode(record['image'], self.augment.prepared_size, self.augment.channels)
      except transforms.DECODE_ERRORS as e:
        bad[int(index)] = f'record {index}{datasets.record_name(record)}: {e}'
        index = (index + 1) % self.num_examples
        record = self.source[int(index)]
        continue
      return self._augment(image, step, j), record['label']
    raise BadDataError('No record of the training set can be decoded.')

  def _host_batch(self, step: int, image_rows: slice | None, label_rows: slice | None):
    idx = self.indices(step)
    image_rows = image_rows or slice(0, self.global_batch)
    label_rows = label_rows or image_rows
    bad: dict[int, str] = {}
    pixels = windows = shifts = None
    labels = []
    for row, (i, j, record) in enumerate(zip(idx[image_rows],
                                             range(image_rows.start, image_rows.stop),
                                             _get(self.source, idx[image_rows]))):
      (view, window, shift), label = self._decodable(i, record, step, j, bad)
      if pixels is None:  # views are copied straight into the batch
        n = image_rows.stop - image_rows.start
        pixels = np.empty((n, *view.shape), np.uint8)
        windows, shifts = np.empty((n, 3), np.int32), np.empty((n, view.shape[-1]), np.float32)
      if view.shape != pixels.shape[1:]:
        raise BadDataError(f'An image is prepared as {view.shape}, not the size of the '
                           f'batch\'s other images {pixels.shape[1:]}; set data.prepared_size.')
      pixels[row], windows[row], shifts[row] = view, window, shift
      labels.append(label)
    if label_rows == image_rows:
      labels = np.array(labels, np.int32)
    else:  # labels on other rows than images (a layout where they differ): same choices
      labels = np.array([self._decodable(i, r, step, j, {})[1] for i, j, r in zip(
          idx[label_rows], range(label_rows.start, label_rows.stop),
          _get(self.source, idx[label_rows]))], np.int32)
    return input_pipeline.pixel_batch(pixels, windows, shifts), labels, list(bad.values())

  def _count_bad(self, step: int, bad: list[str]) -> None:
    for message in bad:
      self.bad_records += 1
      logging.warning('Skipped a training record that failed to decode (%d so far) in batch '
                      '%d: %s', self.bad_records, step, message)
    if bad and self.bad_records > self.max_bad_records >= 0:
      raise BadDataError(
          f'{self.bad_records} training records failed to decode, more than '
          f'data.max_bad_records={self.max_bad_records}; the last: {bad[-1]}.')

  def host_batch(self, step: int, image_rows: slice | None = None,
                 label_rows: slice | None = None) -> tuple[dict, np.ndarray]:
    """Rows of batch `step` (all by default): an `input_pipeline.pixel_batch` (uint8 views,
    their windows and PCA shifts) and int32 labels."""
    images, labels, bad = self._host_batch(step, image_rows, label_rows)
    self._count_bad(step, bad)
    return images, labels

  def host_batches(self, start_step: int, num_steps: int, image_rows: slice | None = None,
                   label_rows: slice | None = None) -> Iterator[tuple[dict, np.ndarray]]:
    """host_batch(s) for s in start_step .. start_step + num_steps - 1, in order, whatever
    the threads and processes that compute them (module docstring). Records that fail to
    decode are counted here, in the calling thread, whichever thread or process decoded
    them."""
    if self.threads <= 0 and self.processes <= 0:
      yield from super().host_batches(start_step, num_steps, image_rows, label_rows)
      return
    import grain
    from absl import flags
    if not flags.FLAGS.is_parsed():  # grain reads its absl flags; launch.py parses them
      flags.FLAGS.mark_as_parsed()
    threads = max(self.threads, 1)
    dataset = grain.MapDataset.range(start_step, start_step + num_steps).map(
        _HostBatch(self, image_rows, label_rows)).to_iter_dataset(
            # Batches `threads` ahead: grain's default (500 elements) would hold 500 batches.
            grain.ReadOptions(num_threads=threads, prefetch_buffer_size=threads))
    if self.processes > 0:
      dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.processes))
    for step, (images, labels, bad) in zip(range(start_step, start_step + num_steps),
                                           dataset):
      self._count_bad(step, bad)
      yield images, labels

class _HostBatch:
  """step -> this process's rows of batch `step` (picklable, for grain's worker processes)."""

  def __init__(self, loader: StreamTrainLoader, image_rows, label_rows):
    self.loader, self.image_rows, self.label_rows = loader, image_rows, label_rows

  def __call__(self, step):
    return self.loader._host_batch(int(step), self.image_rows, self.label_rows)  # pylint: disable=protected-access


def eval_views(record: dict, augment: Augment, ten_crop: bool = False):
  """The test views of one record: (uint8 views, windows). The centre crop (crop_size of
  the prepared image; crop_size 0: the whole image), (S, S, C) and (3,), or the 10 crops,
  (10, S, S, C) and (10, 3), views 5-9 to be reflected by `input_pipeline.normalize`."""
  image = decode(record['image'], augment.prepared_size, augment.channels)
  size = augment.crop_size or image.shape[0]
  windows = transforms.ten_crop_windows(image.shape, size)
  if ten_crop:  # views 5-9 are reflected on the device, as the windows say
    return transforms.ten_crop_unreflected(image, size), windows
  return transforms.centre_crop(image, size), windows[4]


def pixel_statistics(source, prepared_size: int = transforms.PREPARED_SIZE,
                     limit: int | None = None, seed: int = 0, channels: int = 3) -> dict:
  """The training set's per-pixel mean image (prepared_size^2 x C, 0-255) and, for RGB, the
  eigenvalues and eigenvectors of its RGB covariance (0-1 scale, as `transforms.
  IMAGENET_EIGVAL/EIGVEC`), over all records or `limit` of them drawn with `seed`. Records
  that fail to decode are skipped and counted ('bad')."""
  n = len(source)
  order = np.arange(n) if limit is None or limit >= n else np.sort(
      np.random.default_rng(seed).choice(n, limit, replace=False))
  total = np.zeros((prepared_size, prepared_size, channels), np.float64)
  moments = np.zeros((channels, channels), np.float64)
  count, bad = 0, 0
  for i in order:
    try:
      image = decode(source[int(i)]['image'], prepared_size, channels).astype(np.float64)
    except transforms.DECODE_ERRORS as e:
      bad += 1
      logging.warning('pixel_statistics: skipped record %d (%s).', i, e)
      continue
    total += image
    pixels = image.reshape(-1, channels)
    moments += pixels.T @ pixels
    count += 1
  if count == 0:
    raise BadDataError('No record could be decoded to compute the pixel statistics.')
  mean = total / count
  out = {'mean': mean.astype(np.float32), 'count': count, 'bad': bad}
  if channels == 3:
    pixels_per_image = prepared_size * prepared_size
    m = mean.reshape(-1, 3).mean(axis=0)  # mean RGB over every pixel
    cov = moments / (count * pixels_per_image) - np.outer(m, m)
    eigval, eigvec = np.linalg.eigh(cov / transforms.PIXEL_SCALE**2)
    order3 = np.argsort(eigval)[::-1]
    eigval, eigvec = eigval[order3], eigvec[:, order3]
    eigvec = eigvec * np.where(eigvec[0] > 0, -1.0, 1.0)  # the card's sign convention
    out.update(eigval=eigval, eigvec=eigvec)
  return out


def eval_batches(source, augment: Augment, global_batch: int, image_sharding, label_sharding,
                 ten_crop: bool = False):
  """The whole eval source in order, as `input_pipeline.eval_batches` yields it: (images,
  labels, weights), the last batch padded with weight-0 copies of the last example. Images
  are `pixel_batch`es of the centre crops (B, S, S, C) or the 10 crops (B, 10, S, S, C) of
  `eval_views`; each process decodes only its rows. An eval record that fails to decode
  stops the evaluation (`BadDataError`): skipping it would change the reported accuracy."""
  n = len(source)
  rows = input_pipeline.process_rows(image_sharding, global_batch)
  label_rows = input_pipeline.process_rows(label_sharding, global_batch)
  for start in range(0, n, global_batch):
    idx = np.minimum(np.arange(start, start + global_batch), n - 1)
    weights = (np.arange(start, start + global_batch) < n).astype(np.float32)
    records = _get(source, idx[rows])
    views, windows = [], []
    for i, record in zip(idx[rows], records):
      try:
        view, window = eval_views(record, augment, ten_crop)
      except transforms.DECODE_ERRORS as e:
        raise BadDataError(f'Evaluation record {i} failed to decode ({e}); the evaluation '
                           'split must be readable in full.') from e
      views.append(view)
      windows.append(window)
    if label_rows != rows:  # a layout whose labels sit on other rows than its images
      records = _get(source, idx[label_rows])
    labels = np.array([r['label'] for r in records], np.int32)
    images = input_pipeline.pixel_batch(np.stack(views), np.stack(windows))
    yield (input_pipeline.to_global(images, image_sharding, global_batch),
           input_pipeline.to_global(labels, label_sharding, global_batch),
           input_pipeline.to_global(weights[label_rows], label_sharding, global_batch))


# ---- the config's edge --------------------------------------------------------------


def _check(config) -> None:
  d = config.data
  if config.dataset == 'synthetic':
    raise ConfigError('dataset=synthetic is generated in memory; set data.pipeline=memory.')
  for name in ('prepared_size', 'crop_size', 'threads', 'processes', 'statistics_examples'):
    if d[name] < 0:
      raise ConfigError(f'data.{name}={d[name]} must not be negative.')
  if d.pca_sigma < 0:
    raise ConfigError(f'data.pca_sigma={d.pca_sigma} must not be negative.')
  if d.crop_pad:
    raise ConfigError(f'data.crop_pad={d.crop_pad} is for data.pipeline=memory; the stream '
                      'pipeline crops data.crop_size windows of the prepared image.')
  if d.mean not in input_pipeline.MEAN_MODES:
    raise ConfigError(f'data.mean={d.mean!r} is not one of '
                      f'{", ".join(input_pipeline.MEAN_MODES)}.')
  if d.pca not in PCA_SOURCES:
    raise ConfigError(f'data.pca={d.pca!r} is not one of {", ".join(PCA_SOURCES)}.')
  size = d.crop_size or d.prepared_size or d.image_size
  if size != d.image_size:
    raise ConfigError(f'The network input data.image_size={d.image_size} must equal the view '
                      f'size {size} (data.crop_size, else data.prepared_size).')
  if d.prepared_size and d.crop_size > d.prepared_size:
    raise ConfigError(f'data.crop_size={d.crop_size} is larger than '
                      f'data.prepared_size={d.prepared_size}.')
  if d.statistics and not os.path.isfile(os.path.expanduser(d.statistics)):
    raise ConfigError(f'data.statistics={d.statistics} is not a file (write one with '
                      'scripts/compute_pixel_statistics.py).')
  needs_statistics = d.mean != 'none' or (d.pca_sigma and d.pca == 'statistics')
  if needs_statistics and not d.prepared_size and not d.statistics:
    raise ConfigError(f'data.mean={d.mean!r} or data.pca=statistics needs images of one size: '
                      'set data.prepared_size, or data.mean=none with data.pca=imagenet.')


def split_source(builder, split: str):
  import tensorflow_datasets as tfds
  if split not in builder.info.splits:
    raise ConfigError(f'{builder.name} has no split {split!r}; it has '
                      f'{", ".join(sorted(builder.info.splits))} (data.train_split, '
                      'data.eval_split).')
  if builder.info.file_format.value != 'array_record':
    raise ConfigError(f'{builder.name} in {builder.data_dir} is stored as '
                      f'{builder.info.file_format.value}, which needs TensorFlow to read; '
                      f'rebuild it with `tfds build {builder.name} --file_format=array_record`.')
  return builder.as_data_source(split, decoders={'image': tfds.decode.SkipDecoding()})


def _statistics(config, source) -> dict:
  """The training set's pixel statistics: from data.statistics, else computed over
  data.statistics_examples records drawn with the seed (the same on every process and on
  every restart, so a resumed run subtracts the same mean)."""
  d = config.data
  if d.statistics:
    with np.load(os.path.expanduser(d.statistics)) as f:
      stats = {k: f[k] for k in f.files}
    want = (d.prepared_size, d.prepared_size, d.channels)
    if d.mean == 'pixel' and d.prepared_size and stats['mean'].shape != want:
      raise ConfigError(f'data.statistics={d.statistics} has a mean image of shape '
                        f'{stats["mean"].shape}, not {want} (data.prepared_size).')
    return stats
  limit = d.statistics_examples or None
  logging.info('Computing the training set\'s pixel statistics over %d images.',
               min(limit or len(source), len(source)))
  return pixel_statistics(source, d.prepared_size, limit, config.seed, d.channels)


def training_builder(config):
  """The prepared tfds builder the stream pipeline reads: the dataset's, or with
  data.prepare_once its images stored once at data.prepared_size (as the paper did)."""
  _check(config)
  d = config.data

  def make():
    builder = datasets.builder_for(config.dataset, d.data_dir, d.manual_dir, d.folder)
    if d.prepare_once and d.prepared_size:
      builder = datasets.prepare_resized(builder, d.data_dir, d.prepared_size,
                                         max_bad_records=d.max_bad_records)
    return builder

  return datasets.process_zero_first(make)


def load(config) -> input_pipeline.Data:
  """The stream pipeline of `config` (`input_pipeline.load` with data.pipeline=stream)."""
  d = config.data
  builder = training_builder(config)
  train_source = split_source(builder, d.train_split)
  eval_source = split_source(builder, d.eval_split)
  stats = None
  if d.mean != 'none' or (d.pca_sigma and d.pca == 'statistics'):
    stats = _statistics(config, train_source)
  mean = np.zeros((d.channels,), np.float32)
  if d.mean == 'pixel':
    mean = np.asarray(stats['mean'], np.float32)
  elif d.mean == 'channel':
    mean = np.asarray(stats['mean'], np.float32).reshape(-1, d.channels).mean(axis=0)
  eigval, eigvec = transforms.IMAGENET_EIGVAL, transforms.IMAGENET_EIGVEC
  if d.pca == 'statistics' and d.pca_sigma:
    eigval, eigvec = stats['eigval'], stats['eigvec']
  augment = Augment(prepared_size=d.prepared_size, crop_size=d.crop_size, flip=d.flip,
                    pca_sigma=d.pca_sigma, eigval=tuple(np.asarray(eigval, float)),
                    eigvec=tuple(map(tuple, np.asarray(eigvec, float))), channels=d.channels)
  loader = StreamTrainLoader(train_source, config.batch_size, config.seed, augment,
                             d.threads, d.processes, d.max_bad_records)
  names = tuple(datasets.class_names(builder))
  info = input_pipeline.DataInfo(num_classes=len(names), image_size=d.image_size,
                                 channels=d.channels, num_train=len(train_source),
                                 num_eval=len(eval_source), class_names=names)

  def test_view(image):
    prepared = decode(image, d.prepared_size, d.channels)
    return eval_views({'image': prepared}, dataclasses.replace(augment, prepared_size=0))

  return input_pipeline.Data(
      info=info, mean=mean, loader=loader,
      eval_batches=lambda batch, images, labels, ten_crop=False: eval_batches(
          eval_source, augment, batch, images, labels, ten_crop),
      test_view=test_view)
