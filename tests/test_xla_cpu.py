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
  assert '--xla_cpu_experimental_ynn_fusion_type=' in env['XLA_FLAGS'].split()
  env = {'XLA_FLAGS': '--xla_cpu_experimental_ynn_fusion_type=dot --foo=1'}
  xla_cpu.configure(env)
  assert env['XLA_FLAGS'] == '--xla_cpu_experimental_ynn_fusion_type=dot --foo=1'


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
