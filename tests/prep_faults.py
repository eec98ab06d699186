"""Faults injected into the ImageNet preparation's worker processes (`imagenet_prep.store(...,
worker_setup=...)` runs the setup in each worker): picklable, so that spawned workers run
them. Production code has no fault switches; only the tests pass these."""

from __future__ import annotations

import dataclasses
import errno
import os
import signal


@dataclasses.dataclass(frozen=True)
class SignalAfterShard:
  """After writing train shard `index`, the worker sends `signum` to the preparing process
  (its parent), as SLURM or a user would."""
  index: int
  signum: int = signal.SIGTERM

  def __call__(self):
    from alexnet_jax.data.prepare import shard_writer
    write = shard_writer.write

    def signalling(task):
      result = write(task)
      if task.split == 'train' and task.index == self.index:
        os.kill(os.getppid(), self.signum)
      return result

    shard_writer.write = signalling


@dataclasses.dataclass(frozen=True)
class DiskFullAtShard:
  """Train shard `index`'s writer fails as array_record does on a full disk: a RuntimeError
  carrying the C library's message (`errno_` ENOSPC or EDQUOT)."""
  index: int
  errno_: int = errno.ENOSPC

  def __call__(self):
    from alexnet_jax.data.prepare import shard_writer
    real = shard_writer.array_record_module.ArrayRecordWriter
    marker = f'-{self.index:05d}-of-'
    message = f'write() failed: {os.strerror(self.errno_)}; writing the shard'

    class Writer:
      def __init__(self, path, options):
        self._real, self._full = real(path, options), '-train.' in path and marker in path

      def write(self, record):
        if self._full:
          raise RuntimeError(message)
        self._real.write(record)

      def close(self):
        self._real.close()

    shard_writer.array_record_module.ArrayRecordWriter = Writer
