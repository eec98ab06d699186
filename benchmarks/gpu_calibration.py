"""The GPU check's stage times as last measured, by device kind: the next run's estimates.

benchmarks/gpu_calibration.json holds, for each device kind ('NVIDIA H100 80GB HBM3', 'NVIDIA
H200', 'dry run (cpu)'), each stage's seconds and each train-step group's, from the report of
a real run. A run reads its device's entry to plan the budget, and falls back to the CPU
compile counts' guesses (benchmarks/gpu_plan.py ESTIMATE_S) where the entry has no figure.
Every report carries its own times as `calibration` (report.json); after a run:

    python -m benchmarks.gpu_calibration path/to/report.json   # merges them here; commit it
"""

from __future__ import annotations

import json
import os
import sys

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'gpu_calibration.json')
DRY_RUN_KIND = 'dry run (cpu)'


def load(path: str = PATH) -> dict:
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except FileNotFoundError:
    return {}


def estimate(calibration: dict, kind: str | None, what: str, section: str,
             fallback: float) -> tuple[float, str]:
  """(seconds, where from) of a stage (section 'stages') or a train-step group ('groups'):
  the calibration's figure for this device kind, else `fallback`. A stage that was cut when
  it was measured took longer than its figure: half as much again is expected."""
  entry = calibration.get(kind or '', {}).get(section, {}).get(what)
  if entry is None:
    return float(fallback), 'guess (CPU compile counts)'
  seconds = float(entry['s'])
  if entry.get('cut'):
    return 1.5 * seconds, f'calibration ({kind}): cut at {seconds:.0f} s there'
  return seconds, f'calibration ({kind})'


def from_report(report: dict) -> tuple[str, dict]:
  """(device kind, {'stages': ..., 'groups': ..., 'from': ...}) measured in one report:
  every stage that ran (a cut one marked), not the skipped ones."""
  stages, groups = {}, {}
  for s in report['stages']:
    if s['status'] in ('ok', 'failed', 'cut') and s.get('elapsed_s') is not None:
      stages[s['name']] = {'s': s['elapsed_s'], **({'cut': True} if s['status'] == 'cut' else {})}
    for key, seconds in (s.get('results', {}).get('group_s') or {}).items():
      groups[key] = {'s': seconds}
  source = report.get('provenance', {}).get('commit') or 'unknown commit'
  return report['device_kind'], {'stages': stages, 'groups': groups,
                                 'from': f"{source} {report.get('started', '')}".strip()}


def merge(calibration: dict, kind: str, measured: dict) -> dict:
  """The calibration with this kind's entry updated by `measured` (what was not measured
  keeps its old figure)."""
  out = json.loads(json.dumps(calibration))
  entry = out.setdefault(kind, {'stages': {}, 'groups': {}})
  for section in ('stages', 'groups'):
    entry.setdefault(section, {}).update(measured[section])
  entry['from'] = measured['from']
  return out


def main(argv: list[str]) -> int:
  if len(argv) != 2:
    print(__doc__)
    return 2
  with open(argv[1], encoding='utf-8') as f:
    report = json.load(f)
  kind, measured = from_report(report)
  updated = merge(load(), kind, measured)
  with open(PATH, 'w', encoding='utf-8') as f:
    json.dump(updated, f, indent=1, sort_keys=True)
    f.write('\n')
  print(f'{PATH}: {kind}: {len(measured["stages"])} stages, {len(measured["groups"])} groups')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
