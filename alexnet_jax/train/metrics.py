"""Metric writers: console, TensorBoard event files and `metrics.jsonl`; the live progress line.

Only process 0 writes; other processes get a writer that drops everything.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time

from alexnet_jax.errors import OutputError


def _tensorboardx():
  """tensorboardX's event writer, protos and summaries. Its package imports PyTorch where
  that is installed (for writers this project does not use): 1.5 s of every run's start.
  Hidden from it while it loads (its import is optional there), PyTorch imports as usual
  afterwards."""
  hide = 'torch' not in sys.modules
  if hide:
    sys.modules['torch'] = None  # `import torch` raises ImportError
  try:
    from tensorboardX import summary
    from tensorboardX.event_file_writer import EventsWriter
    from tensorboardX.proto import event_pb2
  finally:
    if hide:
      del sys.modules['torch']
  return EventsWriter, event_pb2, summary


class MetricWriter:
  """Writes scalars for a step to the console, a TensorBoard event file and one JSON line
  per call (`metrics.jsonl`), synchronously: a full disk surfaces here as one OutputError,
  not in a background thread or at exit."""

  def __init__(self, workdir: str, enabled: bool = True, resume_step: int = 0):
    self.enabled = enabled
    self._events = None
    self._jsonl = None
    self.progress = None  # a Progress whose live line is cleared before each log line
    if enabled:
      # tensorboardX's synchronous writer: TensorBoard's event files without TensorFlow.
      EventsWriter, event_pb2, self._summary = _tensorboardx()
      self._event_pb2 = event_pb2
      jsonl = os.path.join(workdir, 'metrics.jsonl')
      try:
        self._events = EventsWriter(os.path.join(workdir, 'events'))
        if resume_step:  # TensorBoard drops what a killed run logged after the restored step
          self._events.write_event(event_pb2.Event(
              wall_time=time.time(), step=resume_step + 1,
              session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
        truncate_after(jsonl, resume_step)
        self._jsonl = open(jsonl, 'a', encoding='utf-8')
      except OSError as e:
        raise OutputError(f'Writing the metrics into {workdir} failed '
                          f'({e.strerror or e}).') from None

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self.enabled:
      return
    summary = self._summary
    scalars = {k: float(v) for k, v in scalars.items()}
    record = {'step': step, 'time': round(time.time(), 3)}
    record.update({k: (v if math.isfinite(v) else str(v)) for k, v in scalars.items()})
    try:
      for k, v in scalars.items():
        self._events.write_event(self._event_pb2.Event(
            wall_time=record['time'], step=step, summary=summary.scalar(k, v)))
      self._events.flush()
      self._jsonl.write(json.dumps(record) + '\n')
      self._jsonl.flush()
    except OSError as e:
      raise OutputError(f'Writing the metrics of step {step} failed ({e.strerror or e}).'
                        ) from None
    if self.progress is not None:
      self.progress.clear()  # the log line replaces the live line, which the next step redraws
    logging.info('step %d: %s', step, ', '.join(f'{k}={_fmt(v)}' for k, v in scalars.items()))

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._events.close()


class Progress:
  """A live `step N/total, images/s, ETA` line on stderr, redrawn with a carriage return, when
  stderr is a terminal. Elsewhere (files, CI logs) it writes nothing: the periodic log lines
  are the progress record there, and carriage returns would only clutter the file."""

  def __init__(self, total_steps: int, batch_size: int, enabled: bool = True, stream=None,
               min_interval: float = 0.5):
    self.stream = sys.stderr if stream is None else stream
    self.enabled = enabled and self.stream.isatty()
    self.total, self.batch = total_steps, batch_size
    self.min_interval = min_interval
    self._t0 = self._first = None
    self._last_draw = 0.0
    self._shown = False

  def start(self, step: int) -> None:
    """Times from here: `step` has run and compiled, so compilation stays out of images/s."""
    self._t0, self._first = time.perf_counter(), step

  def update(self, step: int) -> None:
    if not self.enabled or self._t0 is None:
      return
    now = time.perf_counter()
    if now - self._last_draw < self.min_interval and step != self.total:
      return
    self._last_draw = now
    done = step - self._first
    rate = done / (now - self._t0) if done and now > self._t0 else 0.0
    eta = _duration((self.total - step) / rate) if rate else '?'
    line = (f'step {step}/{self.total} ({100.0 * step / self.total:.0f}%)  '
            f'{rate * self.batch:.1f} images/s  ETA {eta}')
    self.stream.write('\r\033[K' + line)
    self.stream.flush()
    self._shown = True

  def clear(self) -> None:
    if self._shown:
      self.stream.write('\r\033[K')
      self.stream.flush()
      self._shown = False


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  h, rest = divmod(seconds, 3600)
  return f'{h}:{rest // 60:02d}:{rest % 60:02d}'


def device_memory_in_use(devices) -> float | None:
  """The most bytes in use on any of `devices`, where the backend reports it (GPU, TPU; CPU
  does not): the device closest to running out is the one that matters."""
  used = []
  for d in devices:
    try:
      stats = d.memory_stats()
    except (NotImplementedError, RuntimeError):  # a backend without it (JaxRuntimeError)
      stats = None
    if stats and stats.get('bytes_in_use') is not None:
      used.append(stats['bytes_in_use'])
  return float(max(used)) if used else None


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
