"""alexnet_jax: the two-tower AlexNet of Krizhevsky et al. (2012) in JAX."""

import os

# XLA:CPU in jaxlib 0.10 sends convolutions to YNNPACK fusions by default, whose
# kernel-gradient convolutions are several times slower than Eigen's on CPU
# (measured: conv2's kernel gradient 661 ms vs 89 ms). An empty fusion list
# keeps them on Eigen. Set before JAX creates its CPU client; an explicit
# setting in XLA_FLAGS wins.
_YNN_FLAG = '--xla_cpu_experimental_ynn_fusion_type='
if 'xla_cpu_experimental_ynn_fusion_type' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = f'{os.environ.get("XLA_FLAGS", "")} {_YNN_FLAG}'.strip()
