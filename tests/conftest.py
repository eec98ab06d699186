"""Test configuration: 8 CPU devices for the mesh tests and XLA:CPU's settings, set before
JAX initialises (JAX_PLATFORMS=cpu unless set: the GPU check sets it); absl flags marked
parsed as launch.py parses them (grain reads its flags); no test may leave a process behind;
and the gpu-marked tests run on the backend the GPU check asked for, or fail."""

import ctypes
import os
import signal
import time

from absl import flags
import pytest

from alexnet_jax import xla_cpu

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
xla_cpu.configure()
flags.FLAGS.mark_as_parsed()

PR_SET_CHILD_SUBREAPER = 36
# Set by the GPU check's tests stage (benchmarks/gpu_env.py): the backend the gpu-marked tests
# must run on ('gpu'), and a file where each of them records the backend it ran on.
EXPECT_BACKEND = 'ALEXNET_JAX_EXPECT_BACKEND'
BACKEND_LOG = 'ALEXNET_JAX_BACKEND_LOG'


_OWN_CACHE = []


def pytest_configure(config):
  del config
  import tempfile

  from tests import helpers
  if helpers.SHARED_XLA_CACHE not in os.environ:  # launch.py runs share one XLA cache
    _OWN_CACHE.append(tempfile.mkdtemp(prefix='alexnet_jax_xla_cache_'))
    os.environ[helpers.SHARED_XLA_CACHE] = _OWN_CACHE[0]
  # The tests' own compilations use it too (set before the test modules import JAX): a
  # network compiled by one test, file or xdist worker is loaded by the others.
  os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.environ[helpers.SHARED_XLA_CACHE])
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
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


@pytest.fixture(scope='session')
def xla_cache():
  """The persistent XLA cache that every launch of the session shares, across test files and
  xdist workers (pytest_configure makes it): a network compiles once for all of them."""
  from tests import helpers
  return os.environ[helpers.SHARED_XLA_CACHE]


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
  # serves the whole test session and ends with it. A subprocess's own tracker, orphaned to
  # this subreaper, ends when that subprocess has: a moment's grace for what is exiting.
  deadline = time.monotonic() + 10
  while True:
    left = {pid: cmd for pid, cmd in _children().items()
            if pid not in before and 'multiprocessing.resource_tracker' not in cmd}
    if not left or time.monotonic() > deadline:
      break
    time.sleep(0.1)
  for pid in left:
    try:
      os.kill(pid, signal.SIGKILL)
    except OSError:
      pass
  _children()  # reap them
  assert not left, f'processes outlived the test: {left}'


@pytest.fixture(autouse=True)
def on_the_backend_asked_for(request):
  """A gpu-marked test records the backend JAX runs it on and, where the GPU check asked for
  one (EXPECT_BACKEND), fails on any other: on a GPU machine whose CUDA plugin did not load,
  JAX would otherwise run these tests on the CPU and pass."""
  if request.node.get_closest_marker('gpu') is not None and (
      os.environ.get(EXPECT_BACKEND) or os.environ.get(BACKEND_LOG)):
    import jax
    backend = jax.default_backend()
    request.node.user_properties += [('backend', backend),
                                     ('device_kind', jax.devices()[0].device_kind)]
    expected = os.environ.get(EXPECT_BACKEND)
    if expected and backend != expected:
      pytest.fail(f'this test ran on {backend}, and the GPU check asked for {expected} '
                  f'(JAX_PLATFORMS={os.environ.get("JAX_PLATFORMS")})')
  yield


def _record_backend(item, report) -> None:
  """One line per gpu-marked test in BACKEND_LOG: the backend it saw and its outcome."""
  props = dict(item.user_properties)
  if 'backend' not in props or not (report.when == 'call' or report.failed):
    return
  import json
  with open(os.environ[BACKEND_LOG], 'a', encoding='utf-8') as f:
    f.write(json.dumps({'test': item.nodeid, 'phase': report.when, 'backend': props['backend'],
                        'device_kind': props['device_kind'], 'outcome': report.outcome}) + '\n')


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  """In CI (CI=true), a skipped test fails: CI installs everything the tests need, so a skip
  there means a test that should have run did not."""
  outcome = yield
  report = outcome.get_result()
  if os.environ.get(BACKEND_LOG):
    _record_backend(item, report)
  if (report.skipped and os.environ.get('CI', '').lower() in ('true', '1')
      and not hasattr(report, 'wasxfail')):
    reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
    report.outcome = 'failed'
    report.longrepr = f'skipped in CI, where it must run: {reason}'
