"""A signal that ends a job (SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1: the default of
`config.stop_signals`) during a dataset's preparation: a clean stop in one line (exit 75, as
training stops, `errors.Stopped`), never a kill that leaves partial files behind.

* `Requests` (the parallel ImageNet preparation): a signal is noted; the preparation stops
  handing out shards, finishes those in flight, records them, and raises `Stopped`. A
  second SIGINT raises KeyboardInterrupt at once (the shards in flight are abandoned; a
  rerun removes their partial files).
* `raising(what)` (preparations through tfds, which cannot resume): the signal raises
  `Stopped` in the main thread at once, so that tfds's own clean-up removes its partial
  directory on the way out.

Handlers are installed only in the main thread (elsewhere Python cannot), and the previous
ones are restored on exit.
"""

from __future__ import annotations

import contextlib
import signal
import threading

from alexnet_jax.errors import Stopped

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1)


def _install(handler) -> dict:
  if threading.current_thread() is not threading.main_thread():
    return {}
  return {s: signal.signal(s, handler) for s in SIGNALS}


def _restore(previous: dict) -> None:
  for s, handler in previous.items():
    signal.signal(s, handler)


class Requests:
  """While entered, a stop signal (a first SIGINT included) sets `received` (its name)."""

  def __init__(self):
    self.received: str | None = None
    self._previous = {}

  def __enter__(self):
    self._previous = _install(self._handle)
    return self

  def __exit__(self, *exc):
    _restore(self._previous)
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self.received == 'SIGINT':
      raise KeyboardInterrupt  # a second Ctrl-C: at once
    self.received = self.received or signal.Signals(signum).name


@contextlib.contextmanager
def raising(what: str):
  """While entered, a stop signal raises Stopped (module docstring)."""

  def handle(signum, frame):
    del frame
    raise Stopped(f'{signal.Signals(signum).name} while storing {what}: its partial files are '
                  'removed; rerun the same command to prepare it again.')

  previous = _install(handle)
  try:
    yield
  finally:
    _restore(previous)
