"""Disk room for a preparation: checked up front against an estimate, and a disk that fills
midway (another job, a wrong estimate) told in one sentence, not a traceback.

Writers report a full disk in two ways: an OSError with errno ENOSPC or EDQUOT (Python's
own writes), or a RuntimeError whose text carries the C library's message (array_record:
"write() failed: No space left on device; ...").
"""

from __future__ import annotations

import errno
import os
import shutil

from alexnet_jax.errors import UserError

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_FULL_TEXTS = tuple(os.strerror(e) for e in FULL_ERRNOS)


class DiskFullError(UserError, OSError):
  """The disk cannot hold what a preparation writes (up front, or once it has filled)."""


def human(n: float) -> str:
  """Bytes as '52.3 GB' (decimal units, as `df -H` and the tar sizes are quoted)."""
  for unit in ('bytes', 'kB', 'MB', 'GB', 'TB'):
    if abs(n) < 1000 or unit == 'TB':
      return f'{n:,.0f} {unit}' if unit == 'bytes' else f'{n:.1f} {unit}'
    n /= 1000
  raise AssertionError('unreachable')


def is_full(e: BaseException) -> bool:
  """Whether `e` says the disk (or the user's quota) is full."""
  if isinstance(e, OSError) and e.errno in FULL_ERRNOS:
    return True
  return isinstance(e, (OSError, RuntimeError)) and any(t in str(e) for t in _FULL_TEXTS)


def reason(e: BaseException) -> str:
  """'No space left on device' or 'Disk quota exceeded', as `e` says it."""
  if isinstance(e, OSError) and e.errno in FULL_ERRNOS:
    return os.strerror(e.errno)
  return next((t for t in _FULL_TEXTS if t in str(e)), _FULL_TEXTS[0])


def free_bytes(path: str) -> tuple[int, str]:
  """(free bytes, the existing directory they were measured at) for `path`, which may not
  exist yet."""
  where = os.path.abspath(os.path.expanduser(path))
  while not os.path.exists(where) and os.path.dirname(where) != where:
    where = os.path.dirname(where)
  return shutil.disk_usage(where).free, where


def check_room(path: str, needed: int, what: str) -> None:
  """DiskFullError if the disk of `path` has less than `needed` bytes free."""
  free, where = free_bytes(path)
  if needed > free:
    raise DiskFullError(
        f'Storing {what} needs about {human(needed)} in {where} and {human(free)} are free '
        f'there; free {human(needed - free)} more, or set data.data_dir to a disk with room.')


def filled(where: str, what: str, e: BaseException, still_needed: int | None,
           resumes: bool) -> DiskFullError:
  """The one sentence for a disk that filled while storing `what` into `where`: what is
  `still_needed` (the rest, where the preparation `resumes`; else all of it, since its
  partial files are removed)."""
  if still_needed is None:
    needs = 'more room is needed there'
  elif resumes:
    needs = f'about {human(still_needed)} more are needed there'
  else:
    needs = f'it needs about {human(still_needed)} there in all'
  if resumes:
    return DiskFullError(f'The disk of {where} filled up while storing {what} ({reason(e)}): '
                         f'{needs}; free that much, then rerun the same command to continue '
                         'from what is stored.')
  return DiskFullError(f'The disk of {where} filled up while storing {what} ({reason(e)}) '
                       f'and its partial files are removed: {needs}; free that much, then '
                       'rerun the same command to prepare it again.')


def with_spill(dataset_bytes: int) -> int:
  """What a tfds preparation of a split of `dataset_bytes` needs at its peak: past tfds's
  shuffle buffer (1 GB) the examples are spilled to sorted runs on the same disk before
  the shards are written, so twice the data for a moment (`tfds_writing`)."""
  from tensorflow_datasets.core import shuffle
  return dataset_bytes * (2 if dataset_bytes > shuffle.MAX_MEM_BUFFER_SIZE else 1)
