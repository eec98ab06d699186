"""A ceiling to measure against: the time each layer of the 224x224 network cannot beat on an
H200, H100 and A100 (or, in the GPU check, on the device it runs on, by its data sheet and by
its measured matmul rate and copy bandwidth), from XLA's FLOP count, the bytes the layer must
move, and the peaks and bandwidths.

    python -m benchmarks.roofline                            # batch 128, bfloat16
    python -m benchmarks.roofline --batch=2048 --json_out=r.json

For each layer (`benchmarks.layers.jax_layers`: each on the shapes the network feeds it) the
bound is max(FLOPs / peak, bytes / bandwidth), the roofline model (Williams, Waterman,
Patterson 2009). "train" is the layer's forward and backward as the step runs them (conv1: the
kernel's gradient only). FLOPs: XLA's cost analysis of the compiled layer (the same
arithmetic on any backend). Bytes: what the layer cannot avoid moving once each, whatever the
device: its input, parameters and output in the forward pass, then the output's cotangent in
and the gradients out; so the bound holds for any fusion short of fusing across layers. XLA's
own "bytes accessed" of the backend it ran on is printed beside it (XLA:CPU's counts every
unfused slice and bfloat16 convert; on the GPU, benchmarks.gpu_check reruns this table and the
column is XLA:GPU's). The sum of the layers' bounds is the ceiling a measured step is a
fraction of; the whole step's own bound (its FLOPs against the state and batch it must read
and write) is looser, since it lets the layers' activations stay on chip.
"""

from __future__ import annotations

import json

from alexnet_jax import xla_cpu

if __name__ == '__main__':
  xla_cpu.preload_allocator()

xla_cpu.configure()

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from alexnet_jax.model import network  # noqa: E402
from alexnet_jax.parallel import sharding  # noqa: E402
from alexnet_jax.train import optimizer  # noqa: E402
from alexnet_jax.train import steps  # noqa: E402
from benchmarks import layers as layers_lib  # noqa: E402
from benchmarks import peaks  # noqa: E402


def device_row(sheet: dict) -> tuple[float, float, float]:
  """(bfloat16 FLOP/s, float32 FLOP/s (TF32 tensor cores, what XLA uses for float32
  convolutions and matmuls at the default precision), bytes/s) of a `peaks.sheet`."""
  return sheet['bfloat16'], sheet['tf32'], sheet['bytes_per_s']


# Data sheets (benchmarks/peaks.py), dense, per device. The GPU check passes its own device's
# sheet and measured figures instead (`roofline(..., devices=)`).
DEVICES = {name: device_row(peaks.sheet(kind)) for name, kind in (
    ('H200', 'NVIDIA H200'), ('H100', 'NVIDIA H100 80GB HBM3'), ('A100', 'NVIDIA A100'))}
DTYPES = {'bfloat16': jnp.bfloat16, 'float32': jnp.float32}


def cost(compiled) -> tuple[float, float]:
  """(FLOPs, bytes accessed) of one call, from XLA's cost analysis of the compiled program."""
  c = compiled.cost_analysis()
  if isinstance(c, (list, tuple)):
    c = c[0]
  return float(c.get('flops', 0.0)), float(c.get('bytes accessed', 0.0))


def cast(tree, dtype):
  return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating)
                      else a, tree)


def nbytes(tree) -> int:
  return sum(int(np.prod(a.shape)) * jnp.dtype(a.dtype).itemsize for a in jax.tree.leaves(tree))


def layer_costs(spec: network.AlexNetSpec, batch: int, dtype, only=None) -> list[dict]:
  """{layer, fwd_flops, train_flops, fwd_bytes, train_bytes, xla_train_bytes} at `batch`,
  of the layers in `only` (default all)."""
  rows = []
  for name, (fn, params, x) in layers_lib.jax_layers(spec, batch).items():
    if only is not None and name not in only:
      continue
    if name not in layers_lib.NO_BACKWARD:  # the update runs on the float32 parameters
      params, x = cast(params, dtype), cast(x, dtype)
    out = jax.eval_shape(fn, params, x)
    row = {'layer': name}
    row['fwd_flops'], xla_fwd_bytes = cost(jax.jit(fn).lower(params, x).compile())
    row['fwd_bytes'] = nbytes(params) + nbytes(x) + nbytes(out)
    if name in layers_lib.NO_BACKWARD:
      row['train_flops'], row['xla_train_bytes'] = row['fwd_flops'], xla_fwd_bytes
      # momentum SGD: parameters, gradients and momenta read, parameters and momenta written.
      row['train_bytes'] = row['fwd_bytes'] = 5 * nbytes(params)
    else:
      params_only = name in layers_lib.PARAMS_ONLY

      def both(p, h, fn=fn, params_only=params_only):
        if params_only:
          out, vjp = jax.vjp(lambda p: fn(p, h), p)
        else:
          out, vjp = jax.vjp(fn, p, h)
        return vjp(jax.tree.map(jnp.ones_like, out))

      row['train_flops'], row['xla_train_bytes'] = cost(jax.jit(both).lower(params, x).compile())
      # + the cotangent read, the parameters' (and the input's) gradient written.
      row['train_bytes'] = (row['fwd_bytes'] + nbytes(out) + nbytes(params) +
                            (0 if params_only else nbytes(x)))
    rows.append(row)
  return rows


