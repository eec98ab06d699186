"""What the GPU check (`benchmarks.gpu_check`, `pytest -m gpu`) runs first on an accelerator:
the model against float64 NumPy in float32 and bfloat16, every mesh that fits one device,
and a checkpoint saved and restored bitwise. Each runs on the default backend, so CI runs
them on CPU too; the check sets JAX_PLATFORMS and ALEXNET_JAX_EXPECT_BACKEND, and
tests/conftest.py fails each of them that runs on another backend.

float32 bounds: 1e-5 with full float32 arithmetic (`precision='highest'`). With the default
precision an NVIDIA GPU multiplies float32 in TF32 (10-bit mantissa, about 5e-4 relative per
product); through eight layers a few 1e-3 is TF32's own error, so the default-precision
bound is 1e-2 off CPU. bfloat16 (8-bit mantissa): 5e-2.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax.checkpoint import checkpointing
from alexnet_jax.model import network
from tests import helpers
from tests import reference
from tests import test_sharding

pytestmark = pytest.mark.gpu


@functools.lru_cache(maxsize=1)
def _float64_case():
  """Random parameters and images with the float64 NumPy logits (computed once)."""
  spec = network.AlexNetSpec()
  params64 = reference.random_params(spec.param_shapes(), 0)
  images = np.random.default_rng(1).uniform(-120, 120, (2, 224, 224, 3))
  return spec, params64, images, reference.forward(params64, images, spec.conv1_stride,
                                                   spec.conv1_pads())


def test_the_backend_is_the_one_asked_for():
  """The arrays of a jitted computation live on the backend the check asked for (conftest
  checks JAX's default backend; this, where the computation ran)."""
  expected = os.environ.get('ALEXNET_JAX_EXPECT_BACKEND') or jax.default_backend()
  out = jax.jit(lambda x: x @ x)(jnp.eye(4))
  assert {d.platform for d in out.devices()} == {expected}
  np.testing.assert_array_equal(np.asarray(out), np.eye(4))


def _relative_error(dtype, precision):
  spec, params64, images, want = _float64_case()
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params64)
  with jax.default_matmul_precision(precision):
    got = jax.jit(lambda p, x: network.apply(p, x, spec, compute_dtype=dtype))(
        params, jnp.asarray(images, jnp.float32))
  assert np.abs(want).max() > 1.0  # a non-trivial output
  return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


@pytest.mark.parametrize('dtype,precision', [('float32', 'highest'), ('float32', 'default'),
                                             ('bfloat16', 'default')])
def test_the_224_network_matches_float64_numpy(dtype, precision):
  on_cpu = jax.default_backend() == 'cpu'
  bound = {('float32', 'highest'): 1e-5,
           ('float32', 'default'): 1e-5 if on_cpu else 1e-2,
           ('bfloat16', 'default'): 5e-2}[dtype, precision]
  rel = _relative_error(getattr(jnp, dtype), precision)
  assert rel < bound, (dtype, precision, rel)


def test_every_mesh_on_one_device_gives_the_same_steps():
  """towers, data and hybrid on a 1x1 mesh: five steps, same losses and states."""
  with jax.default_matmul_precision('highest'):
    first_losses, first = test_sharding.five_step_losses(test_sharding.layout_for('towers', 1, 1))
    for mode in ('data', 'hybrid'):
      losses, state = test_sharding.five_step_losses(test_sharding.layout_for(mode, 1, 1))
      np.testing.assert_allclose(losses, first_losses, rtol=1e-5, err_msg=mode)
      for got, want in zip(jax.tree.leaves(test_sharding.host_state(state)),
                           jax.tree.leaves(test_sharding.host_state(first))):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max(),
                                   err_msg=mode)


def test_a_checkpoint_saved_on_the_device_restores_bitwise(tmp_path):
  layout = test_sharding.layout_for('towers', 1, 1)
  _, state = test_sharding.five_step_losses(layout)
  ckpts = checkpointing.Checkpoints(str(tmp_path))
  ckpts.save(5, state, {'step': 5}, {'mean': np.zeros((4, 4, 3), np.float32)})
  ckpts.wait()
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          state)
  restored, meta = ckpts.restore_step(5, abstract, lambda meta, path: None)
  assert meta['step'] == 5
  ckpts.close()
  helpers.assert_bitwise_equal(jax.device_get(restored), jax.device_get(state))
  assert {a.sharding for a in jax.tree.leaves(restored)} == {
      a.sharding for a in jax.tree.leaves(state)}
