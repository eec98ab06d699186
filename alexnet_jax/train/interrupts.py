"""Stopping a training run cleanly on the signals that end a job (`config.stop_signals`).

A job ends by more than SIGTERM: SLURM, Kubernetes and cloud spot instances send SIGTERM some
time before they take a machine back; a closed terminal or a dropped ssh session sends
SIGHUP; Ctrl-C sends SIGINT and Ctrl-\\ SIGQUIT; schedulers send a chosen signal before the
time limit (SLURM's `--signal=USR1@120`). torchelastic treats SIGTERM, SIGINT, SIGHUP and
SIGQUIT alike; here every signal of `stop_signals` (by default those and SIGUSR1) gets the
same treatment: the run finishes the step it is in, writes a checkpoint of that step, and
exits with `EXIT_CODE` and one line; rerunning the same command continues bitwise. A
second SIGINT exits at once (exit 130). A signal left out of `stop_signals` keeps its
default action (SIGHUP, SIGUSR1: the process ends at once).

On several processes every process must save the same step. JAX's preemption service does
that: `jax.distributed.initialize` installs its own SIGTERM handler, which notifies the
coordination service, and `multihost_utils.reached_preemption_sync_point(step)` becomes True
on every process at the same step (the largest step any process has reached, plus one). Any
other stop signal on one process is turned into a SIGTERM to itself so that it takes the
same path (SIGTERM itself is then always JAX's).
"""

from __future__ import annotations

import os
import signal
import sys

import jax
from jax.experimental import multihost_utils

from alexnet_jax.errors import ConfigError
from alexnet_jax.errors import Stopped

EXIT_CODE = Stopped.exit_code  # EX_TEMPFAIL: stopped early, a checkpoint is written; rerun
SECOND_SIGINT_EXIT_CODE = 130
# The signals a job can end by that a process may catch (config.stop_signals chooses): SIGXCPU
# is a CPU-time limit's notice (RLIMIT_CPU, as batch systems set it), SIGUSR1 and SIGUSR2 the
# usual choice of a scheduler's warning before the time limit.
STOPPABLE = ('SIGTERM', 'SIGINT', 'SIGHUP', 'SIGQUIT', 'SIGUSR1', 'SIGUSR2', 'SIGXCPU')


class Interrupted(Stopped):
  """The run stopped at a signal after saving; launch.py exits with EXIT_CODE."""

  exit_code = EXIT_CODE


def check_signals(names) -> tuple[signal.Signals, ...]:
  """The signals of `config.stop_signals` ('SIGTERM', ...), or one sentence naming a wrong
  one."""
  if isinstance(names, str):
    raise ConfigError(f'stop_signals={names!r} must be a tuple of signal names, such as '
                      "('SIGTERM', 'SIGHUP').")
  for name in names:
    if name not in STOPPABLE:
      raise ConfigError(f'stop_signals: {name!r} is not one of {", ".join(STOPPABLE)}.')
  return tuple(signal.Signals[name] for name in dict.fromkeys(names))


class StopSignals:
  """While entered, each of `signals` asks the run to stop after the current step
  (`should_stop`) instead of ending it."""

  def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
    self.signals = tuple(signals)
    self.received: str | None = None
    self._sigints = 0
    self._previous = {}
    self._distributed = False

  def __enter__(self):
    self._distributed = jax.process_count() > 1
    for s in self.signals:
      if self._distributed and s == signal.SIGTERM:
        continue  # with several processes SIGTERM belongs to JAX's preemption notifier
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
    else:
      sys.stderr.write(f'{name}: stopping after this step and saving a checkpoint.\n')
    sys.stderr.flush()
    first = self.received is None
    self.received = self.received or name
    if self._distributed and first:
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
