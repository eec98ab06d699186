"""The train step as a whole against float64 NumPy: the loss, the gradient and the paper's
momentum and weight-decay update (section 5) of two steps, on a small two-tower network
with every layer and join (dropout off: its masks are tested in test_sharding.py)."""

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.model import network
from alexnet_jax.parallel import sharding
from alexnet_jax.train import optimizer
from alexnet_jax.train import steps
from tests import reference

SPEC = network.AlexNetSpec(num_classes=5, image_size=16, in_channels=2, num_towers=2,
                         conv_features=(3, 4, 3, 3, 2), conv_kernels=(3, 3, 3, 3, 3),
                         conv1_stride=1, conv1_padding='same', fc_features=4, dropout_rate=0.0)
LR, MOMENTUM, DECAY = 0.01, 0.9, 0.0005


def reference_loss(params, images, labels):
  return reference.cross_entropy(reference.forward(params, images, 1, SPEC.conv1_pads()), labels)


def finite_difference(params, images, labels, layer, name, index, eps=1e-6):
  def at(delta):
    bumped = {l: dict(d) for l, d in params.items()}
    bumped[layer][name] = params[layer][name].copy()
    bumped[layer][name][index] += delta
    return reference_loss(bumped, images, labels)
  return (at(eps) - at(-eps)) / (2 * eps)


def host(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float64), jax.device_get(tree))


def test_two_steps_match_the_papers_update_in_float64():
  rng = np.random.default_rng(0)
  w0 = reference.random_params(SPEC.param_shapes(), 1)
  batches = [(rng.uniform(-100, 100, (4, 16, 16, 2)), rng.integers(0, 5, 4)) for _ in range(2)]
  layout = sharding.Layout(sharding.make_mesh(1, 1, jax.devices()[:1]), 'towers')
  tx = optimizer.paper_momentum(LR, MOMENTUM, DECAY)
  state = steps.create_train_state(jax.random.key(0), SPEC, tx, layout)
  state = state.replace(params=jax.device_put(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32),
                                                           w0), layout.param_shardings(w0)))
  train_step = steps.make_train_step(SPEC, layout, tx, 4, donate=False)
  params, velocity, losses = [host(state.params)], [], []
  for images, labels in batches:
    state, metrics = train_step(state, jnp.asarray(images, jnp.float32),
                                jnp.asarray(labels, jnp.int32))
    params.append(host(state.params))
    velocity.append(host(state.opt_state.inner_state[2].trace))
    losses.append(float(metrics['loss']))

  sample = np.random.default_rng(2)
  checked = 0
  for step, (images, labels) in enumerate(batches):
    w = params[step]  # the step's starting point, as float64
    np.testing.assert_allclose(losses[step], reference_loss(w, images, labels), rtol=1e-5)
    for layer, names in w.items():
      for name, value in names.items():
        for _ in range(2):
          i = tuple(int(sample.integers(0, n)) for n in value.shape)
          g = finite_difference(w, images, labels, layer, name, i)
          v_before = velocity[step - 1][layer][name][i] if step else 0.0
          v = MOMENTUM * v_before - DECAY * LR * value[i] - LR * g  # v <- 0.9 v - 0.0005 e w - e g
          where = f'step {step + 1} {layer}.{name}{i}'
          scale = LR * max(abs(g), 1e-3)
          np.testing.assert_allclose(velocity[step][layer][name][i], v, atol=1e-4 * scale,
                                     rtol=1e-3, err_msg=where)
          np.testing.assert_allclose(params[step + 1][layer][name][i] - value[i], v,
                                     atol=1e-3 * scale + 1e-7, rtol=1e-3, err_msg=where)
          checked += 1
  assert checked == 2 * 2 * 2 * len(w0) and len(set(np.round(losses, 5))) == 2
