"""What a device can do: its data sheet by device kind, and its matmul rate and copy bandwidth
measured in a few seconds (the GPU check's device stage), so that MFU and the roofline stand
against both.

Data sheets, dense (no sparsity), per device. bfloat16 and TF32 are
`alexnet_jax.model.flops.PEAK_FLOPS` (the tensor-core peaks training's MFU uses); here beside
them: float32 without tensor cores (what `jax_default_matmul_precision='float32'` and PyTorch
with TF32 off run at) and the memory bandwidth. The H100 this project meets measured 798
TFLOP/s on a bf16 8192^3 matmul and 3.0 TB/s on a copy (.library's KINDS.md, 2026-11-13);
an H200 788 TFLOP/s and 4.3 TB/s.
"""

from __future__ import annotations

import statistics
import time

# (device_kind substring, float32 FLOP/s without tensor cores, memory bytes/s), first match
# wins, in the order of flops.PEAK_FLOPS.
SHEETS = (
    ('H100 PCIe', 51.2e12, 2.0e12),  # 80 GB HBM2e
    ('H100 NVL', 60e12, 3.9e12),  # 94 GB HBM3
    ('H100', 66.9e12, 3.35e12),  # SXM 80 GB HBM3
    ('H200', 66.9e12, 4.8e12),  # SXM 141 GB HBM3e
    ('A100', 19.5e12, 2.039e12),  # SXM 80 GB HBM2e
    ('V100', 15.7e12, 0.9e12),  # SXM2 HBM2
)


def sheet(device_kind: str) -> dict | None:
  """{'name', 'bfloat16', 'tf32', 'float32', 'bytes_per_s'} of a device kind (FLOP/s,
  bytes/s), or None for a kind no data sheet here names (a CPU)."""
  from alexnet_jax.model import flops
  compute = flops.sheet_peak(device_kind)
  row = next((r for r in SHEETS if r[0] in device_kind), None)
  if compute is None or row is None:
    return None
  return {'name': row[0], 'bfloat16': compute['bfloat16'], 'tf32': compute['float32'],
          'float32': row[1], 'bytes_per_s': row[2]}


def float32_key(tf32: bool) -> str:
  """The sheet's and the measurement's key for float32 arithmetic with or without TF32."""
  return 'tf32' if tf32 else 'float32'


def _median_s(run, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    run()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def matmul_flops(dtype: str, n: int, precision: str = 'default', repeats: int = 5,
                 chain: int = 4) -> float:
  """FLOP/s of `chain` back-to-back (n, n) @ (n, n) products on device 0, random operands
  (zeros run faster: METHOD.md), the median of `repeats`."""
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.key(0), (n, n), getattr(jnp, dtype))
  b = jax.random.normal(jax.random.key(1), (n, n), getattr(jnp, dtype))
  with jax.default_matmul_precision(precision):
    dot = jax.jit(lambda x, y: jnp.dot(x, y))
    jax.block_until_ready(dot(a, b))
    seconds = _median_s(lambda: jax.block_until_ready([dot(a, b) for _ in range(chain)]),
                        repeats)
  return chain * 2 * n ** 3 / seconds


def copy_bytes_per_s(nbytes: int, repeats: int = 5, chain: int = 4) -> float:
  """Bytes read plus bytes written per second by `x + 1` over a float32 array of `nbytes`
  (one read and one write of every element: what METHOD.md calls a copy)."""
  import jax
  import jax.numpy as jnp
  x = jax.random.normal(jax.random.key(0), (nbytes // 4,), jnp.float32)
  add = jax.jit(lambda v: v + 1.0)
  jax.block_until_ready(add(x))
  seconds = _median_s(lambda: jax.block_until_ready([add(x) for _ in range(chain)]), repeats)
  return chain * 2 * x.nbytes / seconds


def measure(dry_run: bool) -> dict:
  """{'bfloat16', 'tf32', 'float32': FLOP/s, 'bytes_per_s'} of device 0: 8192^3 matmuls and a
  2 GiB copy (256^3 and 8 MiB in the dry run)."""
  n, nbytes = (256, 8 << 20) if dry_run else (8192, 2 << 30)
  return {'bfloat16': matmul_flops('bfloat16', n),
          'tf32': matmul_flops('float32', n, 'tensorfloat32'),
          'float32': matmul_flops('float32', n, 'float32'),
          'bytes_per_s': copy_bytes_per_s(nbytes)}


def mfu(flops_per_step: float | None, step_s: float, peak: float | None) -> float | None:
  return flops_per_step / step_s / peak if flops_per_step and peak else None
