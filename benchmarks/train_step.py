"""Train-step throughput of the 224x224 two-tower AlexNet: JAX against PyTorch, in one run.

Run from the repository root:

    python -m benchmarks.train_step                         # backend defaults
    python -m benchmarks.train_step --batch_sizes=32 --dtypes=float32,bfloat16
    python -m benchmarks.train_step --notorch_compile --json_out=/tmp/train_step.json
    XLA_FLAGS=--xla_force_host_platform_device_count=2 \\
        python -m benchmarks.train_step --modes=towers,data,hybrid   # meshes on CPU

What is timed: one training step (forward, backward, paper momentum update) on a
synthetic batch.

* JAX: `steps.make_train_step` of `network.AlexNetSpec()` with `optimizer.paper_momentum(0.01)`
  and a state from `steps.create_train_state`, for every batch size, compute dtype
  (`float32`, or `bfloat16` activations with float32 parameters) and parallelism mode
  (`towers`, `data`, `hybrid`; the mesh from `sharding.mesh_shape`).
* PyTorch (optional; skipped with a note if `torch` does not import): the same network
  (grouped convolutions for conv2/4/5, LRN, overlapping pooling, dropout, conv1 padded
  3 px bottom/right to 55x55) with `torch.optim.SGD(lr=0.01, momentum=0.9,
  weight_decay=5e-4)`, eager and `torch.compile`. On GPU the bfloat16 rows use AMP
  autocast with channels_last, and torchvision's one-tower `alexnet` is added when
  torchvision imports. On CPU torch runs in float32 only. cudnn.benchmark is on, and
  float32 runs with TF32 off on both sides (JAX at `jax_default_matmul_precision='float32'`),
  or on in both with `--tf32` (benchmarks/torch_baselines.py).

Method: build and compile every variant of a (batch, dtype), run `--warmup` steps,
then `--repeats` rounds in which each variant in turn runs `--steps` steps
(synchronised with `jax.block_until_ready` / `torch.cuda.synchronize`), so the
JAX and torch repeats alternate and a background load hits them alike. Figures are
medians over the repeats; compare only ratios taken in the same run.

Columns: images/s and step time; MFU = FLOPs per step / step time / peak FLOP/s, with
FLOPs per step from the compiled executable's `cost_analysis()` (`xla`) or else the
reference card's 4.35 GFLOP per image (`card`; torch rows always use the card), and
the peak measured in this run with a large `jnp.dot` (bfloat16 and float32 on GPU;
on CPU one float32 matmul peak serves both dtypes, and forced host devices share it);
memory per device from `compiled.memory_analysis()` (arguments + outputs - donated
aliases + temporaries), or `memory_stats()['peak_bytes_in_use']` where only that is
reported; `torch.cuda.max_memory_allocated` for torch on GPU.
"""

from __future__ import annotations

import datetime
import gc
import importlib.metadata
import json
import os
import statistics
import sys
import time

from alexnet_jax import xla_cpu

if __name__ == '__main__':
  xla_cpu.preload_allocator()  # before anything starts: see xla_cpu

