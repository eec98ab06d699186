"""Prepared datasets on disk: one preparer at a time, shards that are checked before they are
trained on, and reads that fail in one sentence.

* `ready(make, what)`: the prepared builder that `make()` constructs, building it on first
  use under an exclusive lock in its data_dir (`<data_dir>/<name>/<config>/<version>.lock`),
  so that two jobs sharing a data_dir (two SLURM jobs on `~/tensorflow_datasets`) do not
  both build it: the second waits, then reads what the first wrote. A dataset that is
  already prepared and sound is read without the lock (a read-only data_dir works).
* `check(builder)`: every shard of every split opens and holds the records that its
  dataset_info.json lists (a truncated copy loses its footer, and reads as holding none).
  A damaged copy that `ready` can rebuild from its source files is moved aside
  (`<version>.damaged-<time>`: the evidence is kept, nothing is deleted) and built again,
  with a warning that says so; any other is a DamagedDatasetError naming the directory.
* `ReadableSource`: a data source whose read failures (a chunk that fails its hash, an I/O
  error) stop the run in one sentence naming the directory, never a traceback, and never a
  skipped record: a run must not train on what it could not read.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time

from alexnet_jax.errors import BadDataError
from alexnet_jax.errors import DatasetNotFoundError
from alexnet_jax.errors import NoFileLocksError
from alexnet_jax.errors import UserError


class DamagedDatasetError(BadDataError):
  """A prepared dataset whose files are truncated or fail their checks."""


@contextlib.contextmanager
def exclusive(path: str, what: str, allow_no_locks: bool = False):
  """An exclusive flock on `path` for the block; waits (saying so) while another process
  holds it."""
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise DatasetNotFoundError(f'{what} is not prepared and {os.path.dirname(path)} cannot be '
                               f'written ({e.strerror}); prepare it there with write access, '
                               'or set data.data_dir to a writable directory.') from None
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
        if not allow_no_locks:
          raise NoFileLocksError.of(path, e) from None
        logging.warning('No file locks on %s (%s): preparing %s without one.',
                        os.path.dirname(path), e.strerror, what)
      else:
        logging.info('Another process is preparing %s (%s): waiting for it.', what, path)
        fcntl.flock(fd, fcntl.LOCK_EX)
    yield
  finally:
    os.close(fd)  # releases the lock


def _damage(builder) -> str | None:
  """Why the prepared `builder`'s shards cannot be trusted, or None if they are sound."""
  from array_record.python import array_record_module
  for name, split in builder.info.splits.items():
    for path, expected in zip(split.filepaths, split.shard_lengths):
      path = os.fspath(path)
      if not os.path.isfile(path):
        return f'{os.path.basename(path)} of the {name} split is missing'
      try:
        reader = array_record_module.ArrayRecordReader(path)
        try:
          found = reader.num_records()
        finally:
          reader.close()
      except (RuntimeError, OSError, ValueError) as e:
        return f'{os.path.basename(path)} of the {name} split cannot be read ({_first(e)})'
      if found != expected:
        return (f'{os.path.basename(path)} of the {name} split holds {found} records, not the '
                f'{expected} it was written with')
  return None


def _first(e: BaseException) -> str:
  return (str(e).splitlines() or [type(e).__name__])[0][:200]


def check(builder) -> None:
  """DamagedDatasetError if the prepared `builder` is damaged (module docstring)."""
  if builder.info.file_format.value != 'array_record':
    return  # read by tfds with TensorFlow, which this project does not use (sources says so)
  why = _damage(builder)
  if why:
    raise DamagedDatasetError(f'The prepared dataset in {builder.data_dir} is damaged ({why}); '
                              'delete that directory to prepare it again from its source '
                              'files, or restore it from a copy.')


