"""The stream loader: datasets of encoded images of any size (ImageNet, image folders),
decoded every step in parallel, as the paper prepared them.

Images are read one by one from a random-access source (a tfds data source with
`SkipDecoding`, or any sequence of {'image': encoded bytes or uint8 array, 'label': int}),
decoded and prepared by `data.decoder` (`decoders.decode`: shorter side 256, central
256x256) and cut into training views (`transforms.train_draws`, `transforms.crop`).
Nothing here needs TensorFlow.

Parallel decode (`host_batches`): `grain.MapDataset.range(start, stop).map(...)`, each
element one step's rows for this process, in step order, computed by `threads` threads
(Pillow and simplejpeg release the GIL while they decode) in this process or, with
`processes` > 0, in each of that many grain worker processes (`mp_prefetch`; each worker
writes its batches straight into shared memory, which the main process maps without a
copy). Batch `step` is the same whatever the threads, processes
or hosts (`batching.EpochOrder`).

A training record that fails to decode is replaced by the next record of the source that
decodes (a deterministic choice), counted and logged with its file name; past
`max_bad_records` the run stops. An eval record that fails stops the evaluation, since
skipping it would change the reported accuracy.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import os
from typing import Iterator
from typing import Sequence

import numpy as np

from alexnet_jax.data import batching
from alexnet_jax.data import decoders
from alexnet_jax.data import provenance
from alexnet_jax.data import sources
from alexnet_jax.data import transforms
from alexnet_jax.errors import BadDataError
from alexnet_jax.errors import ConfigError
from alexnet_jax.model import pixels

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
  decoder: str = 'pillow'  # decoders.DECODERS: data.decoder, or 'raw' for data.storage=raw

  def prepare(self, record: dict) -> np.ndarray:
    return decoders.decode(record['image'], self.prepared_size, self.channels, self.decoder)


def _get(source, indices: Sequence[int]) -> list[dict]:
  getitems = getattr(source, '__getitems__', None)
  if getitems is not None:
    return list(getitems(list(indices)))
  return [source[int(i)] for i in indices]


def _shared_empty(shape, dtype) -> np.ndarray:
  """An uninitialised array in shared memory, which grain hands to the main process as
  it is (a batch built in private memory would be copied there: 5 ms a 9.6 MB batch)."""
  from grain._src.python.ipc import shared_memory_array  # grain is pinned (requirements.txt)
  return shared_memory_array.SharedMemoryArray(shape, dtype)


class StreamLoader(batching.EpochOrder):
  """Deterministic, resumable training batches decoded from a random-access source."""

  allocate = staticmethod(np.empty)  # the batch's pixels: _shared_empty in worker processes

  def __init__(self, source, global_batch: int, seed: int, augment: Augment = Augment(),
               threads: int = 0, processes: int = 0, max_bad_records: int = 100,
               device_decoder=None):
    """`device_decoder` (`device_decode.make`): batches carry the stored bytes, which the
    devices decode (data.decode_on=device); None: the host decodes."""
    super().__init__(len(source), global_batch, seed)
    self.device_decoder = device_decoder
    self.source, self.augment = source, augment
    self.threads, self.processes = threads, processes
    self.max_bad_records = max_bad_records
    self.bad_records = 0  # records that failed to decode in this loader's batches so far
    self._eigval = np.asarray(augment.eigval, np.float64)
    self._eigvec = np.asarray(augment.eigvec, np.float64)

  def draws(self, step: int) -> transforms.TrainDraws:
    """The random part of batch `step`'s views, the whole global batch's from one generator
    seeded (seed, step): row j's are the same whichever host, thread or process cuts it."""
    a = self.augment
    return transforms.train_draws(np.random.default_rng([self.seed, step]), self.global_batch,
                                  a.channels, a.pca_sigma, self._eigval, self._eigvec)

  def windows(self, draws: transforms.TrainDraws, shape) -> np.ndarray:
    return draws.windows(shape, self.augment.crop_size or None, self.augment.flip)

  def view(self, image: np.ndarray, step: int, j: int):
    """Example j of batch `step` of a prepared image: (uint8 crop, unreflected; window;
    PCA shift). `read` cuts a batch's views the same way, drawing once."""
    draws = self.draws(step)
    window = self.windows(draws, image.shape)[j]
    return self._cut(image, window), window, draws.shift[j]

  def _cut(self, image: np.ndarray, window) -> np.ndarray:
    size = self.augment.crop_size
    return transforms.crop(image, int(window[0]), int(window[1]), size) if size else image

  def _decodable(self, index: int, record: dict, bad: dict):
    """The prepared image of `record` and its label; a record that fails to decode is noted
    in `bad` ({index: message}, so each bad record counts once per batch) and replaced by
    the next record of the source that decodes. Only decoding is guarded: an error in the
    transforms (a crop larger than the image) is a config error and propagates."""
    for _ in range(self.num_examples):
      try:
        return self.augment.prepare(record), record['label']
      except transforms.DECODE_ERRORS as e:
        bad[int(index)] = f'record {index}{transforms.record_name(record)}: {e}'
        index = (index + 1) % self.num_examples
        record = self.source[int(index)]
    raise BadDataError('No record of the training set can be decoded.')

  def read_encoded(self, step: int, rows: slice):
    """Rows `rows` of batch `step` as the stored bytes with the views' windows and shifts
    (drawn as `read` draws them), for the device to decode."""
    idx = self.indices(step)[rows]
    a = self.augment
    shape = (a.prepared_size, a.prepared_size, a.channels)
    encoded = np.empty((len(idx),), object)
    labels = np.empty((len(idx),), np.int32)
    for row, record in enumerate(_get(self.source, idx)):
      encoded[row], labels[row] = record['image'], record['label']
    draws = self.draws(step)
    return {'encoded': encoded, 'window': self.windows(draws, shape)[rows],
            'shift': draws.shift[rows]}, labels, []

  def place_images(self, images: dict, sharding, rows: slice):
    if self.device_decoder is None:
      return super().place_images(images, sharding, rows)
    from alexnet_jax.data import device_decode
    return {'prepared': device_decode.place(images['encoded'], self.device_decoder, sharding,
                                            self.global_batch, rows),
            **{k: batching.to_global(images[k], sharding, self.global_batch)
               for k in ('window', 'shift')}}

  def read(self, step: int, rows: slice):
    if self.device_decoder is not None:
      return self.read_encoded(step, rows)
    idx = self.indices(step)[rows]
    bad: dict[int, str] = {}
    n = rows.stop - rows.start
    draws = self.draws(step)
    out = labels = windows = None
    try:
      for row, (i, record) in enumerate(zip(idx, _get(self.source, idx))):
        image, label = self._decodable(i, record, bad)
        if out is None:  # the first image sets the windows; views go straight into the batch
          windows = self.windows(draws, image.shape)[rows]
          shape = self._cut(image, windows[0]).shape
          out = pixels.pixel_batch(self.allocate((n, *shape), np.uint8), windows,
                                   draws.shift[rows])
          labels = np.empty((n,), np.int32)
          first = image.shape
        if image.shape != first:
          raise BadDataError(f'An image is prepared as {image.shape}, not the size of the '
                             f'batch\'s other images {first}; set data.prepared_size.')
        out['pixels'][row] = self._cut(image, windows[row])
        labels[row] = label
    except BaseException:
      if out is not None and hasattr(out['pixels'], 'unlink_on_del'):
        out['pixels'].unlink_on_del()  # a failed batch leaves nothing in /dev/shm
      raise
    return out, labels, list(bad.values())

  def report(self, step: int, problems: list[str]) -> None:
    for message in problems:
      self.bad_records += 1
      logging.warning('Skipped a training record that failed to decode (%d so far) in batch '
                      '%d: %s', self.bad_records, step, message)
    if problems and self.bad_records > self.max_bad_records >= 0:
      raise BadDataError(
          f'{self.bad_records} training records failed to decode, more than '
          f'data.max_bad_records={self.max_bad_records}; the last: {problems[-1]}.')

  def host_batches(self, start_step: int, num_steps: int, image_rows: slice | None = None,
                   label_rows: slice | None = None) -> Iterator[tuple[dict, np.ndarray]]:
    """host_batch(s) for s in start_step .. start_step + num_steps - 1, in order, whatever
    the threads and processes that compute them; problems are reported here, in the calling
    thread, whichever thread or process decoded them."""
    if self.threads <= 0 and self.processes <= 0:
      yield from super().host_batches(start_step, num_steps, image_rows, label_rows)
      return
    import grain
    threads = max(self.threads, 1)
    reader = self
    if self.processes > 0:
      reader = copy.copy(self)
      reader.allocate = _shared_empty
    dataset = grain.MapDataset.range(start_step, start_step + num_steps).map(
        _ReadRows(reader, image_rows, label_rows)).to_iter_dataset(
            # Batches `threads` ahead: grain's default (500 elements) would hold 500 batches.
            grain.ReadOptions(num_threads=threads, prefetch_buffer_size=threads))
    if self.processes > 0:
      from absl import flags
      if not flags.FLAGS.is_parsed():
        raise ConfigError('data.processes > 0 runs grain worker processes, which read absl '
                          'flags: parse them first (launch.py does).')
      dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.processes))
    for step, (images, labels, problems) in zip(range(start_step, start_step + num_steps),
                                                dataset):
      self.report(step, problems)
      yield images, labels


