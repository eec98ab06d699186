"""Test configuration: 8 CPU devices for the mesh tests and XLA:CPU's settings, set before
JAX initialises; absl flags marked parsed as launch.py parses them (grain reads its flags)."""

import os

from absl import flags

from alexnet_jax import xla_cpu

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
xla_cpu.configure()
flags.FLAGS.mark_as_parsed()
