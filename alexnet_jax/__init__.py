"""alexnet_jax: the two-tower AlexNet of Krizhevsky et al. (2012) in JAX.

Importing the package has no side effects; a process that runs JAX on the CPU calls
`xla_cpu.configure()` first (launch.py, benchmarks/, tests/conftest.py do).
"""