class _ReadRows:
  """step -> this process's rows of batch `step` (picklable, for grain's worker processes)."""

  def __init__(self, loader: StreamLoader, image_rows, label_rows):
    self.loader, self.image_rows, self.label_rows = loader, image_rows, label_rows

  def __call__(self, step):
    return self.loader.read_rows(int(step), self.image_rows, self.label_rows)


def eval_views(record: dict, augment: Augment, ten_crop: bool = False):
  """The test views of one record: (uint8 views, windows). The centre crop (crop_size of
  the prepared image; crop_size 0: the whole image), (S, S, C) and (3,), or the 10 crops,
  (10, S, S, C) and (10, 3), views 5-9 to be reflected on the device."""
  image = augment.prepare(record)
  size = augment.crop_size or image.shape[0]
  windows = transforms.ten_crop_windows(image.shape, size)
  if ten_crop:
    return transforms.ten_crop_unreflected(image, size), windows
  return transforms.centre_crop(image, size), windows[4]


def eval_reader(source, augment: Augment):
  """(indices, ten_crop) -> (pixel_batch, labels) of eval records; a record that fails to
  decode stops the evaluation, naming it."""

  def read(indices, ten_crop: bool):
    views, windows, labels = [], [], []
    for i, record in zip(indices, _get(source, indices)):
      try:
        view, window = eval_views(record, augment, ten_crop)
      except transforms.DECODE_ERRORS as e:
        raise BadDataError(f'Evaluation record {i}{transforms.record_name(record)} failed to '
                           f'decode ({e}); the evaluation split must be readable in full.') from e
      views.append(view)
      windows.append(window)
      labels.append(record['label'])
    return pixels.pixel_batch(np.stack(views), np.stack(windows)), np.array(labels, np.int32)

  return read


