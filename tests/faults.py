"""launch.py with faults injected through the training loop's hooks (`train.Hooks`):

  python -m tests.faults --faults=kill_after_step=3,kill_after_save=6,nan_at_step=4 \\
      --config=... --workdir=...

kill_after_step: SIGKILL this process after step N; kill_after_save: right after the
asynchronous save of step N has started; nan_at_step: a NaN in every pixel of batch N
(through the PCA shift). Production code has no fault switches; only this wrapper does.
"""

import os
import signal
import sys

from absl import flags

import launch

flags.DEFINE_string('faults', '', 'Comma-separated name=step faults to inject.')


def make_hooks():
  import jax.numpy as jnp
  from alexnet_jax import train

  items = dict(kv.split('=') for kv in flags.FLAGS.faults.split(',') if kv)
  at = {name: int(items.get(name, -1))
        for name in ('kill_after_step', 'kill_after_save', 'nan_at_step')}

  def kill():
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)

  class Faults(train.Hooks):

    def before_step(self, step, images, labels):
      if step == at['nan_at_step']:
        images = dict(images, shift=images['shift'] * jnp.nan)
      return images, labels

    def after_step(self, step):
      if step == at['kill_after_step']:
        kill()

    def after_save(self, step):
      if step == at['kill_after_save']:
        kill()

  return Faults()


if __name__ == '__main__':
  launch.run(make_hooks)
