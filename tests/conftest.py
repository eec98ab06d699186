"""Test configuration: 8 CPU devices for the mesh tests and XLA:CPU's settings, set before
JAX initialises; absl flags marked parsed as launch.py parses them (grain reads its flags);
and no test may leave a process behind."""

import ctypes
import os
import signal

from absl import flags
import pytest

from alexnet_jax import xla_cpu

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
xla_cpu.configure()
flags.FLAGS.mark_as_parsed()

PR_SET_CHILD_SUBREAPER = 36


_OWN_CACHE = []


def pytest_configure(config):
  del config
  import tempfile

  from tests import helpers
  if helpers.SHARED_XLA_CACHE not in os.environ:  # launch.py runs share one XLA cache
    _OWN_CACHE.append(tempfile.mkdtemp(prefix='alexnet_jax_xla_cache_'))
    os.environ[helpers.SHARED_XLA_CACHE] = _OWN_CACHE[0]
  # Orphaned grandchildren (a launch.py's worker processes) are re-parented to this process,
  # so that the check below sees them too.
  try:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
  except (OSError, AttributeError):
    pass


def pytest_unconfigure(config):
  del config
  import shutil
  for path in _OWN_CACHE:
    shutil.rmtree(path, ignore_errors=True)


def _children() -> dict[int, str]:
  """{pid: command} of this process's live children (zombies are reaped)."""
  while True:
    try:
      pid, _ = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
      break
    if pid == 0:
      break
  out = {}
  me = str(os.getpid())
  for entry in os.listdir('/proc'):
    if not entry.isdigit():
      continue
    try:
      with open(f'/proc/{entry}/stat', encoding='utf-8') as f:
        stat = f.read()
      fields = stat[stat.rindex(')') + 2:].split()
      if fields[1] == me and fields[0] != 'Z':
        with open(f'/proc/{entry}/cmdline', 'rb') as f:
          out[int(entry)] = f.read().replace(b'\0', b' ').decode(errors='replace')[:200]
    except (OSError, ValueError):
      continue
  return out


@pytest.fixture(autouse=True)
def no_process_outlives_its_test():
  before = set(_children())
  yield
  # multiprocessing's resource tracker (started by grain's worker processes in this process)
  # serves the whole test session and ends with it.
  left = {pid: cmd for pid, cmd in _children().items()
          if pid not in before and 'multiprocessing.resource_tracker' not in cmd}
  for pid in left:
    try:
      os.kill(pid, signal.SIGKILL)
    except OSError:
      pass
  _children()  # reap them
  assert not left, f'processes outlived the test: {left}'


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  """In CI (CI=true), a skipped test fails: CI installs everything the tests need, so a skip
  there means a test that should have run did not."""
  outcome = yield
  report = outcome.get_result()
  if (report.skipped and os.environ.get('CI', '').lower() in ('true', '1')
      and not hasattr(report, 'wasxfail')):
    reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
    report.outcome = 'failed'
    report.longrepr = f'skipped in CI, where it must run: {reason}'
