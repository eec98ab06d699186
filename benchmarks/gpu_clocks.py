"""The GPU's clocks, power and temperature while a timing runs: `nvidia-smi` sampled every
500 ms in the background, summarised as min / median / max. A figure taken while the SM clock
sagged (power or heat) is not the card's; the report shows which. Where nvidia-smi is missing
(a CPU), the summary says so and nothing else changes.
"""

from __future__ import annotations

import statistics
import subprocess
import threading

QUERY = ('clocks.sm', 'clocks.mem', 'power.draw', 'temperature.gpu')
NAMES = ('sm_mhz', 'mem_mhz', 'power_w', 'temp_c')


class Sampler:
  """`with Sampler() as s: ...timed work...`; then `s.summary()`."""

  def __init__(self, interval_ms: int = 500):
    self.interval_ms = interval_ms
    self.samples: list[tuple[float, ...]] = []
    self.error: str | None = None
    self._proc = None
    self._thread = None

  def __enter__(self):
    try:
      self._proc = subprocess.Popen(
          ['nvidia-smi', f'--query-gpu={",".join(QUERY)}', '--format=csv,noheader,nounits',
           '--id=0', f'--loop-ms={self.interval_ms}'],
          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    except OSError as e:  # no nvidia-smi: a CPU, or an image without it
      self.error = f'nvidia-smi not run: {e.strerror or e}'
      return self
    self._thread = threading.Thread(target=self._read, daemon=True)
    self._thread.start()
    return self

  def _read(self) -> None:
    for line in self._proc.stdout:
      try:
        self.samples.append(tuple(float(v) for v in line.split(',')))
      except ValueError:  # '[N/A]' or a header
        continue

  def __exit__(self, *exc) -> None:
    if self._proc is not None:
      self._proc.terminate()
      try:
        self._proc.wait(timeout=5)
      except subprocess.TimeoutExpired:
        self._proc.kill()
        self._proc.wait()
      self._thread.join(timeout=5)

  def summary(self) -> dict:
    """{'samples': n, 'sm_mhz': [min, median, max], ...}, or {'error': why}."""
    if self.error or not self.samples:
      return {'error': self.error or 'no samples (too short, or nvidia-smi printed none)'}
    out = {'samples': len(self.samples)}
    for i, name in enumerate(NAMES):
      values = [s[i] for s in self.samples if len(s) > i]
      if values:
        out[name] = [min(values), statistics.median(values), max(values)]
    return out


def text(summary: dict | None) -> str:
  """'SM 1980 MHz (1755-1980), mem 2619 MHz, 480 W (..), 61 C' for a report line."""
  if not summary:
    return '-'
  if 'error' in summary:
    return summary['error']
  parts = []
  for name, unit, label in (('sm_mhz', 'MHz', 'SM'), ('mem_mhz', 'MHz', 'mem'),
                            ('power_w', 'W', 'power'), ('temp_c', 'C', 'temp')):
    if name in summary:
      lo, med, hi = summary[name]
      parts.append(f'{label} {med:.0f} {unit} ({lo:.0f}-{hi:.0f})')
  return ', '.join(parts) + f" over {summary['samples']} samples"
