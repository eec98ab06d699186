"""XLA:CPU settings: flags added without overriding the user's, and tcmalloc preloaded."""

import os
import subprocess
import sys

import pytest

from alexnet_jax import xla_cpu

PROBE = ('from alexnet_jax import xla_cpu; xla_cpu.preload_allocator(); import os; '
         "maps = open('/proc/self/maps').read(); "
         "print(*[n for n in xla_cpu.ALLOCATORS if n in maps] or ['none'], os.getpid())")


def test_flags_are_added_and_the_users_win():
  env = {}
  xla_cpu.configure(env)
  assert '--xla_cpu_experimental_ynn_fusion_type=reduce' in env['XLA_FLAGS'].split()
  env = {'XLA_FLAGS': '--xla_cpu_experimental_ynn_fusion_type=dot --foo=1'}
  xla_cpu.configure(env)
  assert env['XLA_FLAGS'] == '--xla_cpu_experimental_ynn_fusion_type=dot --foo=1'


def test_a_flag_the_installed_jaxlib_does_not_know_is_not_set(monkeypatch):
  """An unknown XLA_FLAGS name aborts the process when JAX starts: such a flag is left out."""
  monkeypatch.setitem(xla_cpu.FLAG_EVIDENCE, 'xla_cpu_experimental_ynn_fusion_type',
                      (b'xla_cpu_no_such_flag_in_any_jaxlib',))
  env = {}
  xla_cpu.configure(env)
  assert env['XLA_FLAGS'] == ''
  assert xla_cpu.known_to_jaxlib((b'xla_cpu_experimental_ynn_fusion_type',))


def probe(**env):
  environ = {k: v for k, v in os.environ.items() if k not in ('LD_PRELOAD', xla_cpu.MALLOC_ENV)}
  proc = subprocess.run([sys.executable, '-c', PROBE], env={**environ, **env},
                        capture_output=True, text=True)
  return proc.returncode, proc.stdout.split(), proc.stderr.strip()


def test_the_pip_installed_allocator_is_preloaded_unless_turned_off():
  """mimalloc comes with requirements.txt, so a fresh install gets it without Debian."""
  rc, (loaded, _), _ = probe()
  assert (rc, loaded) == (0, 'mimalloc')
  rc, (loaded, _), _ = probe(**{xla_cpu.MALLOC_ENV: 'system'})
  assert (rc, loaded) == (0, 'none')


@pytest.mark.skipif(xla_cpu.allocator_path('tcmalloc') is None,
                    reason='libtcmalloc-minimal4 not installed')
def test_tcmalloc_when_asked_for():
  rc, (loaded, _), _ = probe(**{xla_cpu.MALLOC_ENV: 'tcmalloc'})
  assert (rc, loaded) == (0, 'tcmalloc')


def test_an_unknown_allocator_is_one_sentence():
  rc, _, err = probe(**{xla_cpu.MALLOC_ENV: 'jemalloc'})
  assert rc == 1 and err == ('error: ALEXNET_JAX_MALLOC=jemalloc is not one of auto, mimalloc, '
                             'tcmalloc, system.')
