"""bfloat16 compute with float32 parameters, optimizer state and loss: it trains, each layer's
error against float64 is what bfloat16's 8-bit significand predicts, and it learns the
embedded Fashion-MNIST as well as float32 does (docs/precision.md)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax.data import memory
from alexnet_jax.data import sources
from alexnet_jax.data import transforms
from alexnet_jax.data.prepare import builders
from alexnet_jax.model import config as model_config
from alexnet_jax.model import network
from alexnet_jax.model import pixels
from alexnet_jax.parallel import sharding
from alexnet_jax.train import optimizer
from alexnet_jax.train import run_setup
from alexnet_jax.train import steps
from configs import fashion_mnist
from tests import helpers
from tests import reference


@functools.lru_cache(maxsize=1)
def _embedded_fashion_mnist() -> tuple[memory.Split, memory.Split]:
  """The repository's 10,000 training and 2,000 test images (data/fashion_mnist)."""
  def split(prefix):
    d = sources.EMBEDDED_FASHION_MNIST
    images = builders.read_idx(d / f'{prefix}-images-idx3-ubyte.gz')[..., None]
    labels = builders.read_idx(d / f'{prefix}-labels-idx1-ubyte.gz').astype(np.int32)
    return memory.Split(images, labels)
  return split('train'), split('t10k')


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


# ---- layer by layer against float64 NumPy -------------------------------------------------

# Unit roundoff: round to nearest with p significant bits (the implicit one included) gives
# |fl(x) - x| <= u |x|, u = 2^-p: bfloat16 p = 8, float32 p = 24.
UNIT_ROUNDOFF = {'bfloat16': 2.0 ** -8, 'float32': 2.0 ** -24}
# The RMS relative error of one such rounding, for mantissas spread log-uniformly over
# [1, 2): the error is uniform over +-ulp/2, ulp = 2u on [1, 2), so
# E[delta^2] = (2u)^2 / 12 * E[1/m^2] = (2u)^2 / 12 * (3/8) / ln 2, delta_rms = 0.425 u.
RMS_PER_ROUNDING = 0.425
# Values `network.apply` rounds to the compute dtype in each layer (ReLU and max pooling
# select values exactly): a convolution or fully connected layer rounds its kernel, its bias,
# the convolution's (matmul's) float32-accumulated result and the bias added to it, conv1
# also the image; LRN is computed in float32 from its input and rounded once; fc8 rounds its
# kernel and each tower's product, then sums the towers and adds its bias in float32.
ROUNDINGS = {'conv1': 5, 'lrn1': 1, 'pool1': 0, 'conv2': 4, 'lrn2': 1, 'pool2': 0, 'conv3': 4,
             'conv4': 4, 'conv5': 4, 'pool5': 0, 'fc6': 4, 'fc7': 4, 'fc8': 2}
# In float32 the sums round too: a length-K sum adds about K roundings (fewer when summed in
# blocks), and LRN's float32 arithmetic (square, window sum, power, product) a few.
FLOAT32_EXTRA = {'lrn': 4}
MARGIN = 3.0


def predicted_errors(spec, dtype: str) -> dict[str, float]:
  """The norm-wise relative error ||got - exact|| / ||exact|| each layer's output should show
  in `dtype`: N roundings of relative RMS error 0.425 u each, independent and of either sign,
  add in quadrature: 0.425 u sqrt(N), N counted from the image up to that layer's output. It
  assumes each layer passes its input's relative error on unamplified (the norm-wise error
  through a random linear map, 1-Lipschitz ReLU and pooling, and LRN, whose scale barely
  moves with its input at alpha = 1e-4) and sums without cancellation of their size; MARGIN
  = 3 covers both."""
  fan_in = {name: int(np.prod(s['kernel'][1:-1])) for name, s in spec.param_shapes().items()}
  u, total, out = UNIT_ROUNDOFF[dtype], 0, {}
  for name, count in ROUNDINGS.items():
    total += count
    if dtype == 'float32':
      total += fan_in.get(name, FLOAT32_EXTRA.get(name[:3], 0))
    out[name] = RMS_PER_ROUNDING * u * np.sqrt(total)
  return out


