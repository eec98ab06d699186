"""Metric writers: console, TensorBoard event files and `metrics.jsonl`.

Only process 0 writes; other processes get a writer that drops everything.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time


class MetricWriter:
  """Writes scalars for a step to the console, TensorBoard and one JSON line per call."""

  def __init__(self, workdir: str, enabled: bool = True, resume_step: int = 0):
    self.enabled = enabled
    self._tb = None
    self._jsonl = None
    if enabled:
      from tensorboardX import SummaryWriter  # pure-Python event files, no TensorFlow
      # purge_step: TensorBoard drops the events a killed run wrote after the restored step.
      self._tb = SummaryWriter(logdir=workdir, flush_secs=30,
                               purge_step=resume_step + 1 if resume_step else None)
      truncate_after(os.path.join(workdir, 'metrics.jsonl'), resume_step)
      self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a', encoding='utf-8')

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    for k, v in scalars.items():
      self._tb.add_scalar(k, v, global_step=step)
    record = {'step': step, 'time': round(time.time(), 3)}
    record.update({k: (v if math.isfinite(v) else str(v)) for k, v in scalars.items()})
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()
    logging.info('step %d: %s', step, ', '.join(f'{k}={_fmt(v)}' for k, v in scalars.items()))

  def flush(self) -> None:
    if self.enabled:
      self._tb.flush()
      self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()


def truncate_after(path: str, step: int) -> None:
  """Keeps the records of steps <= `step`: a run killed after its last checkpoint logged steps
  that the resumed run logs again, and may have left half a line."""
  if not os.path.exists(path):
    return
  kept = []
  with open(path, encoding='utf-8') as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:
        continue
      if isinstance(record, dict) and isinstance(record.get('step'), int) \
          and record['step'] <= step:
        kept.append(line if line.endswith('\n') else line + '\n')
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.writelines(kept)
  os.replace(tmp, path)


def _fmt(v: float) -> str:
  return f'{v:.4g}' if abs(v) < 1e4 else f'{v:.0f}'
