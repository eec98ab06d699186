"""One stage of the GPU check, in a process of its own (benchmarks/gpu_runner.py starts it):

    python -m benchmarks.gpu_stage CONTEXT.json

CONTEXT.json names the stage's function ('module:function', called as fn(out, context)),
where its results go, its deadline and what the stages before it found (the best batch, the
measured peaks). The function writes each result through `out` as it measures it; `out`
rewrites the results file atomically every time, so that a stage cut at its deadline, killed
by a signal or crashed leaves every figure it had measured. An exception is recorded with its
traceback and the process exits 1; an ImportError also names the module it could not import.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import signal
import sys
import traceback

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
  """`preexec_fn` of a child process: SIGKILL when the process that started it dies (the
  check killed at its time limit by whoever ran it, a stage cut), so that nothing runs on
  with the GPU."""
  try:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
  except (OSError, AttributeError):
    pass


def write_json(path: str, data) -> None:
  """Written whole or not at all: a reader never sees half a file."""
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(data, f, indent=1, default=str)
  os.replace(tmp, path)


class Out:
  """A stage's results, markdown, exports (for later stages) and status, in one JSON file."""

  def __init__(self, path: str):
    self.path = path
    self.data = {'status': 'running', 'results': {}, 'markdown': {}, 'exports': {},
                 'failed_imports': [], 'error': None}
    self.write()

  @property
  def results(self) -> dict:
    return self.data['results']

  def add(self, key: str, value, markdown: str | None = None) -> None:
    """A result under `key` (replacing an earlier one), with its markdown for the report."""
    self.data['results'][key] = value
    if markdown is not None:
      self.data['markdown'][key] = markdown
    self.write()

  def note(self, key: str, markdown: str) -> None:
    self.data['markdown'][key] = markdown
    self.write()

  def export(self, key: str, value) -> None:
    """A value the later stages read from their context (the best batch, the peaks)."""
    self.data['exports'][key] = value
    self.write()

  def import_failed(self, module: str) -> None:
    """A module that did not import: the stages that need it are skipped."""
    if module not in self.data['failed_imports']:
      self.data['failed_imports'].append(module)
    self.write()

  def fail(self, why: str) -> None:
    """The stage ran to its end but what it checked failed (a test, a command's exit code)."""
    self.data['status'] = 'failed'
    self.data['error'] = why
    self.write()

  def write(self) -> None:
    write_json(self.path, self.data)


def main(argv: list[str]) -> int:
  with open(argv[1], encoding='utf-8') as f:
    context = json.load(f)
  out = Out(context['result'])
  from alexnet_jax import xla_cpu  # stdlib only: before any stage starts JAX
  xla_cpu.configure()
  try:
    module, _, name = context['target'].partition(':')
    getattr(importlib.import_module(module), name)(out, context)
  except Exception as e:  # pylint: disable=broad-except  (recorded whole; the check goes on)
    if isinstance(e, ImportError) and e.name:
      out.import_failed(e.name)
    out.data['status'] = 'failed'
    out.data['error'] = traceback.format_exc()[-6000:]
    out.write()
    traceback.print_exc()
    return 1
  if out.data['status'] == 'running':
    out.data['status'] = 'ok'
  out.write()
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