# torch and JAX share the GPU: keep JAX from reserving most of its memory up front.
os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
xla_cpu.configure()  # before JAX creates its CPU client

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from alexnet_jax.model import flops  # noqa: E402
from alexnet_jax.model import network  # noqa: E402
from alexnet_jax.parallel import sharding  # noqa: E402
from alexnet_jax.train import optimizer  # noqa: E402
from alexnet_jax.train import steps  # noqa: E402
from benchmarks import machine  # noqa: E402
from benchmarks.torch_baselines import TorchVariant  # noqa: E402
from benchmarks.torch_baselines import torch  # noqa: E402  (None without PyTorch)
from benchmarks.torch_baselines import torch_variant_names  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line's flags (only when run as a script: other modules import this one)."""
  flags.DEFINE_list('batch_sizes', None, 'Global batch sizes; default 32 on CPU, 128,256,512 on GPU.')
  flags.DEFINE_list('dtypes', ['float32', 'bfloat16'], 'Compute dtypes (parameters stay float32).')
  flags.DEFINE_list('modes', None, 'Parallelism modes; default towers,data,hybrid with >= 2 '
                    'devices, else towers.')
  flags.DEFINE_integer('steps', None, 'Steps per timed repeat; default 2 on CPU, 20 on GPU.')
  flags.DEFINE_integer('repeats', 5, 'Timed repeats per variant; the median is reported.')
  flags.DEFINE_float('gap', 0.5, 'CPU: idle seconds before each timed variant (thread pools '
                     'stop spinning).')
  flags.DEFINE_integer('warmup', None, 'Untimed steps after compiling; default 1 on CPU, 5 on GPU.')
  flags.DEFINE_integer('matmul_size', None, 'Side of the square matmul that measures the peak; '
                       'default 2048 on CPU, 8192 on GPU.')
  flags.DEFINE_bool('torch', True, 'Time the PyTorch baseline (if torch imports).')
  flags.DEFINE_bool('torch_compile', True, 'Also time torch.compile.')
  flags.DEFINE_bool('tf32', False, 'float32 with TF32 on in JAX and PyTorch alike (default: '
                    'off in both: jax_default_matmul_precision=float32, fp32_precision=ieee).')
  flags.DEFINE_string('json_out', None, 'Write the header and all rows as JSON here.')


from benchmarks.torch_baselines import CARD_FLOPS_PER_IMAGE  # noqa: E402

