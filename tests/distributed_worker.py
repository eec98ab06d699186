"""Trains a few steps on a towers data=4 x model=2 mesh; run as one of several processes.

  python tests/distributed_worker.py PORT NUM_PROCESSES PROCESS_ID OUT.json
"""

import json
import os
import sys

SPEC_KWARGS = dict(num_classes=10, image_size=32, in_channels=3, conv_features=(8, 16, 24, 24, 16),
                   conv_kernels=(3, 3, 3, 3, 3), conv1_stride=1, conv1_padding='same',
                   fc_features=32, init_std=0.05)


def train_losses(num_steps: int = 3, batch: int = 16) -> list[float]:
  import jax
  import numpy as np

  from alexnet_jax import input_pipeline, model, optimizer, sharding, steps

  spec = model.AlexNetSpec(**SPEC_KWARGS)
  layout = sharding.Layout(sharding.make_mesh(4, 2), 'towers')
  rng = np.random.default_rng(0)
  split = input_pipeline.Split(rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8),
                               rng.integers(0, 10, (64,), dtype=np.int32))
  loader = input_pipeline.TrainLoader(split, batch, seed=0, pad=2, flip=True)
  tx = optimizer.paper_momentum(0.01)
  state = steps.create_train_state(jax.random.key(0), spec, tx, layout)
  train_step = steps.make_train_step(spec, layout, tx, batch,
                                     mean=np.full((3,), 127.5, np.float32))
  losses = []
  for images, labels in loader.batches(0, num_steps, layout.batch_sharding(),
                                       layout.label_sharding()):
    state, metrics = train_step(state, images, labels)
    losses.append(float(metrics['loss']))
  return losses


if __name__ == '__main__':
  port, num_processes, process_id, out = sys.argv[1:5]
  os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'
  os.environ['JAX_PLATFORMS'] = 'cpu'
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import jax
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(f'127.0.0.1:{port}', int(num_processes), int(process_id))
  assert jax.device_count() == 4 * int(num_processes), jax.devices()
  result = train_losses()
  with open(out, 'w', encoding='utf-8') as f:
    json.dump(result, f)
  jax.distributed.shutdown()
