"""Runs the GPU check's stages one after another, each in a process of its own
(benchmarks/gpu_stage.py) with its own time limit, inside one budget for the whole command.

Why a process per stage: a stage can fail in every way a first run on a new machine fails (an
import, an exception, a CUDA abort, the kernel's OOM killer, a compile that never ends), and
none of these may cost the other stages' figures. A stage that raises is recorded with its
traceback; one killed by a signal is recorded as such; one that overruns its limit is cut
(SIGTERM, then SIGKILL to its process group) and recorded as "cut at N s"; in every case the
figures it had written are kept and the next stage runs. While a stage runs, its results file
is read every second and folded into the report, so a kill of the whole command keeps them.

A stage's limit: its estimate (the calibration's figure for this device, else the guess) times
`CUT_FACTOR`, at least `CUT_MIN_EXTRA_S` over it, and never past the budget; the train step,
which fits its groups to its limit, gets what the later stages' estimates leave. A stage whose
estimate does not fit what is left of the budget is skipped and says so; so is one that needs
a module that did not import.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

from benchmarks import gpu_calibration
from benchmarks import gpu_stage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUT_FACTOR = 2.0
CUT_MIN_EXTRA_S = 20.0
TERM_GRACE_S = 3.0  # between SIGTERM and SIGKILL
POLL_S = 1.0


@dataclasses.dataclass(frozen=True)
class Stage:
  """A stage: the function its process calls ('module:function', as fn(out, context))."""
  name: str
  target: str
  guess_s: float  # estimate where the calibration has none
  needs: tuple[str, ...] = ()  # modules: skipped if one of them failed to import
  budgeted: bool = False  # fits its own work to its limit: takes what later stages leave
  optional: bool = False  # only on what is left at its turn: a budgeted stage keeps none for it


class Runner:
  """Runs `Stage`s into a `report.Report` with the stages' logs and results in `scratch`."""

  def __init__(self, report, scratch: str, env: dict, budget_s: float, kind: str | None,
               calibration: dict, cut_factor: float = CUT_FACTOR,
               cut_min_extra_s: float = CUT_MIN_EXTRA_S):
    self.report, self.scratch, self.env = report, scratch, env
    self.budget_s, self.kind, self.calibration = budget_s, kind, calibration
    self.cut_factor, self.cut_min_extra_s = cut_factor, cut_min_extra_s
    self.failed_imports: set[str] = set()
    for d in ('stages', 'logs'):
      os.makedirs(os.path.join(scratch, d), exist_ok=True)

  def budget_left(self) -> float:
    return self.budget_s - self.report.elapsed()

  def estimate(self, stage: Stage) -> tuple[float, str]:
    return gpu_calibration.estimate(self.calibration, self.kind, stage.name, 'stages',
                                    stage.guess_s)

  def run(self, stages: list[Stage], context: dict) -> None:
    for i, stage in enumerate(stages):
      missing = sorted(set(stage.needs) & self.failed_imports)
      if missing:
        self.report.skip(stage.name, f'needs {", ".join(missing)}, which did not import '
                         '(see the stage that tried)')
        continue
      estimate, source = self.estimate(stage)
      left = self.budget_left()
      if left < estimate:
        self.report.skip(stage.name, f'~{estimate:.0f} s needed ({source}), {left:.0f} s of '
                         'the budget left', estimate_s=estimate)
        continue
      if stage.budgeted:  # what the later stages' estimates leave
        later = sum(self.estimate(s)[0] for s in stages[i + 1:] if not s.optional)
        limit = max(left - later, estimate)
      else:
        limit = min(left, max(self.cut_factor * estimate, estimate + self.cut_min_extra_s))
      self.run_one(stage, context, estimate, source, limit)
      if context.get('device_kind') and context['device_kind'] != self.kind:
        self.kind = self.report.head['device_kind'] = context['device_kind']  # JAX's name

  def run_one(self, stage: Stage, context: dict, estimate: float, source: str,
              limit: float) -> dict:
    """Runs one stage's process to its end or its limit; returns its report entry."""
    result = os.path.join(self.scratch, 'stages', f'{stage.name}.json')
    log = os.path.join(self.scratch, 'logs', f'{stage.name}.log')
    ctx_path = os.path.join(self.scratch, 'stages', f'{stage.name}.context.json')
    gpu_stage.write_json(ctx_path, dict(context, stage=stage.name, target=stage.target,
                                        result=result, scratch=self.scratch,
                                        deadline=time.time() + limit, limit_s=limit))
    if os.path.exists(result):
      os.remove(result)
    entry = self.report.begin(stage.name, estimate_s=estimate, estimate_source=source,
                              limit_s=limit, log=log)
    print(f'# stage {stage.name}: started (estimate {estimate:.0f} s, limit {limit:.0f} s, '
          f'{self.budget_left():.0f} s of the budget left)', flush=True)
    t0 = time.monotonic()
    with open(log, 'w', encoding='utf-8') as log_file:
      proc = subprocess.Popen([sys.executable, '-m', 'benchmarks.gpu_stage', ctx_path],
                              cwd=ROOT, env=self.env, stdout=log_file, stderr=subprocess.STDOUT,
                              process_group=0, preexec_fn=gpu_stage.die_with_parent)
    cut, seen = False, None
    while True:
      try:
        proc.wait(timeout=POLL_S)
        break
      except subprocess.TimeoutExpired:
        pass
      seen = self._fold(entry, result, seen)
      if time.monotonic() - t0 > limit:
        cut = True
        self._end_group(proc, signal.SIGTERM)
        try:
          proc.wait(timeout=TERM_GRACE_S)
        except subprocess.TimeoutExpired:
          self._end_group(proc, signal.SIGKILL)
          proc.wait()
        break
    self._end_group(proc, signal.SIGKILL)  # whatever it started and left behind
    entry['elapsed_s'] = round(time.monotonic() - t0, 1)
    data = self._read(result) or {}
    self._fold(entry, result, None)
    self.failed_imports.update(data.get('failed_imports', []))
    context.update(data.get('exports', {}))
    code = proc.returncode
    entry['exit_code'] = code
    tail = self.report.fold_log(stage.name, log, 'ok' if code == 0 and not cut else 'other')
    if cut:
      entry['status'] = 'cut'
      why = (f'cut at {entry["elapsed_s"]:.0f} s (its limit {limit:.0f} s, estimate '
             f'{estimate:.0f} s): the figures above are those it had written')
    elif code == 0 and data.get('status') in ('ok', 'failed'):
      entry['status'], why = data['status'], None
    else:
      entry['status'] = 'failed'
      why = f'killed by {signal.Signals(-code).name}' if code < 0 else f'exit code {code}'
    error = data.get('error') if entry['status'] != 'cut' else None
    if entry['status'] != 'ok' and not error:
      error = f"the log's last lines:\n{tail}"
    entry['error'] = '\n'.join(e for e in (why, error) if e) or None
    self.report.write()
    print(f'# stage {stage.name}: {entry["status"]} in {entry["elapsed_s"]} s (total '
          f'{self.report.elapsed():.0f} s)', flush=True)
    return entry

  @staticmethod
  def _end_group(proc, sig) -> None:
    try:
      os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
      pass

  @staticmethod
  def _read(path: str) -> dict | None:
    try:
      with open(path, encoding='utf-8') as f:
        return json.load(f)
    except (OSError, ValueError):
      return None

  def _fold(self, entry: dict, path: str, seen):
    """Copies the stage's results into its report entry when its file changed."""
    try:
      stamp = os.stat(path).st_mtime_ns
    except OSError:
      return seen
    if stamp == seen:
      return seen
    data = self._read(path)
    if data is not None:
      entry['results'], entry['markdown'] = data['results'], data['markdown']
      self.report.write()
    return stamp