JAX_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def _median_seconds(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def matmul_peak(dtype, n: int, repeats: int = 5, chain: int = 4) -> float:
  """FLOP/s of `chain` back-to-back (n, n) @ (n, n) products with jnp.dot on device 0."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  dot = jax.jit(jnp.dot)
  jax.block_until_ready(dot(a, b))

  def run():
    jax.block_until_ready([dot(a, b) for _ in range(chain)])

  return chain * 2 * n ** 3 / _median_seconds(run, repeats)


class JaxVariant:
  """The compiled JAX train step of one (mode, batch, dtype) with its state and batch."""

  framework = 'jax'

  def __init__(self, spec, mode: str, batch: int, dtype: str, precision: str = 'default'):
    n = jax.device_count()
    data, model_ = sharding.mesh_shape(n, -1, 0, mode, spec.num_towers)
    layout = sharding.Layout(sharding.make_mesh(data, model_), mode)
    layout.check_batch(batch)
    self.variant, self.mode, self.batch, self.dtype = 'jit', f'{mode} {data}x{model_}', batch, dtype
    self.devices = n
    tx = optimizer.paper_momentum(0.01)
    self.state = steps.create_train_state(jax.random.key(0), spec, tx, layout)
    rng = np.random.default_rng(0)
    images = rng.normal(0, 60, (batch, spec.image_size, spec.image_size, spec.in_channels))
    self.images = jax.device_put(images.astype(np.float32), layout.batch_sharding())
    self.labels = jax.device_put(rng.integers(0, spec.num_classes, batch).astype(np.int32),
                                 layout.label_sharding())
    # The step the training loop runs between logged steps (no gradient norm).
    train_step = steps.make_train_step(spec, layout, tx, batch, compute_dtype=JAX_DTYPES[dtype],
                                       grad_norm=False)
    t0 = time.perf_counter()
    with jax.default_matmul_precision(precision):  # traced here: the step keeps it
      self.step = train_step.lower(self.state, self.images, self.labels).compile()
    self.compile_s = time.perf_counter() - t0
    self.flops, self.flops_source = self._flops(batch)
    self.memory_bytes = self._memory_bytes()
    self.settings = (f'jax {jax.__version__} jit, {dtype} compute with float32 parameters, '
                     f'jax_default_matmul_precision={precision!r}, XLA_FLAGS='
                     f"{os.environ.get('XLA_FLAGS') or 'none'}, paper momentum SGD")

  def _flops(self, batch: int) -> tuple[float, str]:
    """FLOPs of one step on all devices: XLA's count per device x devices, else the card's."""
    cost = self.step.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    if cost and cost.get('flops', 0) > 0:
      return cost['flops'] * self.devices, 'xla'
    return CARD_FLOPS_PER_IMAGE * batch, 'card'

  def _memory_bytes(self) -> int | None:
    mem = self.step.memory_analysis()
    if mem is not None:
      return (mem.argument_size_in_bytes + mem.output_size_in_bytes
              - mem.alias_size_in_bytes + mem.temp_size_in_bytes)
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get('peak_bytes_in_use')

  def run(self, n: int) -> None:
    metrics = None
    for _ in range(n):
      self.state, metrics = self.step(self.state, self.images, self.labels)
    jax.block_until_ready((self.state, metrics))


def measure(variants, steps: int, warmup: int, repeats: int,
            gap: float = 0.0) -> list[list[float]]:
  """Warm up each variant, then time `repeats` rounds of `steps` steps, alternating variants.
  `gap` seconds of idle before each timed variant let the previous one's thread pools
  (Eigen's, OpenMP's) stop spinning, so that neither framework runs against the other's
  busy-waiting threads."""
  for v in variants:
    v.run(warmup)
  times = [[] for _ in variants]
  for _ in range(repeats):
    for v, t in zip(variants, times):
      time.sleep(gap)
      t0 = time.perf_counter()
      v.run(steps)
      t.append((time.perf_counter() - t0) / steps)
  return times


def make_row(v, step_times: list[float], peak: float | None, quiet: dict) -> dict:
  step_s = statistics.median(step_times)
  return {
      'comparable': quiet['quiet'], 'quiet': quiet,
      'framework': v.framework, 'variant': v.variant, 'mode': v.mode, 'batch': v.batch,
      'dtype': v.dtype, 'images_per_s': v.batch / step_s, 'step_ms': 1e3 * step_s,
      'step_ms_all': [1e3 * t for t in step_times],
      'flops_per_step': v.flops, 'flops_source': v.flops_source,
      'mfu': v.flops / step_s / peak if peak else None,
      'memory_mb': v.memory_bytes / 2**20 if v.memory_bytes else None,
      'compile_s': v.compile_s,
  }


def add_ratios(rows: list[dict]) -> None:
  """JAX images/s over the torch eager and torch.compile rows of the same batch and dtype."""
  torch_rows = {(r['variant'], r['batch'], r['dtype']): r for r in rows if r['framework'] == 'torch'}
  for r in rows:
    if r['framework'] != 'jax':
      continue
    for variant, key in (('eager', 'vs_torch_eager'), ('compile', 'vs_torch_compile')):
      ref = torch_rows.get((variant, r['batch'], r['dtype']))
      r[key] = r['images_per_s'] / ref['images_per_s'] if ref else None


def markdown_table(rows: list[dict]) -> str:
  fmt = lambda x, spec: '-' if x is None else format(x, spec)
  lines = ['| framework | variant | mode | batch | dtype | img/s | step ms | MFU | FLOPs | '
           'mem MiB | compile s | JAX/torch-eager | JAX/torch.compile | comparable |',
           '|---|---|---|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---|']
  for r in rows:
    lines.append(
        f"| {r['framework']} | {r['variant']} | {r['mode']} | {r['batch']} | {r['dtype']} | "
        f"{r['images_per_s']:.1f} | {r['step_ms']:.0f} | {fmt(r['mfu'], '.1%')} | "
        f"{r['flops_per_step'] / r['batch'] / 1e9:.2f}G/img {r['flops_source']} | "
        f"{fmt(r['memory_mb'], '.0f')} | {fmt(r['compile_s'], '.1f')} | "
        f"{fmt(r.get('vs_torch_eager'), '.2f')} | {fmt(r.get('vs_torch_compile'), '.2f')} | "
        f"{'yes' if r['comparable'] else 'NO (machine busy)'} |")
  return '\n'.join(lines)


def device_name() -> str:
  dev = jax.devices()[0]
  if dev.platform != 'cpu':
    return f'{jax.device_count()} x {dev.device_kind}'
  return f'{flops.cpu_model()}, {os.cpu_count()} cores, {jax.device_count()} JAX CPU device(s)'


def main(argv):
  del argv
  quiet_at_start = machine.load_average()  # before this process compiles anything
  on_gpu = jax.devices()[0].platform == 'gpu'
  batches = [int(b) for b in (FLAGS.batch_sizes or (['128', '256', '512'] if on_gpu else ['32']))]
  modes = FLAGS.modes or (list(sharding.PARALLELISM_MODES) if jax.device_count() >= 2
                          else ['towers'])
  steps_per_repeat = FLAGS.steps or (20 if on_gpu else 2)
  warmup = FLAGS.warmup if FLAGS.warmup is not None else (5 if on_gpu else 1)
  matmul_size = FLAGS.matmul_size or (8192 if on_gpu else 2048)
  spec = network.AlexNetSpec()

  header = {
      'date': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
      'device': device_name(), 'jax': jax.__version__,
      'jaxlib': importlib.metadata.version('jaxlib'),
      'torch': torch.__version__ if torch is not None else None,
      'torch_threads': torch.get_num_threads() if torch is not None else None,
      'steps_per_repeat': steps_per_repeat, 'repeats': FLAGS.repeats, 'warmup': warmup,
      'load_average_before': round(quiet_at_start, 2),
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'malloc': os.environ.get('LD_PRELOAD') or 'system (glibc)',
  }
  peaks = {'float32': matmul_peak(jnp.float32, matmul_size)}
  if on_gpu:
    peaks['bfloat16'] = matmul_peak(jnp.bfloat16, matmul_size)
    header['peak_note'] = f'jnp.dot {matmul_size}^2 per dtype (default precision), per device'
  else:
    header['peak_note'] = (f'jnp.dot {matmul_size}^2 float32 on the CPU, used for both dtypes '
                           'and shared by all host devices')
  header['peak_flops'] = peaks
  for k, v in header.items():
    print(f'{k}: {v}')
  if torch is None:
    print('note: torch does not import; timing JAX only.')
  elif not on_gpu and 'bfloat16' in FLAGS.dtypes:
    print('note: on CPU torch runs float32 only; bfloat16 JAX rows have no torch ratio.')
  torch_device = torch.device('cuda' if on_gpu else 'cpu') if torch is not None else None

  rows = []
  for batch in batches:
    for dtype in FLAGS.dtypes:
      variants = []
      # The same float32 arithmetic on both sides (bfloat16 operands ignore the precision).
      precision = 'default' if dtype == 'bfloat16' else (
          'tensorfloat32' if FLAGS.tf32 else 'float32')
      for mode in modes:
        print(f'# compiling jax {mode} batch {batch} {dtype}', file=sys.stderr, flush=True)
        try:
          variants.append(JaxVariant(spec, mode, batch, dtype, precision))
        except ValueError as e:  # ConfigError: batch not divisible by the mesh
          print(f'note: skipping jax {mode} batch {batch}: {e}')
      for name in torch_variant_names(on_gpu, dtype, FLAGS.torch, FLAGS.torch_compile):
        print(f'# building torch {name} batch {batch} {dtype}', file=sys.stderr, flush=True)
        variants.append(TorchVariant(spec, name, batch, dtype, torch_device, FLAGS.tf32))
      quiet = machine.Quiet()
      quiet.load_before = quiet_at_start
      quiet.start()
      times = measure(variants, steps_per_repeat, warmup, FLAGS.repeats,
                      gap=0.0 if on_gpu else FLAGS.gap)
      quiet.stop()
      report = quiet.report()
      print(f'# machine during batch {batch} {dtype}: {json.dumps(report)}', flush=True)
      if not report['quiet'] and not on_gpu:
        print('WARNING: the machine was not quiet (load average before >= '
              f'{machine.MAX_LOAD}, or other processes used the CPU): these rows are not '
              'comparable.', flush=True)
      peak = peaks.get(dtype, peaks['float32'])
      rows.extend(make_row(v, t, peak, report) for v, t in zip(variants, times))
      del variants
      gc.collect()
      if on_gpu and torch is not None:
        torch.cuda.empty_cache()

  add_ratios(rows)
  print()
  print(markdown_table(rows))
  if FLAGS.json_out:
    with open(FLAGS.json_out, 'w') as f:
      json.dump({'header': header, 'rows': rows}, f, indent=1)


if __name__ == '__main__':
  define_flags()
  app.run(main)