def step_cost(spec: network.AlexNetSpec, batch: int, dtype) -> tuple[float, float]:
  """(FLOPs, bytes) of the whole compiled train step on one device (towers on it); the
  bytes: the state and the batch read, the state written."""
  layout = sharding.Layout(sharding.make_mesh(1, 1, jax.devices()[:1]), 'towers')
  tx = optimizer.paper_momentum(0.01)
  state = steps.create_train_state(jax.random.key(0), spec, tx, layout)
  images = jax.ShapeDtypeStruct((batch, spec.image_size, spec.image_size, spec.in_channels),
                                jnp.float32)
  labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
  step = steps.make_train_step(spec, layout, tx, batch, compute_dtype=dtype, grad_norm=False)
  flops, _ = cost(step.lower(state, images, labels).compile())
  return flops, 2 * nbytes(state) + batch * (spec.image_size ** 2 * spec.in_channels * 4 + 4)


def bound_seconds(flops: float, nbytes: float, device: tuple[float, float, float],
                  dtype: str) -> tuple[float, str]:
  """The roofline bound on `device` (bfloat16 FLOP/s, float32 FLOP/s, bytes/s) and what sets
  it ('compute' or 'memory')."""
  bf16, f32, bandwidth = device
  compute = flops / (bf16 if dtype == 'bfloat16' else f32)
  memory = nbytes / bandwidth
  return max(compute, memory), 'compute' if compute >= memory else 'memory'


def roofline(spec: network.AlexNetSpec, batch: int, dtype: str, devices: dict | None = None,
             only=None) -> dict:
  """Every layer's (of `only`, default all) and the step's costs with their bounds on each
  of `devices` ({label: (bfloat16 FLOP/s, float32 FLOP/s, bytes/s)}, default DEVICES)."""
  devices = devices or DEVICES
  jdtype = DTYPES[dtype]
  rows = layer_costs(spec, batch, jdtype, only)
  for r in rows:
    for d, figures in devices.items():
      r[f'{d}_us'], r[f'{d}_by'] = bound_seconds(r['train_flops'], r['train_bytes'], figures,
                                                 dtype)
      r[f'{d}_us'] *= 1e6
  flops, nbytes = step_cost(spec, batch, jdtype)
  step = {'flops': flops, 'bytes': nbytes}
  for d, figures in devices.items():
    seconds, by = bound_seconds(flops, nbytes, figures, dtype)
    layer_sum = sum(r[f'{d}_us'] for r in rows) * 1e-6
    step[d] = {'step_us': seconds * 1e6, 'bound_by': by, 'img_per_s': batch / seconds,
               'layers_sum_us': layer_sum * 1e6, 'layers_img_per_s': batch / layer_sum}
  return {'backend': jax.default_backend(), 'batch': batch, 'dtype': dtype, 'layers': rows,
          'step': step, 'devices': {d: list(f) for d, f in devices.items()}}


def markdown(result: dict) -> str:
  """The per-layer table (each device's bound and what sets it) and the step's bound."""
  b = result['batch']
  devices = list(result['devices'])
  xla = f"XLA:{result['backend'].upper()} MB"
  lines = [f"Roofline of the train step, batch {b}, {result['dtype']}, per device "
           f"(bound µs, and whether compute or memory sets it)", '',
           f'| layer | train GFLOP | train MB | {xla} | FLOP/byte | ' +
           ' | '.join(f'{d} bound µs' for d in devices) + ' |',
           '|---|---:|---:|---:|---:|' + '---:|' * len(devices)]
  for r in result['layers']:
    intensity = r['train_flops'] / max(r['train_bytes'], 1.0)
    lines.append(f"| {r['layer']} | {r['train_flops'] / 1e9:.2f} | {r['train_bytes'] / 1e6:.1f} | "
                 f"{r['xla_train_bytes'] / 1e6:.0f} | {intensity:.0f} | " +
                 ' | '.join(f"{r[f'{d}_us']:.0f} {r[f'{d}_by']}" for d in devices) + ' |')
  s = result['step']
  lines += ['', f"Whole train step: {s['flops'] / 1e9:.1f} GFLOP, {s['bytes'] / 1e6:.0f} MB of "
            'state and batch.', '',
            '| device | sum of layer bounds µs | img/s ceiling | whole-step bound µs | '
            'bound by | img/s |',
            '|---|---:|---:|---:|---|---:|']
  for d in devices:
    x = s[d]
    lines.append(f"| {d} | {x['layers_sum_us']:.0f} | {x['layers_img_per_s']:,.0f} | "
                 f"{x['step_us']:.0f} | {x['bound_by']} | {x['img_per_s']:,.0f} |")
  return '\n'.join(lines)


FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line's flags (only when run as a script: other modules import this one)."""
  flags.DEFINE_integer('batch', 128, 'Batch size.')
  flags.DEFINE_enum('dtype', 'bfloat16', list(DTYPES), 'Compute dtype.')
  flags.DEFINE_integer('image_size', 224, 'Image side (224: the paper).')
  flags.DEFINE_string('json_out', None, 'Write the result as JSON here.')


def main(argv):
  del argv
  spec = network.AlexNetSpec(image_size=FLAGS.image_size)
  result = roofline(spec, FLAGS.batch, FLAGS.dtype)
  print(markdown(result))
  if FLAGS.json_out:
    with open(FLAGS.json_out, 'w', encoding='utf-8') as f:
      json.dump(result, f, indent=1, default=float)


if __name__ == '__main__':
  define_flags()
  app.run(main)