@functools.lru_cache(maxsize=2)
def _float64_layers(name):
  """A network, its float64 parameters, inputs, and every layer's float64 output."""
  if name == 'fashion_mnist':  # the quick real-data config on 64 of its test images
    config = fashion_mnist.get_config()
    spec = model_config.model_spec(config)
    train, test = _embedded_fashion_mnist()
    images = test.images[:64].astype(np.float64) - train.images.mean(0, dtype=np.float64)
  else:  # the paper's network on random images of the 0-255 scale, mean subtracted
    spec = network.AlexNetSpec()
    images = np.random.default_rng(1).uniform(-120, 120, (2, 224, 224, 3))
  params64 = reference.random_params(spec.param_shapes(), 0)
  _, layers = reference.forward(params64, images, spec.conv1_stride, spec.conv1_pads(),
                                activations=True)
  return spec, params64, images, layers


def layer_errors(name, dtype: str):
  """{layer: (dtype of its output, norm-wise relative error against float64)}."""
  spec, params64, images, want = _float64_layers(name)
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params64)
  run = jax.jit(lambda p, x: network.apply(p, x, spec, compute_dtype=getattr(jnp, dtype),
                                           activations=True)[1])
  with jax.default_matmul_precision('highest'):  # float32 on a GPU too (not TF32)
    got = run(params, jnp.asarray(images, jnp.float32))
  assert set(got) == set(want) == set(ROUNDINGS)
  return {k: (got[k].dtype, float(np.linalg.norm(np.asarray(got[k], np.float64) - want[k])
                                  / np.linalg.norm(want[k]))) for k in ROUNDINGS}


@pytest.mark.parametrize('network_name', [
    'fashion_mnist', pytest.param('alexnet_224', marks=pytest.mark.exhaustive)])
def test_every_layer_is_within_its_dtypes_rounding_error_of_float64(network_name):
  """Each layer's output in bfloat16 and in float32 against the independent float64 NumPy
  model on the same parameters and images, within MARGIN times `predicted_errors`. Measured
  (docs/precision.md), error / prediction: bfloat16 0.73-0.94 (Fashion-MNIST net) and
  0.62-0.82 (224 net), float32 0.30-0.87 and 0.12-0.51. bfloat16's error is thus told from
  a bug: the same code in float32 must agree with the reference to its own bound, 3e-7 to
  1e-5 (a disagreement of network and reference would show there too), and each layer's
  output must have the compute dtype. Shown to fail: pool2 rounded through float8_e4m3
  (2.7e-2 against its bound 1.7e-2), fc6's kernel left in float32 (fc6 comes out float32),
  and in float32 the convolution kernels rounded to bfloat16 (conv1 1.5e-3 against 2.8e-7).
  A few more bfloat16 roundings are within the margin (LRN computed in bfloat16: lrn1 at
  1.15 of the prediction)."""
  spec = _float64_layers(network_name)[0]
  for dtype in ('float32', 'bfloat16'):
    bounds = {k: MARGIN * v for k, v in predicted_errors(spec, dtype).items()}
    errors = layer_errors(network_name, dtype)
    report = {k: f'{e:.2e} (bound {bounds[k]:.2e})' for k, (_, e) in errors.items()}
    for layer, (got_dtype, error) in errors.items():
      want_dtype = jnp.float32 if layer == 'fc8' else getattr(jnp, dtype)  # logits: float32
      assert got_dtype == want_dtype, (dtype, layer, got_dtype)
      assert error < bounds[layer], (dtype, layer, report)


# ---- learning: bfloat16 against float32 on the embedded Fashion-MNIST ----------------------

LEARN_BATCH = 32


