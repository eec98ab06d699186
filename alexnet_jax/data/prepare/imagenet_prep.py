"""ImageNet from its two tars to the store that training reads, in one parallel, resumable
pass with progress: no TensorFlow, no full-size copy, on every core.

`store(...)` is the imagenet2012 dataset of `data.prepare_once`: the `builders.
PreparedImages` store of tfds's imagenet2012 (`<data_dir>/prepared_images/imagenet2012_
5_1_0_256_q95/1.1.0`, a tfds array_record dataset with its dataset_info.json), which every
reader of a prepared dataset reads as before. Built from the tars (`build`):

  1. index: the tars' headers (the 1,000 class tars in parallel): each image's name, label,
     byte offset and size, in tfds's order (`imagenet_plan`), cached for a rerun;
  2. shards: N worker processes (`data.prepare_processes`, default the usable cores) each
     write whole shards (`shard_writer`): read by offset, decode, size (`geometry`),
     encode, write under a temporary name, rename when complete; the main process only
     hands out shards and records the finished ones in a manifest;
  3. statistics: the shards' pixel sums added up into the full training set's mean image
     and PCA (`pixel_statistics.npz` in the store, which the stream loader then uses);
  4. the dataset_info.json and features.json tfds writes, and one rename of the directory.

The work happens in `<store>.incomplete/`: a rerun skips the shards its manifest lists and
redoes any other. SIGTERM or SIGINT finish the shards in flight and exit in one line (75);
a SIGKILL loses at most the shards in flight. The disk's room is checked against an
estimate before anything is written, and a disk that fills midway ends it in one sentence
(`disk`). Two jobs on one data_dir take turns through the store's lock (`storage.ready`).
When it is done, only the store (and its lock file) is left in data_dir.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import json
import logging
import multiprocessing
import os
import shutil

import numpy as np

from alexnet_jax.data import transforms
from alexnet_jax.data.prepare import disk
from alexnet_jax.data.prepare import imagenet_plan
from alexnet_jax.data.prepare import progress as progress_lib
from alexnet_jax.data.prepare import shard_writer
from alexnet_jax.data.prepare import stopping
from alexnet_jax.data.prepare import storage
from alexnet_jax.errors import BadDataError
from alexnet_jax.errors import Stopped
from alexnet_jax.errors import UserError

WORK_SUFFIX = '.incomplete'
SPLITS = ('train', 'validation')
IMAGENET_TARS = dict(zip(SPLITS, ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')))
DISK_MARGIN = 1.1  # JPEG sizes vary: 10% over the sampled mean
STATISTICS = 'pixel_statistics.npz'  # in the store: the full training set's mean and PCA


class WorkerLostError(UserError):
  """A worker process died (killed, out of memory)."""


def usable_cores() -> int:
  """The cores this process may run on (its CPU affinity: a SLURM or cgroup allotment)."""
  affinity = getattr(os, 'sched_getaffinity', None)  # Linux; elsewhere every core
  return len(affinity(0)) if affinity else os.cpu_count() or 1


def find_tars(manual_dir: str | None) -> dict[str, str] | None:
  where = os.path.expanduser(manual_dir) if manual_dir else None
  tars = {s: os.path.join(where, n) for s, n in IMAGENET_TARS.items()} if where else None
  return tars if tars and all(os.path.isfile(p) for p in tars.values()) else None


class Manifest:
  """The finished shards (records, bytes, left-out images), replaced atomically after each."""

  def __init__(self, work: str, fingerprint: dict):
    self.path, self.fingerprint = os.path.join(work, 'manifest.json'), fingerprint
    self.shards: dict[str, dict] = {}
    if os.path.isfile(self.path):
      with open(self.path, encoding='utf-8') as f:
        saved = json.load(f)
      if saved['fingerprint'] == fingerprint:
        self.shards = saved['shards']
      else:
        logging.warning('The tars or the storage settings changed since %s was begun: '
                        'storing every shard again.', work)

  @staticmethod
  def key(task: shard_writer.Task) -> str:
    return f'{task.split}-{task.index:05d}'

  def done(self, task: shard_writer.Task) -> bool:
    return self.key(task) in self.shards and os.path.isfile(task.path) and (
        task.statistics is None or os.path.isfile(task.statistics))

  def add(self, task: shard_writer.Task, result: shard_writer.Result) -> None:
    self.shards[self.key(task)] = {'records': result.records, 'bytes': result.bytes,
                                   'bad': list(result.bad)}
    partial = self.path + shard_writer.PARTIAL
    with open(partial, 'w', encoding='utf-8') as f:
      json.dump({'fingerprint': self.fingerprint, 'shards': self.shards}, f)
    os.replace(partial, self.path)

  def bad(self) -> list[str]:
    return [m for s in self.shards.values() for m in s['bad']]

  def per_image(self) -> float | None:
    """Bytes a stored image, measured on the finished shards."""
    n = sum(s['records'] for s in self.shards.values())
    return sum(s['bytes'] for s in self.shards.values()) / n if n else None


def store(data_dir, manual_dir, settings: shard_writer.Settings, processes: int = -1,
          max_bad_records: int = 100, keep_originals: bool = False,
          allow_no_locks: bool = False, **build_kwargs):
  """The prepared imagenet2012 store (module docstring): read if prepared, else built from
  the tars in `manual_dir`, or, without them, from a tfds imagenet2012 prepared in
  `data_dir`. `keep_originals` also keeps tfds's full-size imagenet2012 (146 GB)."""
  import tensorflow_datasets as tfds

  from alexnet_jax.data import sources
  from alexnet_jax.data.prepare import builders
  official = sources._construct(tfds.builder, 'imagenet2012', data_dir=data_dir)
  make = lambda: sources._construct(
      builders.PreparedImages, source=official, size=settings.size, quality=settings.quality,
      geometry=settings.geometry, data_dir=data_dir, file_format='array_record',
      max_bad_records=max_bad_records, train_split='train')
  tars = find_tars(manual_dir)
  if keep_originals or (not tars and not make().is_prepared()):
    official = sources.prepare_imagenet2012(data_dir, manual_dir, allow_no_locks)
  if not tars:  # the store as it is, or built from the full-size copy
    return sources.prepare_resized(official, data_dir, settings.size, settings.quality,
                                   max_bad_records, 'train', allow_no_locks, settings.geometry)
  what = f'imagenet2012 at {settings.size}x{settings.size}'
  build = functools.partial(_build, tars=tars, settings=settings, what=what,
                            processes=processes if processes > 0 else usable_cores(),
                            max_bad_records=max_bad_records, **build_kwargs)
  return storage.ready(make, what, allow_no_locks, build=build)


