"""XLA:CPU settings a process applies where it starts, before JAX creates its CPU client.

* Convolutions on Eigen. jaxlib 0.10's XLA:CPU sends convolutions to YNNPACK fusions by
  default, whose kernel-gradient convolutions are several times slower than Eigen's on CPU
  (measured: conv2's kernel gradient 661 ms vs 89 ms). An empty fusion list keeps them on
  Eigen.
* tcmalloc. XLA:CPU allocates and frees a step's temporaries (about 500 MB for AlexNet at
  batch 32) on every step; glibc's malloc hands such blocks back to the kernel each time,
  and the step then spends 20-30% of its time in page faults (130,000 per step measured).
  tcmalloc keeps them. `preload_tcmalloc` re-executes the process with it where the library
  is installed (Debian: libtcmalloc-minimal4); ALEXNET_JAX_MALLOC=system turns this off.

XLA reads XLA_FLAGS once, when the client is created, so `configure` must run first; a
setting of the same flag in XLA_FLAGS wins.
"""

from __future__ import annotations

import os
import sys

FLAGS = {
    'xla_cpu_experimental_ynn_fusion_type': '',
}
TCMALLOC = 'libtcmalloc_minimal.so.4'
TCMALLOC_DIRS = ('/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu', '/usr/lib64',
                 '/usr/lib', '/usr/local/lib')
MALLOC_ENV = 'ALEXNET_JAX_MALLOC'


def configure(environ=os.environ) -> None:
  """Adds the flags above to XLA_FLAGS unless the user set them."""
  flags = environ.get('XLA_FLAGS', '')
  for name, value in FLAGS.items():
    if name not in flags:
      flags = f'{flags} --{name}={value}'
  environ['XLA_FLAGS'] = flags.strip()


def tcmalloc_path() -> str | None:
  for d in TCMALLOC_DIRS:
    path = os.path.join(d, TCMALLOC)
    if os.path.exists(path):
      return path
  return None


def preload_tcmalloc(environ=os.environ) -> None:
  """Re-executes this process (same PID, same arguments) with tcmalloc preloaded, where it
  is installed and not yet loaded. Call it first thing in `main`, before any thread starts."""
  if environ.get(MALLOC_ENV, '') == 'system' or 'tcmalloc' in environ.get('LD_PRELOAD', ''):
    return
  path = tcmalloc_path()
  if path is None or 'jax' in sys.modules:  # too late once JAX runs
    return
  environ['LD_PRELOAD'] = ':'.join(p for p in (path, environ.get('LD_PRELOAD')) if p)
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, sys.orig_argv)