@functools.lru_cache(maxsize=4)
def _learning_run(dtype: str, num_steps: int):
  """configs/fashion_mnist.py cut to `num_steps` steps of 32 images, with its schedule (the
  rate / 10 at half and three quarters of the steps), data (per-pixel mean, random crops of
  the image padded by 2, reflections) and model in `dtype`: the train and eval steps
  compiled once for every seed, as launch.py builds them."""
  config = fashion_mnist.get_config()
  config.batch_size = LEARN_BATCH
  config.model.dtype = dtype
  spec = model_config.model_spec(config)
  compute_dtype = model_config.compute_dtype(config)
  layout = sharding.Layout(sharding.make_mesh(1, 1, jax.devices()[:1]), 'towers')
  tx = run_setup.make_optimizer(config, num_steps)
  train, _ = _embedded_fashion_mnist()
  statistics = transforms.PixelStatistics(pca=False)
  statistics.add(train.images)
  mean, scale = transforms.mean_and_scale(config.data, statistics.as_dict())
  train_step = steps.make_train_step(spec, layout, tx, LEARN_BATCH, compute_dtype=compute_dtype,
                                     mean=mean, scale=scale, grad_norm=False)
  eval_step = steps.make_eval_step(spec, layout, compute_dtype=compute_dtype, mean=mean,
                                   scale=scale)
  return config, spec, layout, tx, train_step, eval_step


def learned_accuracy(dtype: str, seed: int, num_steps: int) -> float:
  """Centre-view top-1 on the 2,000 test images after the short run with `seed` (the
  parameters' initialisation, the batches' order and views, and dropout's masks)."""
  config, spec, layout, tx, train_step, eval_step = _learning_run(dtype, num_steps)
  train, test = _embedded_fashion_mnist()
  state = steps.create_train_state(jax.random.key(seed), spec, tx, layout)
  loader = memory.MemoryLoader(train, LEARN_BATCH, seed, pad=config.data.crop_pad,
                               flip=config.data.flip)
  for step in range(num_steps):
    images, labels, _ = loader.read(step, slice(None))
    state, metrics = train_step(state, images, labels)
  assert np.isfinite(float(metrics['loss']))
  hits = 0.0
  for start in range(0, len(test.labels), 500):
    labels = test.labels[start:start + 500]
    sums = eval_step(state.params, pixels.pixel_batch(test.images[start:start + 500]), labels,
                     np.ones(len(labels), np.float32))
    hits += float(sums['top1'])
  return hits / len(test.labels)


# float32's mean top-1 over seeds 0-3 after 900 steps (docs/precision.md).
FLOAT32_MEAN_900_STEPS = 0.7326


@pytest.mark.exhaustive
def test_bfloat16_learns_as_well_as_float32_over_seeds():
  """Three passes (900 steps of 32), seeds 0-2 in bfloat16, against float32's seeds 0-3
  measured on the same runs (docs/precision.md): float32 70.60, 74.25, 74.45, 73.75% (mean
  73.26, sd 1.80); bfloat16 then gave 74.00, 74.00, 74.20% (mean 74.07). Every bfloat16 run
  clears float32's bound, 66% (its mean less four of its sds), and bfloat16's mean is not
  below float32's by more than four standard deviations of the difference of the means: a
  dtype's sd taken at least the binomial error of 2,000 test images (0.99), float32's mean
  has sd 1.80 / sqrt(4) = 0.90 and bfloat16's 0.99 / sqrt(3) = 0.57, so the difference's is
  1.07 and its bound 4.3 points (68.96%). float32's own learning is checked by
  test_launch.py's main-config test."""
  accuracy = [learned_accuracy('bfloat16', seed, num_steps=900) for seed in range(3)]
  assert min(accuracy) >= 0.66, accuracy
  assert np.mean(accuracy) >= FLOAT32_MEAN_900_STEPS - 0.043, accuracy