def pixel_statistics(source, prepared_size: int = transforms.PREPARED_SIZE,
                     limit: int | None = None, seed: int = 0, channels: int = 3,
                     decoder: str = 'pillow') -> dict:
  """`transforms.PixelStatistics.as_dict()` of the prepared training images, over all
  records or `limit` of them drawn with `seed`, plus 'bad': records that failed to decode
  and were skipped."""
  n = len(source)
  order = np.arange(n) if limit is None or limit >= n else np.sort(
      np.random.default_rng(seed).choice(n, limit, replace=False))
  statistics, bad = transforms.PixelStatistics(), 0
  for i in order:
    try:
      statistics.add(decoders.decode(source[int(i)]['image'], prepared_size, channels,
                                     decoder))
    except transforms.DECODE_ERRORS as e:
      bad += 1
      logging.warning('pixel_statistics: skipped record %d (%s).', i, e)
  if statistics.count == 0:
    raise BadDataError('No record could be decoded to compute the pixel statistics.')
  return dict(statistics.as_dict(), bad=bad)


# ---- the config's edge --------------------------------------------------------------


def needs_statistics(d) -> bool:
  """Whether `config.data` subtracts a mean, divides by a standard deviation or takes the
  PCA from the training set."""
  return (d.mean not in ('none', 'given') or d.std not in ('none', 'given') or
          bool(d.pca_sigma and d.pca == 'statistics'))


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
    if d.std != 'none' and 'mean_square' not in stats:
      raise ConfigError(f'data.statistics={d.statistics} has no mean_square for data.std='
                        f'{d.std} (an older file); write it again with '
                        '`python -m scripts.compute_pixel_statistics`.')
    return stats
  limit = d.statistics_examples or None
  logging.info('Computing the training set\'s pixel statistics over %d images.',
               min(limit or len(source), len(source)))
  return pixel_statistics(source, d.prepared_size, limit, config.seed, d.channels,
                          decoder_of(d))


