"""Stopping a training run cleanly on SIGTERM (preemption) and SIGINT (Ctrl-C).

SLURM, Kubernetes and cloud spot instances send SIGTERM some time before they take a
machine back. On SIGTERM or a first SIGINT the run finishes the step it is in, writes a
checkpoint of that step, and exits with `EXIT_CODE` and one line; rerunning the same command
continues bitwise. A second SIGINT exits at once (exit 130).

On several processes every process must save the same step. JAX's preemption service does
that: `jax.distributed.initialize` installs its own SIGTERM handler, which notifies the
coordination service, and `multihost_utils.reached_preemption_sync_point(step)` becomes True
on every process at the same step (the largest step any process has reached, plus one). A
SIGINT on one process is turned into a SIGTERM to itself so that it takes the same path.
"""

from __future__ import annotations

import os
import signal
import sys

import jax
from jax.experimental import multihost_utils

from alexnet_jax.errors import Stopped

EXIT_CODE = Stopped.exit_code  # EX_TEMPFAIL: stopped early, a checkpoint is written; rerun
SECOND_SIGINT_EXIT_CODE = 130


class Interrupted(Stopped):
  """The run stopped at a signal after saving; launch.py exits with EXIT_CODE."""

  exit_code = EXIT_CODE


class StopSignals:
  """While entered, SIGTERM and SIGINT ask the run to stop after the current step
  (`should_stop`) instead of killing it."""

  def __init__(self):
    self.received: str | None = None
    self._sigints = 0
    self._previous = {}
    self._distributed = False

  def __enter__(self):
    self._distributed = jax.process_count() > 1
    # With several processes SIGTERM belongs to JAX's preemption notifier.
    signals = (signal.SIGINT,) if self._distributed else (signal.SIGINT, signal.SIGTERM)
    for s in signals:
      self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if signum == signal.SIGINT:
      self._sigints += 1
      if self._sigints > 1:
        sys.stderr.write('error: a second SIGINT: exiting at once, without a checkpoint of '
                         'the current step.\n')
        sys.stderr.flush()
        os._exit(SECOND_SIGINT_EXIT_CODE)  # pylint: disable=protected-access
      sys.stderr.write('SIGINT: stopping after this step and saving a checkpoint (SIGINT '
                       'again to exit at once).\n')
      sys.stderr.flush()
    self.received = self.received or name
    if self._distributed and signum == signal.SIGINT:
      os.kill(os.getpid(), signal.SIGTERM)  # the preemption notifier tells every process

  def should_stop(self, step: int) -> bool:
    """True once a signal asked to stop; on several processes, at the step every process
    stops at (call it at every step)."""
    if self._distributed:
      if multihost_utils.reached_preemption_sync_point(step):
        self.received = self.received or 'a preemption notice (SIGTERM) on some process'
        return True
      return False
    return self.received is not None
