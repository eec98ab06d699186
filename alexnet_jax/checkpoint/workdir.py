"""The workdir: whether it can be used, one run at a time, the history in run.json, and room
for a checkpoint.

* `check` fails before anything is read or written when the workdir is a file, cannot be
  created or written (training), or does not exist (evaluation and inference, which only
  read, so an archived or a colleague's read-only run can be evaluated).
* `RunLock` keeps a second training run out of a busy workdir: an exclusive `flock` on
  `<workdir>/run.lock`, which the kernel releases when the process ends however it ends
  (a SIGKILLed run never blocks the next one). The file names the holder (host, PID, start),
  so the refusal can say who is training there. Evaluation and inference take no lock.
* `RunRecord` writes run.json: the first run's record stays, and each later start of the
  same workdir appends what changed (start step, host, versions, devices, config fields).
* `check_space` fails before training when the disk cannot hold even one checkpoint.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import logging
import os
import shutil
import socket

from alexnet_jax.errors import ConfigError
from alexnet_jax.errors import NoFileLocksError
from alexnet_jax.errors import UserError

LOCK_FILE = 'run.lock'
RUN_FILE = 'run.json'


class WorkdirBusyError(UserError):
  """Another training run holds the workdir's lock."""


def check(workdir: str, writable: bool = True) -> None:
  """A workdir that is a file, that cannot be created or written (`writable`), or that does
  not exist (not `writable`: it is only read) fails before anything is read or written.
  (root passes `os.access` everywhere: its failures surface at the first write, still
  before anything else is written or compiled.)"""
  if not workdir or not workdir.strip():
    raise ConfigError('--workdir is empty (an unset shell variable?); name the run\'s '
                      'directory, such as --workdir=runs/x.')
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError(f'--workdir={workdir} is a file, not a directory.')
  if not writable:
    if not os.path.isdir(path):
      raise ConfigError(f'--workdir={workdir} does not exist.')
    return
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise ConfigError(f'--workdir={workdir} cannot be created because {existing} is a file.')
  if not os.access(existing, os.W_OK | os.X_OK):
    raise ConfigError(f'--workdir={workdir} is not writable ({existing} does not allow it).')


def on_process_zero(fn) -> None:
  """Runs `fn` on process 0 alone; if it raises a UserError, every process raises one with
  the same sentence, so that a refusal (a busy workdir) ends every process at once."""
  import jax
  message = ''
  if jax.process_index() == 0:
    try:
      fn()
    except UserError as e:
      if jax.process_count() == 1:
        raise
      message = str(e)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    import numpy as np
    data = np.zeros(4096, np.uint8)
    encoded = message.encode()[:4096]
    data[:len(encoded)] = np.frombuffer(encoded, np.uint8)
    message = bytes(multihost_utils.broadcast_one_to_all(data)).rstrip(b'\0').decode()
    if message:
      raise UserError(message)


def _holder(path: str) -> str:
  try:
    with open(path, encoding='utf-8') as f:
      info = json.load(f)
    return f'host {info["host"]}, PID {info["pid"]}, started {info["started"]}'
  except (OSError, ValueError, KeyError, TypeError):
    return 'holder unknown'