def stored_raw(d) -> bool:
  """Whether `config.data` reads the prepared images stored undecoded."""
  return d.storage == 'raw' and bool(d.prepare_once and d.prepared_size)


def decoder_of(d) -> str:
  """What decodes the images on the host: training (data.decode_on=host), evaluation and
  the pixel statistics."""
  if stored_raw(d):
    return 'raw'
  if d.decode_on == 'device':
    from alexnet_jax.data import device_decode
    return device_decode.host_decoder(d.decoder)
  return d.decoder


def device_decoder_of(d):
  """The device decoder of data.decode_on=device, else None."""
  if d.decode_on != 'device':
    return None
  from alexnet_jax.data import device_decode
  return device_decode.make(d.decoder, d.prepared_size, d.channels)


def training_builder(config):
  """The prepared tfds builder the stream pipeline reads: the dataset's, or with
  data.prepare_once its images stored once at data.prepared_size (as the paper did)."""
  d = config.data

  def make():
    builder = sources.builder_for(config.dataset, d.data_dir, d.manual_dir, d.folder,
                                  (d.train_split, d.eval_split), config.allow_no_file_locks)
    if d.prepare_once and d.prepared_size:
      builder = sources.prepare_resized(builder, d.data_dir, d.prepared_size,
                                        quality=0 if stored_raw(d) else d.storage_quality,
                                        max_bad_records=d.max_bad_records,
                                        train_split=d.train_split,
                                        allow_no_locks=config.allow_no_file_locks)
    return builder

  return sources.process_zero_first(make)


def load(config) -> batching.Data:
  """The stream pipeline of `config` (`input_pipeline.load` with data.pipeline=stream)."""
  d = config.data
  builder = training_builder(config)
  train_source = sources.split_source(builder, d.train_split)
  eval_source = sources.split_source(builder, d.eval_split)
  stats = _statistics(config, train_source) if needs_statistics(d) else None
  mean, scale = transforms.mean_and_scale(d, stats)
  eigval, eigvec = transforms.IMAGENET_EIGVAL, transforms.IMAGENET_EIGVEC
  if d.pca == 'statistics' and d.pca_sigma:
    eigval, eigvec = stats['eigval'], stats['eigvec']
  augment = Augment(prepared_size=d.prepared_size, crop_size=d.crop_size, flip=d.flip,
                    pca_sigma=d.pca_sigma, eigval=tuple(np.asarray(eigval, float)),
                    eigvec=tuple(map(tuple, np.asarray(eigvec, float))), channels=d.channels,
                    decoder=decoder_of(d))
  names = sources.class_names(builder)
  info = batching.DataInfo(num_classes=len(names), image_size=d.image_size,
                           channels=d.channels, num_train=len(train_source),
                           num_eval=len(eval_source), class_names=names,
                           source=provenance.describe(config, builder))
  return batching.Data(
      info=info, mean=mean, scale=scale,
      loader=StreamLoader(train_source, config.batch_size, config.seed, augment,
                          d.threads, d.processes, d.max_bad_records, device_decoder_of(d)),
      eval_read=eval_reader(eval_source, augment),
      train_read=functools.partial(eval_reader(train_source, augment), ten_crop=False))
