"""Memory and communication per device of each parallelism mode, on forced CPU devices.

Run from the repository root:

    python -m benchmarks.comm_memory                    # 8 CPU devices, batch 128
    python -m benchmarks.comm_memory --batch_size=256

Prints one Markdown table (for a README) with a row per mode and mesh (data x model):
towers 4x2, data 8x1, hybrid 4x2 and towers 1x2. Nothing is timed, so the figures
do not depend on the machine's load.

* param+opt MiB: bytes of the parameters and optimizer state of a real
  `steps.create_train_state` on the mesh, summed over each device's addressable
  shards; device 0 and the largest device.
* sent across model / data / data+model MiB: bytes one device sends per train step,
  from the collectives of the compiled train step (`comm.collectives` on
  `compiled.as_text()`, ring-algorithm counts, grouped by `comm.bytes_by_axes`);
  `data+model` is a collective over every device (hybrid's conv gradients).
* analytic towers MiB: `comm.towers_activation_bytes`, the paper's split counted by
  hand (towers rows only; the model-axis column should match it).
* temp MiB: the compiled step's temporary buffers per device (`memory_analysis()`).

The train step is compiled from abstract inputs (`steps.abstract_train_state`) at
float32; the CPU device count goes into XLA_FLAGS before JAX creates its CPU client.
"""

from __future__ import annotations

import os

from absl import app
from absl import flags
import jax
import numpy as np

from alexnet_jax import xla_cpu
from alexnet_jax.model import network
from alexnet_jax.parallel import comm
from alexnet_jax.parallel import sharding
from alexnet_jax.train import optimizer
from alexnet_jax.train import steps

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line's flags (only when run as a script: other modules import this one)."""
  flags.DEFINE_integer('devices', 8, 'Number of CPU devices to force.')
  flags.DEFINE_integer('batch_size', 128, 'Global batch size of the train step.')


MESHES = (('towers', 4, 2), ('data', 8, 1), ('hybrid', 4, 2), ('towers', 1, 2))
MIB = 2**20


def state_bytes_per_device(state, devices) -> list[int]:
  """Bytes of parameters + optimizer state held by each device."""
  index = {d: i for i, d in enumerate(devices)}
  totals = [0] * len(devices)
  for leaf in jax.tree.leaves((state.params, state.opt_state)):
    for shard in leaf.addressable_shards:
      totals[index[shard.device]] += shard.data.nbytes
  return totals


def measure(spec, mode: str, data: int, model_: int, batch: int) -> dict:
  devices = jax.devices()[:data * model_]
  layout = sharding.Layout(sharding.make_mesh(data, model_, devices), mode)
  layout.check_batch(batch)
  tx = optimizer.paper_momentum(0.01)

  state = steps.create_train_state(jax.random.key(0), spec, tx, layout)
  per_device = state_bytes_per_device(state, devices)
  del state

  abstract_state = steps.abstract_train_state(spec, tx, layout)
  images = jax.ShapeDtypeStruct((batch, spec.image_size, spec.image_size, spec.in_channels),
                                np.float32, sharding=layout.batch_sharding())
  labels = jax.ShapeDtypeStruct((batch,), np.int32, sharding=layout.label_sharding())
  train_step = steps.make_train_step(spec, layout, tx, batch)
  compiled = train_step.lower(abstract_state, images, labels).compile()
  sent = comm.bytes_by_axes(comm.collectives(compiled.as_text(), (data, model_)))
  analytic = (comm.towers_activation_bytes(spec, batch // data, model_)['total']
              if mode == 'towers' else None)
  return {
      'mode': mode, 'mesh': f'{data}x{model_}',
      'state_dev0': per_device[0], 'state_max': max(per_device),
      'model': sent.pop('model', 0.0), 'data': sent.pop('data', 0.0),
      'data+model': sent.pop('data+model', 0.0), 'other': sum(sent.values()),
      'analytic': analytic, 'temp': compiled.memory_analysis().temp_size_in_bytes,
  }


def markdown_table(rows: list[dict]) -> str:
  mib = lambda x: '-' if x is None else f'{x / MIB:.1f}'
  lines = ['| mode | mesh (data x model) | param+opt MiB dev 0 | param+opt MiB max | '
           'sent across model MiB | sent across data MiB | sent across data+model MiB | '
           'analytic towers MiB | temp MiB |',
           '|---|---|---:|---:|---:|---:|---:|---:|---:|']
  for r in rows:
    lines.append(f"| {r['mode']} | {r['mesh']} | {mib(r['state_dev0'])} | {mib(r['state_max'])} | "
                 f"{mib(r['model'])} | {mib(r['data'])} | {mib(r['data+model'])} | "
                 f"{mib(r['analytic'])} | {mib(r['temp'])} |")
  return '\n'.join(lines)


def main(argv):
  del argv
  # XLA reads its flags when JAX creates the CPU client, at the first device query below.
  os.environ['XLA_FLAGS'] = (f"{os.environ.get('XLA_FLAGS', '')} "
                             f'--xla_force_host_platform_device_count={FLAGS.devices}').strip()
  xla_cpu.configure()
  jax.config.update('jax_platforms', 'cpu')
  spec = network.AlexNetSpec()
  meshes = [m for m in MESHES if m[1] * m[2] <= jax.device_count()]
  rows = [measure(spec, mode, d, m, FLAGS.batch_size) for mode, d, m in meshes]
  print(f'AlexNetSpec() 224x224, global batch {FLAGS.batch_size}, float32, '
        f'{jax.device_count()} CPU devices; {spec.num_params():,} parameters '
        f'({spec.num_params() * 4 / MIB:.1f} MiB, the same again for momentum). '
        'Bytes sent per device per train step.')
  if len(meshes) < len(MESHES):
    print(f'note: meshes larger than {jax.device_count()} devices skipped.')
  print()
  print(markdown_table(rows))
  for r in rows:
    if r['other']:
      print(f"note: {r['mode']} {r['mesh']} also sends {r['other']:.0f} bytes in collectives "
            'whose device groups comm.collectives could not map to mesh axes.')


if __name__ == '__main__':
  define_flags()
  app.run(main)