class RunLock:
  """An exclusive lock on `<workdir>/run.lock` for the life of a training run. A file system
  that gives no locks (flock fails with ENOLCK, EOPNOTSUPP, ...: an NFS mount without a lock
  daemon) cannot keep a second run out, so the run is refused in one sentence, unless
  `allow_no_locks` accepts the risk."""

  def __init__(self, workdir: str, allow_no_locks: bool = False):
    self.workdir = workdir
    self.path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
    self.allow_no_locks = allow_no_locks
    self._fd = None

  def _no_locks(self, e: OSError) -> None:
    """Raises NoFileLocksError for a flock error that is not "held by another", unless
    `allow_no_locks` (then a warning)."""
    if not self.allow_no_locks:
      raise NoFileLocksError.of(self.path, e)
    logging.warning('No file locks in %s (%s): training without run.lock\'s protection '
                    '(allow_no_file_locks=True).', self.workdir, e.strerror)

  def _busy(self, who: str) -> WorkdirBusyError:
    return WorkdirBusyError(f'Another run is training in --workdir={self.workdir} ({who}); '
                            'wait for it to finish or stop it, or use another --workdir.')

  def check_free(self) -> None:
    """Fails at once, writing nothing, if a live run holds the lock (a run that died left
    the file but not the lock)."""
    try:
      fd = os.open(self.path, os.O_RDONLY)
    except OSError:
      return  # no lock file: no run has trained here, or it cannot be read (checked later)
    try:
      fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno in (errno.EWOULDBLOCK, errno.EACCES):
        raise self._busy(_holder(self.path)) from None
      self._no_locks(e)
    finally:
      os.close(fd)

  def acquire(self) -> None:
    """Takes the lock (creating the file: the run's first write) and records the holder."""
    try:
      os.makedirs(os.path.dirname(self.path), exist_ok=True)
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise ConfigError(f'--workdir={self.workdir} is not writable ({e.strerror}).') from e
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno in (errno.EWOULDBLOCK, errno.EACCES):
        os.close(fd)
        raise self._busy(_holder(self.path)) from None
      try:
        self._no_locks(e)
      except UserError:
        os.close(fd)
        raise
    holder = {'host': socket.gethostname(), 'pid': os.getpid(),
              'started': datetime.datetime.now().astimezone().isoformat(timespec='seconds')}
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(holder).encode())
    self._fd = fd

  def release(self) -> None:
    if self._fd is not None:
      os.close(self._fd)  # closing the descriptor releases the flock
      self._fd = None

  def __enter__(self):
    self.acquire()
    return self

  def __exit__(self, *exc):
    self.release()


class RunRecord:
  """run.json: the first start's description of the run, and one entry per later start
  (`resumes`) with what changed."""

  def __init__(self, workdir: str, run: dict, enabled: bool = True):
    self.path = os.path.join(workdir, RUN_FILE)
    self.enabled = enabled
    self.record = run
    previous = self._read()
    if previous is not None:
      self.record = previous
      changes = {k: v for k, v in run.items() if k != 'config' and previous.get(k) != v}
      old, new = flatten(previous.get('config', {})), flatten(run['config'])
      changed = {k: [old.get(k), new[k]] for k in new if old.get(k) != new[k]}
      entry = dict(changes, host=socket.gethostname(),
                   time=datetime.datetime.now().astimezone().isoformat(timespec='seconds'))
      if changed:
        entry['config_changes'] = changed
      self.record.setdefault('resumes', []).append(entry)
    else:
      self.record = dict(run, host=socket.gethostname(),
                         time=datetime.datetime.now().astimezone().isoformat(timespec='seconds'))
    self.write()

  def _read(self) -> dict | None:
    try:
      with open(self.path, encoding='utf-8') as f:
        record = json.load(f)
      return record if isinstance(record, dict) and 'config' in record else None
    except (OSError, ValueError):
      return None

  @property
  def current(self) -> dict:
    """Where this start's facts go: the last resume entry, or the first record."""
    resumes = self.record.get('resumes')
    return resumes[-1] if resumes else self.record

  def update(self, **fields) -> None:
    """Facts learnt after the start (the compiled step's FLOPs), recorded for this start."""
    current = self.current
    for k, v in fields.items():
      if self.record.get(k) != v or current is self.record:
        current[k] = v
    self.write()

  def write(self) -> None:
    if not self.enabled:
      return
    tmp = self.path + '.tmp'
    try:
      with open(tmp, 'w', encoding='utf-8') as f:
        json.dump(self.record, f, indent=2, ensure_ascii=False)
      os.replace(tmp, self.path)
    except OSError as e:
      raise ConfigError(f'Cannot write {self.path} ({e.strerror}).') from e


def flatten(d: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def check_space(workdir: str, checkpoint_bytes: int) -> None:
  """Fails when the file system of `workdir` has no room for one checkpoint (the state's
  bytes and a margin for orbax's metadata); warns when it cannot hold the next two."""
  existing = os.path.abspath(workdir)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  free = shutil.disk_usage(existing).free
  need = int(checkpoint_bytes * 1.05) + (1 << 20)
  if free < need:
    raise ConfigError(f'The disk of --workdir={workdir} has {free / 2**20:.1f} MiB free, less '
                      f'than one checkpoint needs ({need / 2**20:.1f} MiB); free some space or '
                      'use another --workdir.')
  if free < 2 * need:
    logging.warning('The disk of %s has %.1f MiB free, room for one checkpoint of %.1f MiB '
                    'but not two: a later save may fail.', workdir, free / 2**20, need / 2**20)