def ready(make, what: str, allow_no_locks: bool = False, build=None, **prepare_kwargs):
  """The prepared builder `make()` constructs, built (or rebuilt, if damaged) from its source
  files on first use, one process at a time (module docstring), by `build(builder)` (default:
  tfds's download_and_prepare, `prepare_kwargs` passed on)."""
  builder = make()
  if builder.is_prepared() and _damage(builder) is None:
    return builder
  lock = os.path.join(os.path.dirname(os.fspath(builder.data_dir)),
                      f'{os.path.basename(os.fspath(builder.data_dir))}.lock')
  with exclusive(lock, what, allow_no_locks):
    builder = make()  # another process may have built it meanwhile
    if builder.is_prepared():
      why = _damage(builder)
      if why is None:
        return builder
      aside = f'{builder.data_dir}.damaged-{int(time.time())}'
      os.replace(os.fspath(builder.data_dir), aside)
      logging.warning('The prepared %s in %s is damaged (%s): moved it to %s and preparing it '
                      'again from its source files.', what, builder.data_dir, why, aside)
      builder = make()
    if build is None:
      _build(builder, what, **prepare_kwargs)
      return builder
    build(builder)
  return make()  # read from what `build` wrote


def _build(builder, what: str, estimate: int | None = None, **kwargs) -> None:
  """tfds's download_and_prepare, saying what is stored where, past tfds's shuffle buffer
  without TensorFlow (`tfds_writing`), with the disk's room checked against `estimate` (bytes of
  the dataset) first, a full disk or a SIGTERM / SIGINT midway told in one line (tfds
  removes its partial directory on the way out), the same bytes every time
  (`tfds_writing`). tfds prints "Downloading and preparing
  dataset Unknown size ..." to stdout for a build that downloads nothing (a local folder):
  that print is swallowed. Its progress bars are off (`progress` logs lines instead: in a log
  file the bars are lines of escape codes, and tfds's total is unknown)."""
  import io
  import shutil
  import tempfile

  import tensorflow_datasets as tfds

  from alexnet_jax.data.prepare import disk
  from alexnet_jax.data.prepare import stopping
  from alexnet_jax.data.prepare import tfds_writing
  tfds_writing.install()
  where = os.path.dirname(os.fspath(builder.data_dir))
  needed = None if estimate is None else disk.with_spill(estimate)
  if needed is not None:
    disk.check_room(where, needed, what)
  logging.info('Storing %s as a tfds dataset in %s (once; later runs read it from there).',
               what, builder.data_dir)
  tfds.display_progress_bar(False)
  # tfds's download manager makes <data_dir>/downloads/extracted even when nothing is
  # downloaded: here it goes into a directory removed afterwards.
  os.makedirs(where, exist_ok=True)
  downloads = tempfile.mkdtemp(prefix='tfds_downloads_', dir=where)
  try:
    with stopping.raising(what), contextlib.redirect_stdout(io.StringIO()):
      builder.download_and_prepare(download_dir=downloads, **kwargs)
  except (OSError, RuntimeError) as e:
    if not disk.is_full(e):
      raise
    raise disk.filled(where, what, e, needed, resumes=False) from None
  finally:
    shutil.rmtree(downloads, ignore_errors=True)
  logging.info('Stored %s: %s.', what, builder.info.dataset_size)


class ReadableSource:
  """A random-access data source (len, [i], __getitems__) of the prepared dataset in
  `directory`, whose read failures become one sentence (module docstring). Picklable when
  the source is (grain's worker processes receive it)."""

  def __init__(self, source, directory: str):
    self.source, self.directory = source, os.fspath(directory)

  def __len__(self):
    return len(self.source)

  def _failed(self, what, e: Exception) -> UserError:
    if isinstance(e, OSError) and e.errno is not None:
      return BadDataError(f'Reading {what} of the dataset in {self.directory} failed '
                          f'({e.strerror}); check the disk or mount that holds it.')
    return DamagedDatasetError(f'Reading {what} of the prepared dataset in {self.directory} '
                               f'failed ({_first(e)}): it is damaged; delete that directory to '
                               'prepare it again from its source files.')

  def __getitem__(self, i):
    try:
      return self.source[i]
    except (RuntimeError, OSError) as e:
      raise self._failed(f'record {i}', e) from None

  def __getitems__(self, indices):
    try:
      return self.source.__getitems__(indices)
    except (RuntimeError, OSError) as e:
      indices = list(indices)
      span = f'records {min(indices)}-{max(indices)}' if indices else 'records'
      raise self._failed(span, e) from None
