"""XLA:CPU settings a process applies where it starts, before JAX creates its CPU client.

* YNNPACK for reductions only. jaxlib 0.10's XLA:CPU sends convolutions to YNNPACK fusions
  by default, whose kernel-gradient convolutions are several times slower than Eigen's on
  CPU (measured: conv2's kernel gradient 661 ms vs 89 ms), so the list names only `reduce`.
  With no YNNPACK at all the reductions of the backward pass run on XLA's own loops: fc6's backward takes 116 ms against PyTorch's 36,
  and the train step at batch 32 912 ms; with `reduce`, 35 ms and 743 ms (`dot` 820 ms,
  `dot,reduce` 771 ms, measured interleaved in one process through compiler_options on a
  2-core Xeon: docs/speed.md).
* Checked names. An XLA_FLAGS name or value that the installed jaxlib does not know aborts
  the process when the backend starts, so a flag is added only where the jaxlib's library
  holds its name and value (another jaxlib, such as the GPU image's 0.11, may lack them).
* An allocator that keeps what a step frees. XLA:CPU allocates and frees a step's
  temporaries (about 500 MB for AlexNet at batch 32) on every step; glibc's malloc hands such
  blocks back to the kernel each time, and the step then spends 20-30% of its time in page
  faults (130,000 a step measured; glibc's tunables for mmap and trimming leave them at
  130,000, one arena at 21,000). `preload_allocator` re-executes the process with mimalloc
  from PyPI (`cmeel-mimalloc`, in requirements.txt, so that every install has it; purging
  off: 45 faults a step) or, failing that, Debian's tcmalloc (libtcmalloc-minimal4).
  ALEXNET_JAX_MALLOC=mimalloc|tcmalloc|system chooses; system turns this off.

XLA reads XLA_FLAGS once, when the client is created, so `configure` must run first; a
setting of the same flag in XLA_FLAGS wins.
"""

from __future__ import annotations

import os
import sys

FLAGS = {
    'xla_cpu_experimental_ynn_fusion_type': 'reduce',
}
# What the jaxlib binary must contain for each flag to be set: its name and its value's enum.
FLAG_EVIDENCE = {
    'xla_cpu_experimental_ynn_fusion_type': (b'xla_cpu_experimental_ynn_fusion_type',
                                             b'LIBRARY_FUSION_TYPE_REDUCE'),
}
TCMALLOC = 'libtcmalloc_minimal.so.4'
TCMALLOC_DIRS = ('/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu', '/usr/lib64',
                 '/usr/lib', '/usr/local/lib')
MIMALLOC = ('cmeel-mimalloc', 'cmeel.prefix/lib/libmimalloc.so.3')  # distribution, file
ALLOCATORS = ('mimalloc', 'tcmalloc')  # by preference
MALLOC_ENV = 'ALEXNET_JAX_MALLOC'


def _jaxlib_libraries() -> list[str]:
  import importlib.util
  spec = importlib.util.find_spec('jaxlib')
  if spec is None or not spec.submodule_search_locations:
    return []
  root = list(spec.submodule_search_locations)[0]
  return sorted((os.path.join(root, n) for n in os.listdir(root) if n.endswith('.so')),
                key=os.path.getsize, reverse=True)


def known_to_jaxlib(needles: tuple[bytes, ...]) -> bool:
  """Whether one of the installed jaxlib's libraries holds every byte string of `needles`
  (without importing it: XLA reads XLA_FLAGS when JAX starts)."""
  import mmap
  for path in _jaxlib_libraries():
    try:
      with open(path, 'rb') as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        if all(m.find(n) >= 0 for n in needles):
          return True
    except (OSError, ValueError):
      continue
  return False


def configure(environ=os.environ) -> None:
  """Adds the flags above to XLA_FLAGS unless the user set them, and only those that the
  installed jaxlib knows."""
  flags = environ.get('XLA_FLAGS', '')
  for name, value in FLAGS.items():
    if name not in flags and known_to_jaxlib(FLAG_EVIDENCE[name]):
      flags = f'{flags} --{name}={value}'
  environ['XLA_FLAGS'] = flags.strip()


def allocator_path(name: str) -> str | None:
  """The shared library of allocator `name`, where it is installed."""
  if name == 'mimalloc':
    import importlib.metadata
    try:
      path = importlib.metadata.distribution(MIMALLOC[0]).locate_file(MIMALLOC[1])
    except importlib.metadata.PackageNotFoundError:
      return None
    return os.fspath(path) if os.path.exists(path) else None
  for d in TCMALLOC_DIRS:
    path = os.path.join(d, TCMALLOC)
    if os.path.exists(path):
      return path
  return None


def preload_allocator(environ=os.environ) -> None:
  """Re-executes this process (same PID, same arguments) with the first installed allocator
  of ALLOCATORS preloaded (or ALEXNET_JAX_MALLOC's), unless one is loaded already. Call it
  first thing in `main`, before any thread starts."""
  choice = environ.get(MALLOC_ENV, '') or 'auto'
  if choice == 'system' or any(a in environ.get('LD_PRELOAD', '') for a in ALLOCATORS):
    return
  if choice not in ('auto',) + ALLOCATORS:
    sys.exit(f'error: {MALLOC_ENV}={choice} is not one of auto, {", ".join(ALLOCATORS)}, '
             'system.')
  names = ALLOCATORS if choice == 'auto' else (choice,)
  path = next((p for p in map(allocator_path, names) if p), None)
  if path is None and choice != 'auto':
    how = ('pip install cmeel-mimalloc' if choice == 'mimalloc'
           else 'apt-get install libtcmalloc-minimal4')
    sys.exit(f'error: {MALLOC_ENV}={choice}, but it is not installed ({how}).')
  if path is None or 'jax' in sys.modules:  # too late once JAX runs
    return
  environ['LD_PRELOAD'] = ':'.join(p for p in (path, environ.get('LD_PRELOAD')) if p)
  environ.setdefault('MIMALLOC_PURGE_DELAY', '-1')  # keep freed pages for the next step
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, sys.orig_argv)
