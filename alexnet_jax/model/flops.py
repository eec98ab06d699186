"""FLOPs and model FLOP utilisation (MFU): the analytic count, XLA's count and device peaks.

MFU = (FLOPs of one compiled train step) / step_time / (peak FLOP/s of the devices).
The step's FLOPs come from XLA's cost analysis of the compiled executable (what actually runs,
optimizer update included); the peak from config.peak_flops_per_device where set, else from
`PEAK_FLOPS` by device kind, or, on CPU, from the best matmul measured on this host model so
far (`host_peak_flops`). run.json's `peak_flops.source` says which.

Why XLA's count is below the reference card's (3.85 GFLOP per 224x224 image and step at large
batch, against the card's "~3x forward = 4.35"): `analytic_train_flops` derives the count from
the spec. XLA counts a multiply-add as 2 FLOPs, like the card, but

* conv1 needs no input gradient (the image is not a parameter): 3 x 1.449 - 2 x 0.105 = 4.136;
* XLA counts only the kernel taps that land on real input, not on padding: the 'same'
  convolutions conv2 (5x5 on 27x27) and conv3-5 (3x3 on 13x13) lose 9-10% of their taps to
  padding, and their gradient convolutions likewise (`valid_taps=True` reproduces this:
  1.341 GFLOP forward against XLA's 1.350, the rest being element-wise ops);
* the optimizer update and the gradient norm add ~0.56 GFLOP per step, batch-independent.

So the compiled step is within ~7% of `analytic_train_flops(spec)` and within 1-2% of
`analytic_train_flops(spec, valid_taps=True)`.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time

import jax
import jax.numpy as jnp

from alexnet_jax.model import network as model_lib

# ---- the analytic count -------------------------------------------------------------------


def _taps(n: int, k: int, stride: int, pad_lo: int, out: int, valid_only: bool) -> int:
  """Kernel taps summed over the outputs of one spatial dimension (only those on real input
  with `valid_only`, as XLA's cost analysis counts them)."""
  if not valid_only:
    return out * k
  return sum(1 for i in range(out) for j in range(k) if 0 <= i * stride - pad_lo + j < n)


def layer_macs(spec: model_lib.AlexNetSpec, valid_taps: bool = False) -> dict[str, int]:
  """Forward multiply-adds per image of each layer (all towers), from the spec.

  The card's count (724.4M for the paper's net) counts every tap, padding included.
  """
  f, k, t = spec.conv_features, spec.conv_kernels, spec.num_towers
  c1, p1, p2, _ = spec.feature_sizes()
  (lo, _), _ = spec.conv1_pads()
  cin = [spec.in_channels, f[0], t * f[1], f[2], f[3]]
  # (input size, output size, stride, padding before) of each conv.
  geometry = [(spec.image_size, c1, spec.conv1_stride, lo), (p1, p1, 1, k[1] // 2),
              (p2, p2, 1, k[2] // 2), (p2, p2, 1, k[3] // 2), (p2, p2, 1, k[4] // 2)]
  macs = {}
  for i, name in enumerate(model_lib.CONV_LAYERS):
    n, out, s, pad = geometry[i]
    taps = _taps(n, k[i], s, pad, out, valid_taps)
    macs[name] = taps * taps * cin[i] * t * f[i]
  for name, shape in spec.param_shapes().items():
    if name.startswith('fc'):
      kernel = shape['kernel']
      macs[name] = kernel[0] * kernel[1] * kernel[2]
  return macs


def analytic_forward_flops(spec: model_lib.AlexNetSpec, valid_taps: bool = False) -> int:
  """2 FLOPs per multiply-add: 1.449 GFLOP per image for the paper's network."""
  return 2 * sum(layer_macs(spec, valid_taps).values())


def analytic_train_flops(spec: model_lib.AlexNetSpec, valid_taps: bool = False) -> int:
  """Per image: forward (2 x MACs), kernel gradients (2 x MACs), input gradients (2 x MACs)
  except conv1's, whose input is the image. Element-wise ops and the optimizer are left out."""
  macs = layer_macs(spec, valid_taps)
  return 6 * sum(macs.values()) - 2 * macs['conv1']


def compiled_flops(compiled) -> float | None:
  """FLOPs of one call of a compiled executable, per device (an SPMD executable is the program
  of one device), from XLA's cost analysis; None where the backend does not report them."""
  try:
    cost = compiled.cost_analysis()
  except (NotImplementedError, RuntimeError):  # a backend without it (JaxRuntimeError)
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = (cost or {}).get('flops')
  return float(flops) if flops and flops > 0 else None


# ---- device peaks -------------------------------------------------------------------------

# Dense peak FLOP/s per device from the vendors' data sheets (no sparsity), by compute dtype.
# float32 on A100/H100/H200 is the TF32 tensor-core peak: XLA runs float32 convolutions and
# matmuls in TF32 there at JAX's default matmul precision. Matched as substrings of
# `device.device_kind`, first match wins.
PEAK_FLOPS = (
    # (device_kind substring, bfloat16, float32)
    ('H100 PCIe', 756e12, 378e12),  # H100 PCIe: 756 bf16, 378 TF32
    ('H100 NVL', 835e12, 417.5e12),  # H100 NVL: 835 bf16, 417.5 TF32
    ('H100', 989e12, 494.7e12),  # H100 SXM: 989.4 bf16, 494.7 TF32 (66.9 fp32 non-tensor)
    ('H200', 989e12, 494.7e12),  # H200 SXM: same compute as H100 SXM
    ('A100', 312e12, 156e12),  # A100: 312 bf16, 156 TF32 (19.5 fp32 non-tensor)
    ('V100', 125e12, 15.7e12),  # V100 SXM2: 125 fp16 tensor, 15.7 fp32 (no bf16)
    ('TPU v6', 918e12, 918e12),  # Trillium (v6e)
    ('TPU v5p', 459e12, 459e12),
    ('TPU v5', 197e12, 197e12),  # v5e ("TPU v5 lite")
    ('TPU v4', 275e12, 275e12),
)


def measure_host_flops(n: int = 1024, repeats: int = 10) -> float:
  """FLOP/s of a float32 n x n matmul on the default device, best of `repeats` short runs
  (about 0.1 s on 2 CPU cores). On CPU every device of a host shares its cores, so this is the
  host's peak. The best of several short runs is the figure least moved by other processes."""
  a = jnp.ones((n, n), jnp.float32)
  dot = jax.jit(jnp.dot)
  jax.block_until_ready(dot(a, a))
  best = float('inf')
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(dot(a, a))
    best = min(best, time.perf_counter() - t)
  return 2.0 * n ** 3 / best


def cpu_model() -> str:
  """The CPU's model name (/proc/cpuinfo), for peaks and benchmark headers."""
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or 'unknown CPU'


def _cache_path() -> str:
  root = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(root, 'alexnet_jax', 'cpu_peak_flops.json')


def host_peak_flops(measure=measure_host_flops, path: str | None = None) -> tuple[float, str]:
  """This host's float32 FLOP/s: the highest of every measurement taken so far on a host with
  the same CPU model and core count (kept in ~/.cache/alexnet_jax), this run's included. One
  matmul on a shared machine varied 2x between runs (5.1e10 to 1.0e11); the running maximum
  only rises towards the quiet machine's figure, so MFU stays comparable across runs."""
  path = path or _cache_path()
  key = f'{cpu_model()} x {os.cpu_count()} cores'
  measured = measure()
  try:
    with open(path, encoding='utf-8') as f:
      cache = json.load(f)
  except (OSError, ValueError):
    cache = {}
  entry = cache.get(key, {'flops': 0.0, 'runs': 0})
  best = max(measured, float(entry.get('flops', 0.0)))
  cache[key] = {'flops': best, 'runs': int(entry.get('runs', 0)) + 1}
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f'{path}.{os.getpid()}'
    with open(tmp, 'w', encoding='utf-8') as f:
      json.dump(cache, f, indent=1)
    os.replace(tmp, path)
  except OSError:  # a read-only home: this run's measurement alone
    return measured, f'measured: best float32 matmul on {key} in this run'
  return best, (f'measured: best float32 matmul on {key} over {cache[key]["runs"]} '
                f'run(s) ({path}; this run {measured:.4g})')


def sheet_peak(device_kind: str) -> dict[str, float] | None:
  """{'bfloat16': FLOP/s, 'float32': FLOP/s} of one device from `PEAK_FLOPS`, or None."""
  for name, bf16, fp32 in PEAK_FLOPS:
    if name in device_kind:
      return {'bfloat16': bf16, 'float32': fp32}
  return None


def peak_flops(devices, dtype_name: str, per_device: float = 0.0, measure_host=None) -> dict:
  """The peak FLOP/s of `devices` (all of the run's devices, summed) and where it comes from:
  {'total', 'per_device', 'source'}; None values where it is unknown (no MFU then).

  `per_device` > 0 (config.peak_flops_per_device) is used as given. Otherwise GPUs and TPUs
  take their data-sheet peak from `PEAK_FLOPS`, and a CPU host its measured peak
  (`host_peak_flops`), shared by the host's devices."""
  kind = devices[0].device_kind
  if per_device > 0:
    return {'total': per_device * len(devices), 'per_device': per_device,
            'source': f'config: peak_flops_per_device={per_device:.4g} x {len(devices)} '
                      'device(s)'}
  if devices[0].platform == 'cpu':
    hosts = len({d.process_index for d in devices})
    measured, source = (measure_host or host_peak_flops)()
    logging.info('Peak FLOP/s for MFU: %.3g per host (%s).', measured, source)
    return {'total': measured * hosts, 'per_device': measured * hosts / len(devices),
            'source': f'{source}; x {hosts} host(s) (CPU devices of a host share its cores)'}
  for name, bf16, fp32 in PEAK_FLOPS:
    if name in kind:
      per_device = bf16 if dtype_name == 'bfloat16' else fp32
      return {'total': per_device * len(devices), 'per_device': per_device,
              'source': f'table: {name} {dtype_name} dense peak {per_device:.4g} FLOP/s x '
                        f'{len(devices)} device(s) (alexnet_jax/model/flops.py PEAK_FLOPS)'}
  logging.warning('No peak FLOP/s known for device kind %r: no MFU is logged '
                  '(set config.peak_flops_per_device).', kind)
  return {'total': None, 'per_device': None, 'source': f'unknown device kind {kind!r}'}