@contextlib.contextmanager
def _pool(n: int, settings: shard_writer.Settings, setup):
  """N worker processes, started fresh (spawn: this process may run JAX's threads, which a
  fork would copy mid-flight). A second SIGINT leaves without waiting for them: each ends
  after its shard in flight, whose partial file a rerun removes."""
  pool = concurrent.futures.ProcessPoolExecutor(
      n, mp_context=multiprocessing.get_context('spawn'),
      initializer=shard_writer.start_worker, initargs=(settings, setup))
  pool.workers = n
  wait = True
  try:
    yield pool
  except KeyboardInterrupt:
    wait = False
    raise
  finally:
    pool.shutdown(wait=wait, cancel_futures=True)


def _build(builder, tars, settings, what, processes, max_bad_records,
           shard_images=imagenet_plan.SHARD_IMAGES, worker_setup=None) -> None:
  """`storage.ready`'s build of the store `builder` from `tars` (module docstring)."""
  final = os.fspath(builder.data_dir)
  work = final + WORK_SUFFIX
  os.makedirs(work, exist_ok=True)
  for name in os.listdir(work):  # what a killed run was writing
    if shard_writer.PARTIAL in name:
      os.remove(os.path.join(work, name))
  logging.info('Storing %s from %s in %s with %d processes (once; later runs read it from '
               'there).', what, os.path.dirname(tars['train']), final, processes)
  progress = progress_lib.Progress(what)
  fingerprint = {'tars': imagenet_plan.fingerprint(tars), 'shard_images': shard_images,
                 'settings': dataclasses.asdict(settings), 'version': str(builder.version)}
  manifest = Manifest(work, fingerprint)
  try:
    with stopping.Requests() as stop, _pool(processes, settings, worker_setup) as pool:
      splits = _index(tars, work, pool, progress, fingerprint['tars'])
      tasks = _tasks(builder, splits, work, shard_images)
      _remove_strays(work, tasks, manifest)
      left = lambda: [t for ts in tasks.values() for t in ts if not manifest.done(t)]
      per_image = manifest.per_image() or _sampled_per_image(splits['train'], settings)
      needed = lambda: int(per_image * DISK_MARGIN * sum(len(t.members) for t in left()))
      try:
        disk.check_room(work, needed(), what)
      except disk.DiskFullError:
        if not manifest.shards:  # nothing to resume from: leave nothing behind
          shutil.rmtree(work)
        raise
      for split in SPLITS:
        _run(split, tasks[split], pool, manifest, progress, stop, max_bad_records, needed,
             what, work)
  except concurrent.futures.process.BrokenProcessPool:
    raise WorkerLostError(f'A worker process died while storing {what} (killed, or out of '
                          f'memory); {len(manifest.shards)} shards are stored in {work}: '
                          'rerun the same command to continue from them.') from None
  _finish(builder, tasks, manifest, work, final, progress)


