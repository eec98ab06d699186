"""The optimizer against the paper's update rule (section 5), computed by hand."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alexnet_jax.train import optimizer


def paper_rule(w, grads, lrs, momentum=0.9, wd=0.0005):
  """v <- 0.9 v - 0.0005 lr w - lr g; w <- w + v, in float64."""
  v = np.zeros_like(w)
  for g, lr in zip(grads, lrs):
    v = momentum * v - wd * lr * w - lr * g
    w = w + v
  return w


def run(tx, w, grads):
  params = {'w': jnp.asarray(w, jnp.float32)}
  state = tx.init(params)
  for g in grads:
    updates, state = tx.update({'w': jnp.asarray(g, jnp.float32)}, state, params)
    params = optax.apply_updates(params, updates)
  return np.asarray(params['w'])


def test_constant_rate_matches_the_paper():
  rng = np.random.default_rng(0)
  w0, grads = rng.normal(size=5), rng.normal(size=(4, 5))
  got = run(optimizer.paper_momentum(0.01), w0, grads)
  np.testing.assert_allclose(got, paper_rule(w0, grads, [0.01] * 4), rtol=1e-6)


def test_first_step_by_hand():
  # v1 = -0.0005 * 0.01 * 2 - 0.01 * 0.5 = -0.00501; w1 = 2 - 0.00501.
  got = run(optimizer.paper_momentum(0.01), np.array([2.0]), np.array([[0.5]]))
  np.testing.assert_allclose(got, [1.99499], rtol=1e-7)


def test_rate_drop_scales_new_gradients_only():
  # The paper multiplies each gradient by the rate of its own step; optax.sgd would
  # rescale the whole momentum buffer when the rate drops.
  rng = np.random.default_rng(1)
  w0, grads = rng.normal(size=3), rng.normal(size=(6, 3))
  lrs = [0.01, 0.01, 0.01, 0.001, 0.001, 0.001]
  schedule = optax.piecewise_constant_schedule(0.01, {3: 0.1})
  got = run(optimizer.paper_momentum(schedule), w0, grads)
  np.testing.assert_allclose(got, paper_rule(w0, grads, lrs), rtol=1e-6)
  sgd = run(optax.chain(optax.add_decayed_weights(0.0005), optax.sgd(schedule, 0.9)), w0, grads)
  assert np.abs(sgd - got).max() > 1e-5


def test_step_schedule_is_cuda_convnet2s():
  sched = optimizer.learning_rate_schedule('step', 0.02, 100, (0.25, 0.5, 0.75), 250 ** (-1 / 3))
  np.testing.assert_allclose([sched(0), sched(24), sched(25), sched(50), sched(99)],
                             [0.02, 0.02, 0.02 / 250 ** (1 / 3), 0.02 / 250 ** (2 / 3),
                              0.02 / 250], rtol=1e-5)


def test_plateau_divides_at_most_three_times():
  p = optimizer.Plateau(factor=0.1, patience=1, max_drops=3)
  errors = [0.5, 0.4, 0.45, 0.39, 0.39, 0.4, 0.41, 0.42, 0.43]
  drops = [p.update(e) for e in errors]
  assert drops == [False, False, True, False, True, True, False, False, False]


def test_unknown_schedule_is_rejected():
  with pytest.raises(ValueError, match='lr_schedule'):
    optimizer.learning_rate_schedule('cosine', 0.01, 10)
