"""XLA:CPU settings: flags added without overriding the user's, and tcmalloc preloaded."""

import os
import subprocess
import sys

import pytest

from alexnet_jax import xla_cpu

PROBE = ('from alexnet_jax import xla_cpu; xla_cpu.preload_tcmalloc(); import os; '
         "print(any('tcmalloc' in l for l in open('/proc/self/maps')), os.getpid())")


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
                        capture_output=True, text=True, check=True)
  return proc.stdout.split()


@pytest.mark.skipif(xla_cpu.tcmalloc_path() is None, reason='libtcmalloc-minimal4 not installed')
def test_tcmalloc_is_preloaded_in_the_same_process_unless_turned_off():
  loaded, _ = probe()
  assert loaded == 'True'
  loaded, _ = probe(**{xla_cpu.MALLOC_ENV: 'system'})
  assert loaded == 'False'
