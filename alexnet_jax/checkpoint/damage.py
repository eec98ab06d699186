"""When a checkpoint that fails to restore counts as damaged: only on evidence.

A restore can fail because the step's files are damaged (truncated, overwritten, half
deleted) or because of the machine (an I/O error on a lost NFS mount, memory, a permission,
a file system that is busy) or because this code reads them differently (a config or an
orbax version whose state has another structure). Only the first may be skipped for the
previous step and moved to `corrupt_checkpoints/`: the others would throw away good
checkpoints and, with none left, retrain a six-day run from step 0. So `judge` decides:

* evidence of damage: an item missing or unparsable (`inspect`: the step's state, meta and
  inputs, their metadata and manifests), or the array reader saying the stored bytes are
  inconsistent (tensorstore's OUT_OF_RANGE, DATA_LOSS, FAILED_PRECONDITION or NOT_FOUND on
  reading a key: a chunk past the end of its file, a missing file); a fingerprint mismatch
  is the caller's evidence;
* the machine: an OSError whose errno is not "no such file", MemoryError, or tensorstore's
  UNAVAILABLE, DEADLINE_EXCEEDED, PERMISSION_DENIED, RESOURCE_EXHAUSTED, ABORTED;
* anything else is unexpected: neither skipped nor moved.

The last two become a CheckpointReadError: the run stops in one sentence, and nothing is
moved, reset or rewritten.
"""

from __future__ import annotations

import errno
import json
import os
import re

from alexnet_jax.errors import UserError

ITEM_FILES = {  # item: the files orbax writes for it, any one of which must be there
    'state': ('_METADATA', 'manifest.ocdbt'),
    'inputs': ('_METADATA', 'manifest.ocdbt'),
    'meta': ('metadata',),
}
_MACHINE_CODES = ('UNAVAILABLE', 'DEADLINE_EXCEEDED', 'PERMISSION_DENIED', 'RESOURCE_EXHAUSTED',
                  'ABORTED', 'CANCELLED')
_DATA_CODES = re.compile(r'\b(OUT_OF_RANGE|DATA_LOSS|FAILED_PRECONDITION|NOT_FOUND): '
                         r'Error (reading|opening)')
_MACHINE_WORDS = tuple(os.strerror(code) for code in (
    errno.EIO, errno.EACCES, errno.EPERM, errno.ENOMEM, errno.ESTALE, errno.ETIMEDOUT,
    errno.ENOTCONN, errno.EBUSY, errno.ENODEV, errno.EROFS))


class CheckpointReadError(UserError):
  """A checkpoint that failed to restore without evidence of damage: the run stops."""


def inspect(step_dir: str) -> str | None:
  """Why `step_dir` is damaged on its face (an item or its metadata missing or unparsable),
  or None. An OSError other than "no such file" propagates: it is the machine's."""
  for item, files in ITEM_FILES.items():
    directory = os.path.join(step_dir, item)
    if not os.path.isdir(directory):
      return f'its {item} item is missing'
    present = [f for f in files if os.path.isfile(os.path.join(directory, f))]
    if len(present) < len(files):
      return f'its {item} item has no {", ".join(sorted(set(files) - set(present)))}'
    for name in ('_METADATA', 'metadata'):
      path = os.path.join(directory, name)
      if name in files:
        try:
          with open(path, encoding='utf-8') as f:
            json.load(f)
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
          return f'its {item}/{name} is not JSON ({str(e)[:100]})'
    if item != 'meta' and os.path.getsize(os.path.join(directory, 'manifest.ocdbt')) == 0:
      return f'its {item} item\'s manifest is empty'
  return None


def _chain(e: BaseException):
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    yield e
    e = e.__cause__ or e.__context__


def judge(e: BaseException, step_dir: str) -> str:
  """'damaged' with evidence of damage, else 'machine' or 'unexpected' (module docstring)."""
  for cause in _chain(e):
    if isinstance(cause, MemoryError):
      return 'machine'
    if isinstance(cause, OSError) and cause.errno not in (None, errno.ENOENT):
      return 'machine'
  text = ' '.join(str(c) for c in _chain(e))
  if any(code + ':' in text for code in _MACHINE_CODES) or any(w in text for w in _MACHINE_WORDS):
    return 'machine'
  if inspect(step_dir) is not None:
    return 'damaged'
  if _DATA_CODES.search(text):
    return 'damaged'
  return 'unexpected'


def reason(e: BaseException) -> str:
  """What went wrong, in a few words, never a traceback: the first OSError's strerror, else
  the first line of the innermost message that has one."""
  for cause in _chain(e):
    if isinstance(cause, OSError) and cause.strerror:
      return cause.strerror
    if isinstance(cause, MemoryError):
      return 'out of memory (MemoryError)'
  messages = [str(c).strip().splitlines()[0] for c in _chain(e) if str(c).strip()]
  return (messages[-1] if messages else type(e).__name__)[:200]


def read_error(e: BaseException, step_dir: str, verdict: str) -> CheckpointReadError:
  what = ('the machine' if verdict == 'machine' else
          'no evidence that its files are damaged')
  return CheckpointReadError(
      f'Restoring the checkpoint {step_dir} failed ({reason(e)}), with {what}; nothing was '
      'moved or retrained: fix the cause (the disk, the mount, memory, the config or the '
      'orbax version that wrote it) and rerun.')
