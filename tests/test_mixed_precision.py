"""bfloat16 compute with float32 parameters, optimizer state and loss."""

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.model import network
from alexnet_jax.parallel import sharding
from alexnet_jax.train import optimizer
from alexnet_jax.train import steps
from tests import helpers


def test_bfloat16_compute_trains_with_float32_state():
  spec = network.AlexNetSpec(**{**helpers.SPEC_KWARGS, 'dropout_rate': 0.0})
  layout = sharding.Layout(sharding.make_mesh(1, 1, jax.devices()[:1]), 'towers')
  tx = optimizer.paper_momentum(0.01)
  state = steps.create_train_state(jax.random.key(0), spec, tx, layout)
  train_step = steps.make_train_step(spec, layout, tx, 32, compute_dtype=jnp.bfloat16)
  # A learnable task: the class is which quadrant is bright.
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 4, 32).astype(np.int32)
  images = rng.normal(0, 10, (32, 32, 32, 3)).astype(np.float32)
  for i, c in enumerate(labels):
    images[i, (c // 2) * 16:(c // 2 + 1) * 16, (c % 2) * 16:(c % 2 + 1) * 16] += 100
  losses = []
  for _ in range(30):
    state, metrics = train_step(state, images, labels)
    losses.append(float(metrics['loss']))
    assert metrics['loss'].dtype == jnp.float32
  assert all(l.dtype == jnp.float32 for l in jax.tree.leaves((state.params, state.opt_state))
             if hasattr(l, 'dtype') and jnp.issubdtype(l.dtype, jnp.floating))
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-5:]) < 0.5 * losses[0], losses
