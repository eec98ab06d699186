"""Progress lines for the long preparations: every `interval` seconds one log line with the
phase, the images done out of the total, the rate and the time left, on stderr through
`logging` (a terminal or a file alike: SLURM and Kubernetes capture logs to files, where
tfds's progress bars are lines of escape codes).

  imagenet2012 at 256x256, train: 345,000 / 1,281,167 images (26.9%), 2,850 img/s, ETA 5 min 29 s
"""

from __future__ import annotations

import logging
import os
import time

# Seconds between lines: frequent enough to see it move, 240 lines an hour. The variable
# sets another interval (0: a line at every step), e.g. to watch a small trial.
INTERVAL_ENV = 'ALEXNET_JAX_PROGRESS_SECONDS'
INTERVAL = 15.0


def interval() -> float:
  return float(os.environ.get(INTERVAL_ENV, INTERVAL))


def duration(seconds: float) -> str:
  """'2 h 05 min', '5 min 29 s', '12 s'."""
  seconds = max(0, int(round(seconds)))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  if hours:
    return f'{hours} h {minutes:02d} min'
  return f'{minutes} min {secs:02d} s' if minutes else f'{secs} s'


class Progress:
  """Counts the work of one phase at a time and logs it every `interval` seconds."""

  def __init__(self, what: str, every: float | None = None, clock=time.monotonic):
    self.what, self.clock = what, clock
    self.interval = interval() if every is None else every
    self.phase_name, self.total, self.done, self.unit = '', 0, 0, 'images'
    self._start = self._last = clock()
    self._skipped = 0

  def phase(self, name: str, total: int, done: int = 0, unit: str = 'images') -> None:
    """Starts a phase of `total` items, `done` of them already done (a resumed run: not
    counted in the rate)."""
    self.phase_name, self.total, self.done, self.unit = name, total, done, unit
    self._skipped = done
    self._start = self._last = self.clock()
    resumed = f' ({done:,} done before)' if done else ''
    logging.info('%s, %s: %s %s to do%s.', self.what, name, f'{total - done:,}', unit, resumed)

  def advance(self, n: int = 1) -> None:
    """`n` more done (0: a line if one is due, though nothing finished meanwhile)."""
    self.done += n
    now = self.clock()
    if now - self._last >= self.interval and (n or self.interval):
      self._last = now
      logging.info('%s', self.line(now))

  def line(self, now: float | None = None) -> str:
    now = self.clock() if now is None else now
    elapsed = max(now - self._start, 1e-9)
    rate = (self.done - self._skipped) / elapsed
    left = self.total - self.done
    eta = duration(left / rate) if rate > 0 else 'unknown'
    share = f' ({100 * self.done / self.total:.1f}%)' if self.total else ''
    return (f'{self.what}, {self.phase_name}: {self.done:,} / {self.total:,} {self.unit}'
            f'{share}, {rate:,.0f} {"img" if self.unit == "images" else self.unit}/s, '
            f'ETA {eta}')

  def finish(self) -> None:
    elapsed = self.clock() - self._start
    logging.info('%s, %s: %s %s in %s.', self.what, self.phase_name, f'{self.done:,}',
                 self.unit, duration(elapsed))


def counted(iterable, what: str, phase: str, total: int):
  """`iterable`'s items, with a progress line every `interval()` seconds (a tfds
  generator)."""
  progress = Progress(what)
  progress.phase(phase, total)
  for item in iterable:
    yield item
    progress.advance()
  progress.finish()
