"""launch.py with faults injected through the training loop's hooks (`loop.Hooks`):

  python -m tests.faults --faults=kill_after_step=3,nan_at_step=4 --config=... --workdir=...

  kill_after_step=N       SIGKILL this process after step N
  kill_after_save=N       SIGKILL it right after the asynchronous save of step N has started
  stop_after_step=N       SIGSTOP this process after step N (frozen: a hung host)
  nan_at_step=N           a NaN in every pixel of batch N (through the PCA shift)
  term_at_step=N          SIGTERM to this process while step N runs
  int_at_step=N           SIGINT likewise (hup_, quit_, usr1_, usr2_, xcpu_at_step: SIGHUP ...)
  int_twice_at_step=N     two SIGINTs while step N runs
  term_after_save=N       SIGTERM right after the asynchronous save of step N has started
  int_after_save=N        SIGINT likewise
  fill_disk_after_step=N  fill the workdir's file system after step N, leaving 32 KiB
  term_at_shard=N         SIGTERM to this process once the ImageNet preparation (in shards of
                          2 images) has written training shard N (tests/prep_faults.py)
  restore_eio=1           orbax's restore of a checkpoint's state raises OSError(EIO), as on a
                          lost NFS mount
  restore_memory_error=1  it raises MemoryError
  process=P               inject only on process P (default: every process)

With $ALEXNET_JAX_FAULT_LOG set, each kill or stop first appends a JSON line {fault, step, pid,
time} to that file, so that a test can time what the other processes do next.

Production code has no fault switches; only this wrapper does.
"""

import json
import os
import signal
import sys
import time

from absl import flags

import launch

flags.DEFINE_string('faults', '', 'Comma-separated name=step faults to inject.')

FILLER = 'disk_filler'
SIGNALS = ('term', 'int', 'hup', 'quit', 'usr1', 'usr2', 'xcpu')  # <name>_at_step=N


def fill_disk(directory: str, leave: int = 32 << 10) -> None:
  """Writes FILLER into `directory` until its file system has `leave` bytes free, once the
  checkpoint being saved (if any) is complete."""
  checkpoints = os.path.join(directory, 'checkpoints')
  for _ in range(300):  # orbax writes a step into a temporary directory, then renames it
    if not any('tmp' in n for n in os.listdir(checkpoints)):
      break
    time.sleep(0.1)
  path = os.path.join(directory, FILLER)
  with open(path, 'wb') as f:
    while True:
      free = os.statvfs(directory).f_bavail * os.statvfs(directory).f_frsize
      if free <= leave:
        break
      try:
        f.write(b'\0' * min(free - leave, 1 << 20))
        f.flush()
      except OSError:
        break


def failing_restores(error: BaseException) -> None:
  """orbax's CheckpointManager.restore raises `error` whenever it restores a state item."""
  import orbax.checkpoint as ocp
  restore = ocp.CheckpointManager.restore

  def failing(self, step, *args, **kwargs):
    composite = kwargs.get('args', args[0] if args else None)
    if composite is not None and 'state' in composite.keys():
      raise error
    return restore(self, step, *args, **kwargs)

  ocp.CheckpointManager.restore = failing


def make_hooks():
  import errno

  import jax
  import jax.numpy as jnp

  from alexnet_jax.train import loop

  items = dict(kv.split('=') for kv in flags.FLAGS.faults.split(',') if kv)
  process = int(items.pop('process', -1))
  at = {name: int(step) for name, step in items.items()}
  active = process < 0 or jax.process_index() == process
  if at.get('restore_eio'):
    failing_restores(OSError(errno.EIO, os.strerror(errno.EIO)))
  if at.get('restore_memory_error'):
    failing_restores(MemoryError())
  if 'term_at_shard' in at:
    import functools

    from alexnet_jax.data.prepare import imagenet_prep
    from tests import prep_faults
    imagenet_prep.store = functools.partial(
        imagenet_prep.store, shard_images=2,
        worker_setup=prep_faults.SignalAfterShard(at['term_at_shard']))

  def fault(name, step):
    return active and at.get(name) == step

  def note(name, step):
    path = os.environ.get('ALEXNET_JAX_FAULT_LOG')
    if path:
      with open(path, 'a', encoding='utf-8') as f:
        f.write(json.dumps({'fault': name, 'step': step, 'pid': os.getpid(),
                            'process': jax.process_index(), 'time': time.time()}) + '\n')

  def kill(name, step, sig=signal.SIGKILL):
    sys.stdout.flush()
    sys.stderr.flush()
    note(name, step)
    os.kill(os.getpid(), sig)

  class Faults(loop.Hooks):

    def before_step(self, step, images, labels):
      if fault('nan_at_step', step):
        images = dict(images, shift=images['shift'] * jnp.nan)
      for name in SIGNALS:
        if fault(f'{name}_at_step', step):
          os.kill(os.getpid(), signal.Signals[f'SIG{name.upper()}'])
      if fault('int_twice_at_step', step):
        os.kill(os.getpid(), signal.SIGINT)
      if fault('int_twice_at_step', step):
        os.kill(os.getpid(), signal.SIGINT)
      return images, labels

    def after_step(self, step):
      if fault('kill_after_step', step):
        kill('kill_after_step', step)
      if fault('stop_after_step', step):
        kill('stop_after_step', step, signal.SIGSTOP)
      if fault('fill_disk_after_step', step):
        fill_disk(flags.FLAGS.workdir)

    def after_save(self, step):
      if fault('kill_after_save', step):
        kill('kill_after_save', step)
      if fault('term_after_save', step):
        os.kill(os.getpid(), signal.SIGTERM)
      if fault('int_after_save', step):
        os.kill(os.getpid(), signal.SIGINT)

  return Faults()


if __name__ == '__main__':
  launch.run(make_hooks)