def _index(tars, work, pool, progress, tars_fingerprint) -> dict:
  cache = os.path.join(work, 'index.npz')
  splits = imagenet_plan.load(cache, tars_fingerprint)
  if splits is None:
    names = imagenet_plan.class_names()
    splits = {'train': imagenet_plan.train_split(tars['train'], names, pool, progress),
              'validation': imagenet_plan.validation_split(tars['validation'], names)}
    imagenet_plan.save(cache, splits, tars_fingerprint)
  logging.info('%s: %s training and %s validation images.', progress.what,
               f'{len(splits["train"]):,}', f'{len(splits["validation"]):,}')
  return splits


def _template(builder, work: str, split: str):
  """tfds's names of a split's shards in `work` (renamed whole into the store)."""
  from etils import epath
  from tensorflow_datasets.core import naming
  return naming.ShardedFileTemplate(data_dir=epath.Path(work), dataset_name=builder.name,
                                    split=split, filetype_suffix='array_record')


def _tasks(builder, splits, work, shard_images) -> dict[str, list]:
  os.makedirs(os.path.join(work, 'statistics'), exist_ok=True)
  tasks = {}
  for split in SPLITS:
    shards = splits[split].shards(shard_images)
    template = _template(builder, work, split)
    tasks[split] = [shard_writer.Task(
        split, i, os.fspath(template.sharded_filepath(shard_index=i, num_shards=len(shards))),
        splits[split].tar, members, os.path.join(work, 'statistics', f'{split}-{i:05d}.npz')
        if split == 'train' else None) for i, members in enumerate(shards)]
  return tasks


def _remove_strays(work: str, tasks: dict, manifest: Manifest) -> None:
  """Shards and sums in `work` that the manifest does not list (a run killed between a
  shard's rename and the manifest's update, or begun with other tars or settings)."""
  keep = {p for ts in tasks.values() for t in ts if manifest.done(t)
          for p in (t.path, t.statistics) if p}
  for folder in (work, os.path.join(work, 'statistics')):
    for name in os.listdir(folder):
      path = os.path.join(folder, name)
      stray = '.array_record-' in name or (name.endswith('.npz') and folder != work)
      if stray and path not in keep:
        os.remove(path)


