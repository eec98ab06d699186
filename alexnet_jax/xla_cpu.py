"""XLA:CPU settings a process applies where it starts, before JAX creates its CPU client.

jaxlib 0.10's XLA:CPU sends convolutions to YNNPACK fusions by default, whose
kernel-gradient convolutions are several times slower than Eigen's on CPU (measured: conv2's
kernel gradient 661 ms vs 89 ms). An empty fusion list keeps them on Eigen. XLA reads
XLA_FLAGS once, when the client is created, so this must run first; an explicit setting of
the flag in XLA_FLAGS wins.
"""

from __future__ import annotations

import os

YNN_FLAG = '--xla_cpu_experimental_ynn_fusion_type='


def configure(environ=os.environ) -> None:
  """Adds the flags above to XLA_FLAGS unless the user set them."""
  flags = environ.get('XLA_FLAGS', '')
  if 'xla_cpu_experimental_ynn_fusion_type' not in flags:
    environ['XLA_FLAGS'] = f'{flags} {YNN_FLAG}'.strip()
