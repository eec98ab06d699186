"""The eval step's metrics against float64 numpy: centre view, and the 10-crop softmax
average (section 4.1) where single views are confidently wrong (the log of the averaged
probability must stay finite)."""

import jax
import numpy as np

from alexnet_jax.model import network
from alexnet_jax.model.pixels import pixel_batch
from alexnet_jax.parallel import sharding
from alexnet_jax.train import steps
from tests import helpers

SPEC = network.AlexNetSpec(**helpers.SPEC_KWARGS)


def reference(logits, labels, weights):
  """Summed loss, top-1, top-5 in float64 from per-example logits (B, C) or (B, V, C)."""
  logits = np.asarray(logits, np.float64)
  if logits.ndim == 3:
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p = (p / p.sum(-1, keepdims=True)).mean(axis=1)
    log_p = np.log(p)
  else:
    log_p = logits - logits.max(-1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(-1, keepdims=True))
  order = np.argsort(-log_p, axis=-1)
  loss = -log_p[np.arange(len(labels)), labels]
  top1 = order[:, 0] == labels
  top5 = (order[:, :5] == labels[:, None]).any(-1)
  return {'loss': (loss * weights).sum(), 'top1': (top1 * weights).sum(),
          'top5': (top5 * weights).sum(), 'count': weights.sum()}


def test_centre_and_ten_crop_metrics_match_numpy():
  layout = sharding.Layout(sharding.make_mesh(1, 1, jax.devices()[:1]), 'towers')
  params = network.init_params(jax.random.key(0), SPEC)
  # Logits 300-400 apart: float32 softmaxes underflow to 0, float64 ones do not.
  host_params = jax.tree.map(lambda p: np.asarray(p) * 2.6, params)
  params = jax.device_put(host_params, layout.param_shardings(host_params))
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (4, 10, 32, 32, 3), dtype=np.uint8)
  mean = np.full((3,), 120.0, np.float32)
  labels = np.array([1, 2, 3, 4], np.int32)
  weights = np.array([1, 1, 1, 0], np.float32)
  eval_step = steps.make_eval_step(SPEC, layout, mean=mean)
  apply = jax.jit(lambda x: network.apply(host_params, x, SPEC))
  views = pixels.astype(np.float32) - mean
  logits = np.asarray(apply(views.reshape(40, 32, 32, 3))).reshape(4, 10, -1)
  gaps = logits.max(-1) - logits.min(-1)
  assert gaps.min() > 110 and gaps.max() < 700  # exp(-gap) is 0 in float32, not in float64

  for images, want in ((pixels[:, 4], reference(logits[:, 4], labels, weights)),
                       (pixels, reference(logits, labels, weights))):
    batch = jax.device_put(pixel_batch(images), layout.batch_sharding())
    got = jax.device_get(eval_step(params, batch,
                                   jax.device_put(labels, layout.label_sharding()),
                                   jax.device_put(weights, layout.label_sharding())))
    assert np.isfinite(got['loss'])
    for k in want:
      np.testing.assert_allclose(got[k], want[k], rtol=1e-4, err_msg=k)