def _sampled_per_image(split, settings: shard_writer.Settings, n: int = 24) -> float:
  """Bytes a stored record, from `n` training images spread over the split (raw: known)."""
  features = shard_writer.features(settings)  # its records' size is the same in any order
  if not settings.quality:
    return settings.size ** 2 * settings.channels + 64
  sizes = []
  with open(split.tar, 'rb') as f:
    for i in np.linspace(0, len(split) - 1, min(n, len(split))).astype(int).tolist():
      name = split.names[i]
      data = os.pread(f.fileno(), int(split.sizes[i]), int(split.offsets[i]))
      try:
        image = shard_writer.prepared(name, data, settings)
      except transforms.DECODE_ERRORS:
        continue
      sizes.append(len(features.serialize_example(
          {'image': shard_writer.encode(image, settings.quality), 'label': 0})))
  return float(np.mean(sizes)) if sizes else 200_000.0


def _run(split, tasks, pool, manifest, progress, stop, max_bad, needed, what, work) -> None:
  """Writes `tasks`' shards not yet done, at most two a worker queued at a time."""
  todo = collections.deque(t for t in tasks if not manifest.done(t))
  images = lambda ts: sum(len(t.members) for t in ts)
  progress.phase(split, images(tasks), images(tasks) - images(todo))
  inflight, failure = {}, None
  while todo or inflight:
    while todo and len(inflight) < 2 * pool.workers and failure is None and not stop.received:
      task = todo.popleft()
      inflight[pool.submit(shard_writer.write, task)] = task
    if not inflight:
      break
    finished, _ = concurrent.futures.wait(inflight, timeout=1.0,
                                          return_when=concurrent.futures.FIRST_COMPLETED)
    progress.advance(0)  # a line on time even while no shard finishes
    for future in finished:
      task = inflight.pop(future)
      result = future.result()  # a bug in a worker raises here, with its traceback
      if result.disk_full:
        failure = failure or disk.filled(work, what, RuntimeError(result.disk_full),
                                         needed(), resumes=True)
      elif result.error:
        failure = failure or BadDataError(result.error)
      else:
        manifest.add(task, result)
        for message in result.bad:
          logging.warning('Not storing %s image %s, which fails to decode.', split, message)
        progress.advance(len(task.members))
        bad = manifest.bad()
        if len(bad) > max_bad >= 0 and failure is None:
          failure = BadDataError(f'{len(bad)} images of {what} failed to decode, more than '
                                 f'data.max_bad_records={max_bad}; the last: {bad[-1]}.')
  if failure is not None:
    raise failure
  if stop.received:
    raise Stopped(f'{stop.received}: stopped storing {what} with {len(manifest.shards)} '
                  f'shards done (in {work}); rerun the same command to continue from them.')
  progress.finish()


def _finish(builder, tasks, manifest, work, final, progress) -> None:
  """The full training set's statistics, tfds's metadata, and the store in place."""
  import tensorflow_datasets as tfds
  progress.phase('statistics', len(tasks['train']), unit='shards')
  total = cross = None
  count = 0
  for task in tasks['train']:
    with np.load(task.statistics) as f:
      total = f['total'] if total is None else total + f['total']
      cross = f['cross'] if cross is None else cross + f['cross']
      count += int(f['count'])
    progress.advance()
  if count:  # float64 holds these integer sums exactly (below 2^53)
    statistics = transforms.PixelStatistics()
    statistics.total, statistics.moments = total.astype(np.float64), cross.astype(np.float64)
    statistics.squares, statistics.count = np.diag(statistics.moments).copy(), count
    np.savez(os.path.join(work, STATISTICS), **statistics.as_dict(), bad=len(manifest.bad()))
  progress.finish()
  infos = []
  for split, split_tasks in tasks.items():
    shards = [manifest.shards[Manifest.key(t)] for t in split_tasks]
    infos.append(tfds.core.SplitInfo(
        name=split, shard_lengths=[s['records'] for s in shards],
        num_bytes=sum(s['bytes'] for s in shards),
        filename_template=_template(builder, work, split)))
  builder.info.set_splits(tfds.core.SplitDict(infos))
  builder.info.write_to_directory(work)
  for name in ('manifest.json', 'index.npz'):
    os.remove(os.path.join(work, name))
  shutil.rmtree(os.path.join(work, 'statistics'))
  os.rename(work, final)
  logging.info('Stored %s in %s.', progress.what, final)
