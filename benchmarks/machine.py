"""Is the machine quiet enough for a timing to mean anything?

A CPU figure counts only when nothing else ran: the 1-minute load average before the
benchmark starts is under `MAX_LOAD`, and no other process used more than `MAX_OTHERS` of a
core while it ran. `Quiet` records both, and the processes that did use the CPU, so that a
row taken on a loaded machine is marked as not comparable rather than reported.
"""

from __future__ import annotations

import os
import time

MAX_LOAD = 0.5  # 1-minute load average before the benchmark
MAX_OTHERS = 0.05  # cores used by other processes, on average, while it ran
CLOCK_TICKS = os.sysconf('SC_CLK_TCK')


def load_average() -> float:
  return os.getloadavg()[0]


def _cpu_seconds() -> dict[int, tuple[str, float]]:
  """{pid: (command, user + system CPU seconds)} of every process but this one and its
  children (a benchmark's own threads and workers are not 'others')."""
  me = os.getpid()
  out = {}
  for entry in os.listdir('/proc'):
    if not entry.isdigit() or int(entry) == me:
      continue
    try:
      with open(f'/proc/{entry}/stat', encoding='utf-8') as f:
        stat = f.read()
      name = stat[stat.index('(') + 1:stat.rindex(')')]
      fields = stat[stat.rindex(')') + 2:].split()
      if int(fields[1]) == me:  # ppid: our own worker processes
        continue
      out[int(entry)] = (name, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    except (OSError, ValueError, IndexError):
      continue
  return out


class Quiet:
  """Call `start()` before a measurement and `stop()` after; `report()` says whether the
  machine was quiet, with the load before and after and the other processes that ran."""

  def __init__(self):
    self.load_before = load_average()
    self._t0 = self._cpu0 = None
    self.others: list[tuple[str, float]] = []
    self.load_after = None
    self.elapsed = 0.0

  def start(self) -> None:
    self._t0, self._cpu0 = time.monotonic(), _cpu_seconds()

  def stop(self) -> None:
    self.elapsed = time.monotonic() - self._t0
    used = {}
    for pid, (name, seconds) in _cpu_seconds().items():
      before = self._cpu0.get(pid, (name, 0.0))[1]
      if seconds - before > 0:
        used[f'{name} ({pid})'] = seconds - before
    self.others = sorted(used.items(), key=lambda kv: -kv[1])[:5]
    self.load_after = load_average()

  @property
  def others_cores(self) -> float:
    return sum(s for _, s in self.others) / self.elapsed if self.elapsed else 0.0

  @property
  def quiet(self) -> bool:
    return self.load_before < MAX_LOAD and self.others_cores < MAX_OTHERS

  def report(self) -> dict:
    return {'quiet': self.quiet, 'load_before': round(self.load_before, 2),
            'load_after': None if self.load_after is None else round(self.load_after, 2),
            'other_processes_cores': round(self.others_cores, 3),
            'other_processes': [f'{name}: {s:.1f} s' for name, s in self.others]}
