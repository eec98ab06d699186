"""The stream pipeline from a config: the prepared dataset it reads (`training_builder`),
the training set's statistics, and how it reads (`reading`: where images are decoded and
how many threads and processes decode them, from what the machine has); `load(config)`.

Defaults that follow the machine (data.threads=-1, data.processes=-1, data.decode_on=auto):

* the cores are those this process may run on (`os.sched_getaffinity`: a SLURM or cgroup
  allotment, not the host's count);
* fewer than 2 x `THREADS_PER_PROCESS` cores: one decode thread a core in this process, no
  worker processes (measured on 2 quiet cores, `benchmarks.input_pipeline`, q95 turbo: two
  threads decode 1.92x one thread, two worker processes 1.65x: a worker's batches cross to
  this process in shared memory, which costs more than the GIL does there);
* more cores: `cores // THREADS_PER_PROCESS` grain worker processes of
  `THREADS_PER_PROCESS` threads each. One process's threads stop scaling where the GIL's
  share of an image (about 4%, from the 1.92x of two threads) caps them: Amdahl's law gives
  1 process x 16 threads 9.8x one thread, 4 processes x 4 threads 14.2x less the transfer
  (0.86, from 1.65 / 1.92) = 12.2x: a projection, to be measured on such a host with
  `benchmarks.input_pipeline --workers=t16,p2x8,p4x4,p8x2,p16`;
* the device decode (nvImageCodec) where the devices are GPUs and it is installed, for JPEG
  images stored once (the device path then needs no worker process); else the host.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import logging
import os

import numpy as np

from alexnet_jax.data import batching
from alexnet_jax.data import provenance
from alexnet_jax.data import sources
from alexnet_jax.data import stream
from alexnet_jax.data import transforms
from alexnet_jax.data.prepare import imagenet_prep
from alexnet_jax.data.prepare import shard_writer
from alexnet_jax.errors import ConfigError

AUTO = -1
THREADS_PER_PROCESS = 4


@dataclasses.dataclass(frozen=True)
class Reading:
  """How the training batches are read (`reading`)."""
  device_decoder: str | None  # what decodes them on the devices; None: the host does
  host_decoder: str  # what decodes on the host (training on the host, evaluation, statistics)
  threads: int
  processes: int
  why: str  # the startup line


def loader_workers(cores: int, threads: int = AUTO, processes: int = AUTO,
                   device: bool = False) -> tuple[int, int]:
  """(threads, processes) for data.threads and data.processes (-1: from `cores`; module
  docstring). With the device decode, no worker process: the host only reads bytes."""
  if processes == AUTO:  # one worker process would only add the transfer to one GIL
    processes = 0 if device or cores < 2 * THREADS_PER_PROCESS else (
        cores // THREADS_PER_PROCESS)
  if threads == AUTO:
    threads = max(1, cores // processes) if processes else max(1, cores)
  return threads, processes


def stored_raw(d) -> bool:
  """Whether `config.data` reads the prepared images stored undecoded."""
  return d.storage == 'raw' and bool(d.prepare_once and d.prepared_size)


def _device_decode(d, backend: str, nvimgcodec: bool) -> tuple[str | None, str]:
  """(the device decoder or None, why) for data.decode_on."""
  if d.decode_on == 'device':
    return d.decoder, 'data.decode_on=device'
  if d.decode_on == 'host':
    return None, 'data.decode_on=host'
  stored = d.prepare_once and d.prepared_size and d.crop_size and d.storage == 'jpeg'
  reason = ('the devices are not GPUs' if backend != 'gpu' else
            'nvImageCodec is not installed (pip install nvidia-nvimgcodec-cu13)'
            if not nvimgcodec else
            'the images are not stored once as JPEG (data.prepare_once, data.prepared_size, '
            'data.crop_size, data.storage=jpeg)' if not stored else
            'data.processes > 0 decodes in worker processes' if d.processes > 0 else None)
  if reason:
    return None, f'data.decode_on=auto: {reason}'
  return 'nvimgcodec', 'data.decode_on=auto: GPUs and nvImageCodec are present'


def reading(d, backend: str | None = None, nvimgcodec: bool | None = None,
            cores: int | None = None) -> Reading:
  """How `config.data` `d` reads on this machine (module docstring); the arguments stand
  for the machine (tests pass them)."""
  if backend is None:
    import jax
    backend = jax.default_backend()
  if nvimgcodec is None:
    nvimgcodec = (importlib.util.find_spec('nvidia') is not None
                  and importlib.util.find_spec('nvidia.nvimgcodec') is not None)
  cores = imagenet_prep.usable_cores() if cores is None else cores
  device, why = _device_decode(d, backend, nvimgcodec)
  threads, processes = loader_workers(cores, d.threads, d.processes, device is not None)
  if stored_raw(d):
    host = 'raw'
  elif device is not None and d.decode_on == 'device':
    from alexnet_jax.data import device_decode
    host = device_decode.host_decoder(d.decoder)
  else:
    host = d.decoder
  place = f'on the devices with {device}' if device else f'on the host with {host}'
  workers = (f'{threads} threads in each of {processes} worker processes' if processes
             else f'{threads} threads')
  return Reading(device, host, threads, processes,
                 f'Decoding {place} ({why}), {workers} ({cores} usable cores; data.threads='
                 f'{d.threads}, data.processes={d.processes}).')


def decoder_of(d) -> str:
  """What decodes the images on the host for `config.data` `d` (the statistics)."""
  return reading(d, backend='cpu', nvimgcodec=False, cores=1).host_decoder


def needs_statistics(d) -> bool:
  """Whether `config.data` subtracts a mean, divides by a standard deviation or takes the
  PCA from the training set."""
  return (d.mean not in ('none', 'given') or d.std not in ('none', 'given') or
          bool(d.pca_sigma and d.pca == 'statistics'))


def _statistics(config, source, builder, decoder: str) -> dict:
  """The training set's pixel statistics: from data.statistics, else the full training
  set's stored with the images (the ImageNet preparation computes them), else computed over
  data.statistics_examples records drawn with the seed (the same on every process and on
  every restart, so a resumed run subtracts the same mean)."""
  d = config.data
  stored = os.path.join(os.fspath(builder.data_dir), imagenet_prep.STATISTICS)
  path = os.path.expanduser(d.statistics) if d.statistics else stored
  if d.statistics or os.path.isfile(stored):
    with np.load(path) as f:
      stats = {k: f[k] for k in f.files}
    if not d.statistics:
      logging.info('Using the pixel statistics of all %s training images, stored with them '
                   '(%s).', f'{int(stats["count"]):,}', path)
    want = (d.prepared_size, d.prepared_size, d.channels)
    if d.mean == 'pixel' and d.prepared_size and stats['mean'].shape != want:
      raise ConfigError(f'data.statistics={path} has a mean image of shape '
                        f'{stats["mean"].shape}, not {want} (data.prepared_size).')
    if d.std != 'none' and 'mean_square' not in stats:
      raise ConfigError(f'data.statistics={path} has no mean_square for data.std='
                        f'{d.std} (an older file); write it again with '
                        '`python -m scripts.compute_pixel_statistics`.')
    return stats
  limit = d.statistics_examples or None
  logging.info('Computing the training set\'s pixel statistics over %d images.',
               min(limit or len(source), len(source)))
  return stream.pixel_statistics(source, d.prepared_size, limit, config.seed, d.channels,
                                 decoder)


def training_builder(config):
  """The prepared tfds builder the stream pipeline reads: the dataset's, or with
  data.prepare_once its images stored once at data.prepared_size (as the paper did;
  ImageNet straight from its tars, `imagenet_prep`)."""
  d = config.data
  quality = 0 if stored_raw(d) else d.storage_quality

  def make():
    if config.dataset == 'imagenet2012' and d.prepare_once and d.prepared_size:
      decoder = 'turbo' if importlib.util.find_spec('simplejpeg') else 'pillow'
      settings = shard_writer.Settings(d.prepared_size, quality, d.prepared_geometry,
                                       num_classes=1000, decoder=decoder)
      return imagenet_prep.store(d.data_dir, d.manual_dir, settings, d.prepare_processes,
                                 d.max_bad_records, d.keep_originals,
                                 config.allow_no_file_locks)
    builder = sources.builder_for(config.dataset, d.data_dir, d.manual_dir, d.folder,
                                  (d.train_split, d.eval_split), config.allow_no_file_locks)
    if d.prepare_once and d.prepared_size:
      builder = sources.prepare_resized(builder, d.data_dir, d.prepared_size, quality,
                                        d.max_bad_records, d.train_split,
                                        config.allow_no_file_locks, d.prepared_geometry)
    return builder

  return sources.process_zero_first(make)


def load(config) -> batching.Data:
  """The stream pipeline of `config` (`input_pipeline.load` with data.pipeline=stream)."""
  d = config.data
  builder = training_builder(config)
  how = reading(d)
  logging.info('%s', how.why)
  train_source = sources.split_source(builder, d.train_split)
  eval_source = sources.split_source(builder, d.eval_split)
  stats = (_statistics(config, train_source, builder, how.host_decoder)
           if needs_statistics(d) else None)
  mean, scale = transforms.mean_and_scale(d, stats)
  eigval, eigvec = transforms.IMAGENET_EIGVAL, transforms.IMAGENET_EIGVEC
  if d.pca == 'statistics' and d.pca_sigma:
    eigval, eigvec = stats['eigval'], stats['eigvec']
  augment = stream.Augment(prepared_size=d.prepared_size, crop_size=d.crop_size, flip=d.flip,
                           pca_sigma=d.pca_sigma, eigval=tuple(np.asarray(eigval, float)),
                           eigvec=tuple(map(tuple, np.asarray(eigvec, float))),
                           channels=d.channels, decoder=how.host_decoder)
  device_decoder = None
  if how.device_decoder is not None:
    from alexnet_jax.data import device_decode
    device_decoder = device_decode.make(how.device_decoder, d.prepared_size, d.channels)
  names = sources.class_names(builder)
  info = batching.DataInfo(num_classes=len(names), image_size=d.image_size,
                           channels=d.channels, num_train=len(train_source),
                           num_eval=len(eval_source), class_names=names,
                           source=provenance.describe(config, builder))
  # Evaluation cuts its views on every core too (they are not the training's processes).
  eval_threads = max(how.threads * max(how.processes, 1), 1)
  return batching.Data(
      info=info, mean=mean, scale=scale,
      loader=stream.StreamLoader(train_source, config.batch_size, config.seed, augment,
                                 how.threads, how.processes, d.max_bad_records,
                                 device_decoder),
      eval_read=stream.eval_reader(eval_source, augment, eval_threads),
      train_read=functools.partial(stream.eval_reader(train_source, augment), ten_crop=False),
      eval_prefetch=d.prefetch)
