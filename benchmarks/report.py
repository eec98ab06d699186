"""A report written as it goes: `report.md` and `report.json` rewritten after every stage and
every result, so that a run cut short (a time limit, a crash of the device) still leaves
everything it measured.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import traceback


class Report:
  """Stages, each {name, status, elapsed_s, results, markdown, error}, in DIR/report.{md,json}."""

  def __init__(self, directory: str, title: str):
    self.directory, self.title = directory, title
    os.makedirs(directory, exist_ok=True)
    self.start = time.perf_counter()
    self.stages: list[dict] = []
    self.write()

  def elapsed(self) -> float:
    return time.perf_counter() - self.start

  @contextlib.contextmanager
  def stage(self, name: str):
    """A stage: 'ok' when its body returns, 'failed' with the traceback when it raises (the
    next stage still runs: one command must return every figure it can)."""
    entry = {'name': name, 'status': 'running', 'started_s': round(self.elapsed(), 1),
             'elapsed_s': None, 'results': {}, 'markdown': [], 'error': None}
    self.stages.append(entry)
    self.write()
    t0 = time.perf_counter()
    try:
      yield entry
      entry['status'] = 'ok' if entry['status'] == 'running' else entry['status']
    except Exception:  # pylint: disable=broad-except
      entry['status'] = 'failed'
      entry['error'] = traceback.format_exc(limit=12)
      print(entry['error'], flush=True)
    finally:
      entry['elapsed_s'] = round(time.perf_counter() - t0, 1)
      self.write()
      print(f'# stage {name}: {entry["status"]} in {entry["elapsed_s"]} s '
            f'(total {self.elapsed():.0f} s)', flush=True)

  def skip(self, name: str, why: str) -> None:
    self.stages.append({'name': name, 'status': 'skipped', 'started_s': round(self.elapsed(), 1),
                        'elapsed_s': 0.0, 'results': {}, 'markdown': [f'Skipped: {why}'],
                        'error': None})
    self.write()
    print(f'# stage {name}: skipped ({why})', flush=True)

  def add(self, entry: dict, key: str, value, markdown: str | None = None) -> None:
    """A result of the running stage, written at once."""
    entry['results'][key] = value
    if markdown is not None:
      entry['markdown'].append(markdown)
    self.write()

  def write(self) -> None:
    data = {'title': self.title, 'elapsed_s': round(self.elapsed(), 1), 'stages': self.stages}
    _atomic(os.path.join(self.directory, 'report.json'),
            json.dumps(data, indent=1, default=str))
    lines = [f'# {self.title}', '', f'Elapsed: {self.elapsed():.0f} s.', '']
    for s in self.stages:
      took = '' if s['elapsed_s'] is None else f", {s['elapsed_s']} s"
      lines += [f"## {s['name']} ({s['status']}{took}, from {s['started_s']} s)", '']
      lines += [m + '\n' for m in s['markdown']]
      if s['error']:
        lines += ['```', s['error'].rstrip(), '```', '']
    _atomic(os.path.join(self.directory, 'report.md'), '\n'.join(lines) + '\n')


def _atomic(path: str, text: str) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.write(text)
  os.replace(tmp, path)
