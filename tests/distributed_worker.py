"""Trains a few steps on a towers data=4 x model=2 mesh; run as one of several processes.

  python -m tests.distributed_worker PORT NUM_PROCESSES PROCESS_ID OUT.json [memory|stream]

memory: `memory.MemoryLoader` on random images in memory; stream: the paper's pipeline
(`stream.StreamLoader`) on JPEGs of varying sizes cut from a real photo.
"""

import json
import os
import sys

from tests import helpers


class _CountingSource:
  """A list of records that counts the records read from it."""

  def __init__(self, records):
    self.records, self.reads = records, 0

  def __len__(self):
    return len(self.records)

  def __getitem__(self, i):
    self.reads += 1
    return self.records[i]


def train_losses(num_steps: int = 3, batch: int = 16, pipeline: str = 'memory') -> dict:
  """{'losses': the losses of `num_steps` steps, 'reads': records this process read}."""
  import jax
  import numpy as np

  from alexnet_jax.data import memory
  from alexnet_jax.data import stream
  from alexnet_jax.model import network
  from alexnet_jax.parallel import sharding
  from alexnet_jax.train import optimizer
  from alexnet_jax.train import steps

  spec = network.AlexNetSpec(**helpers.SPEC_KWARGS)
  layout = sharding.Layout(sharding.make_mesh(4, 2), 'towers')
  rng = np.random.default_rng(0)
  source = None
  if pipeline == 'stream':
    source = _CountingSource(helpers.jpeg_records())
    loader = stream.StreamLoader(
        source, batch, seed=0, augment=stream.Augment(prepared_size=36, crop_size=32))
    mean = np.random.default_rng(1).uniform(80, 160, (36, 36, 3)).astype(np.float32)
  else:
    split = memory.Split(rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8),
                         rng.integers(0, 10, (64,), dtype=np.int32))
    loader = memory.MemoryLoader(split, batch, seed=0, pad=2, flip=True)
    mean = np.full((3,), 127.5, np.float32)
  tx = optimizer.paper_momentum(0.01)
  state = steps.create_train_state(jax.random.key(0), spec, tx, layout)
  train_step = steps.make_train_step(spec, layout, tx, batch, mean=mean)
  losses = []
  for images, labels in loader.batches(0, num_steps, layout.batch_sharding(),
                                       layout.label_sharding()):
    state, metrics = train_step(state, images, labels)
    losses.append(float(metrics['loss']))
  return {'losses': losses, 'reads': source.reads if source else None}


if __name__ == '__main__':
  port, num_processes, process_id, out = sys.argv[1:5]
  pipeline = sys.argv[5] if len(sys.argv) > 5 else 'memory'
  os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'
  os.environ['JAX_PLATFORMS'] = 'cpu'
  from alexnet_jax import xla_cpu
  xla_cpu.configure()
  import jax
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(f'127.0.0.1:{port}', int(num_processes), int(process_id))
  assert jax.device_count() == 4 * int(num_processes), jax.devices()
  result = train_losses(pipeline=pipeline)
  with open(out, 'w', encoding='utf-8') as f:
    json.dump(result, f)
  jax.distributed.shutdown()
