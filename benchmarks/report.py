"""The GPU check's report: three files in the output folder, rewritten (each whole, through a
temporary file and a rename) when a stage starts, whenever a running stage has written a new
result, and when it ends, so that a command killed at any moment leaves every figure measured
so far.

  report.json  everything: provenance, every stage's status, times, results and error
  report.md    the same for reading, the commit and the command line at the top
  logs.txt     the tail of each stage's log (its whole log stays in the scratch folder)

Nothing else goes into the output folder: the GPU machine returns at most 8 files.
"""

from __future__ import annotations

import datetime
import json
import os
import time

FILES = ('report.json', 'report.md', 'logs.txt')
LOG_TAIL = {'ok': 1500, 'other': 5000}  # characters of each stage's log in logs.txt


class Report:
  """Stages, each {name, status, started_s, elapsed_s, estimate_s, limit_s, results,
  markdown, error, log}; status one of running, ok, failed, cut, skipped."""

  def __init__(self, directory: str, title: str, head: dict):
    self.directory, self.title = directory, title
    self.head = dict(head, started=datetime.datetime.now().astimezone().isoformat(
        timespec='seconds'))
    self.start = time.monotonic()
    self.stages: list[dict] = []
    self.logs: dict[str, str] = {}
    self.calibration: dict = {}
    os.makedirs(directory, exist_ok=True)
    self.write()

  def elapsed(self) -> float:
    return time.monotonic() - self.start

  def begin(self, name: str, **fields) -> dict:
    entry = {'name': name, 'status': 'running', 'started_s': round(self.elapsed(), 1),
             'elapsed_s': None, 'results': {}, 'markdown': {}, 'error': None, **fields}
    self.stages.append(entry)
    self.write()
    return entry

  def skip(self, name: str, why: str, **fields) -> None:
    self.stages.append({'name': name, 'status': 'skipped', 'started_s': round(self.elapsed(), 1),
                        'elapsed_s': None, 'results': {}, 'markdown': {}, 'error': None,
                        'why': why, **fields})
    self.write()
    print(f'# stage {name}: skipped ({why})', flush=True)

  def write(self) -> None:
    data = {'title': self.title, **self.head, 'elapsed_s': round(self.elapsed(), 1),
            'stages': self.stages, 'calibration': self.calibration}
    _atomic(os.path.join(self.directory, 'report.json'), json.dumps(data, indent=1,
                                                                   default=str))
    _atomic(os.path.join(self.directory, 'report.md'), self.markdown())
    logs = [f'===== {name} =====\n{tail or "(empty)"}\n' for name, tail in self.logs.items()]
    _atomic(os.path.join(self.directory, 'logs.txt'), '\n'.join(logs) or '(no stage yet)\n')

  def fold_log(self, name: str, path: str, status: str) -> str:
    """Keeps the tail of a stage's log for logs.txt; returns the last lines for the report."""
    try:
      with open(path, encoding='utf-8', errors='replace') as f:
        text = f.read()
    except OSError as e:
      text = f'(no log: {e})'
    self.logs[name] = text[-LOG_TAIL['ok' if status == 'ok' else 'other']:]
    return text[-1500:]

  def markdown(self) -> str:
    h = self.head
    lines = [f'# {self.title}', '',
             f"- code: {h.get('provenance_line', '?')}",
             f"- command: `{h.get('provenance', {}).get('command', '?')}`",
             f"- device: {h.get('device_kind') or '?'}; started {h['started']}; "
             f"elapsed {self.elapsed():.0f} s of a {h.get('budget_s', '?')} s budget",
             f"- scratch (not returned): {h.get('scratch', '?')}", '',
             '| stage | status | s | estimate s | limit s |', '|---|---|---:|---:|---:|']

    for s in self.stages:
      lines.append(f"| {s['name']} | {s['status']} | {_s(s['elapsed_s'])} | "
                   f"{_s(s.get('estimate_s'))} | {_s(s.get('limit_s'))} |")
    lines.append('')
    for s in self.stages:
      took = '' if s['elapsed_s'] is None else f", {_s(s['elapsed_s'])} s"
      lines += [f"## {s['name']} ({s['status']}{took})", '']
      if s.get('why'):
        lines += [s['why'], '']
      if s.get('estimate_source'):
        lines += [f"Estimate {_s(s['estimate_s'])} s ({s['estimate_source']}); limit "
                  f"{_s(s['limit_s'])} s.", '']
      lines += [m + '\n' for m in s['markdown'].values()]
      bare = {k: v for k, v in s['results'].items() if k not in s['markdown']}
      if bare and s['status'] != 'ok':  # an unfinished stage's figures without their text
        # yet: in brief (report.json has them whole)
        lines += [f'`{k}`: `{json.dumps(v, default=str)[:300]}`' for k, v in bare.items()]
        lines.append('')
      if s['error']:
        lines += ['```', s['error'].rstrip()[-2500:], '```', '']
    return '\n'.join(lines) + '\n'


def _s(seconds) -> str:
  if seconds is None:
    return '-'
  return f'{seconds:.0f}' if seconds >= 10 else f'{seconds:.1f}'


def _atomic(path: str, text: str) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.write(text)
  os.replace(tmp, path)
