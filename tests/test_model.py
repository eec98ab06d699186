"""The network against the reference card's counts and an independent float64 NumPy model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax.model import network
from tests import reference

# Reference card: parameters per layer of the two-tower net.
CARD_PARAMS = {'conv1': 34_944, 'conv2': 307_456, 'conv3': 885_120, 'conv4': 663_936,
               'conv5': 442_624, 'fc6': 37_752_832, 'fc7': 16_781_312, 'fc8': 4_097_000}


def test_parameter_count_matches_the_paper():
  spec = network.AlexNetSpec()
  shapes = spec.param_shapes()
  for layer, count in CARD_PARAMS.items():
    assert sum(int(np.prod(s)) for s in shapes[layer].values()) == count, layer
  assert spec.num_params() == 60_965_224


def test_feature_map_sizes_match_the_paper():
  assert network.AlexNetSpec().feature_sizes() == [55, 27, 13, 6]
  # 'cuda_convnet' padding: 3 px of zeros at the bottom/right for 224 inputs.
  assert network.AlexNetSpec().conv1_pads() == ((0, 3), (0, 3))


def test_init_follows_section_5():
  spec = network.AlexNetSpec()
  params = network.init_params(jax.random.key(0), spec)
  for layer in ('conv2', 'conv4', 'conv5', 'fc6', 'fc7'):
    np.testing.assert_array_equal(params[layer]['bias'], 1.0)
  for layer in ('conv1', 'conv3', 'fc8'):
    np.testing.assert_array_equal(params[layer]['bias'], 0.0)
  w = np.asarray(params['fc6']['kernel'])
  assert abs(w.mean()) < 1e-4 and abs(w.std() - 0.01) < 1e-4


def test_lrn_hand_computed():
  # One pixel, 3 channels, n=5 -> every channel's window covers all 3.
  a = np.array([1.0, 2.0, 3.0])
  got = network.local_response_norm(jnp.asarray(a, jnp.float32)[None], k=2.0, n=5, alpha=1e-4,
                                  beta=0.75)
  want = a / (2.0 + 1e-4 / 5 * 14.0) ** 0.75
  np.testing.assert_allclose(np.asarray(got)[0], want, rtol=1e-6)
  # 7 channels: channel 0 sees 0..2, channel 3 sees 1..5.
  a = np.arange(1.0, 8.0) * 30
  got = np.asarray(network.local_response_norm(jnp.asarray(a, jnp.float32)[None]))[0]
  np.testing.assert_allclose(got[0], a[0] / (2 + 2e-5 * (a[0:3] ** 2).sum()) ** 0.75, rtol=1e-6)
  np.testing.assert_allclose(got[3], a[3] / (2 + 2e-5 * (a[1:6] ** 2).sum()) ** 0.75, rtol=1e-6)


def test_lrn_gradient_matches_finite_differences():
  # Activations of a few hundred make the alpha term a large part of the denominator.
  with jax.enable_x64(True):
    x = jnp.asarray(np.random.default_rng(0).uniform(0, 400, (2, 3, 7)))
    w = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, 7)))
    f = jax.jit(lambda x: jnp.sum(w * network.local_response_norm(x)))
    grad = jax.grad(f)(x)
    for idx in [(0, 0, 0), (0, 1, 3), (1, 2, 6), (1, 0, 5)]:
      e = jnp.zeros_like(x).at[idx].set(1e-4)
      np.testing.assert_allclose(grad[idx], (f(x + e) - f(x - e)) / 2e-4, rtol=1e-6)
    scale_term = (2 + 2e-5 * np.sum(np.asarray(x)[..., :3] ** 2, -1)) ** -0.75
    assert np.abs(np.asarray(grad)[..., 0] / np.asarray(w)[..., 0] - scale_term).max() > 1e-3


def _random_params(spec, seed):
  return reference.random_params(spec.param_shapes(), seed)


def test_forward_matches_float64_numpy_full_model():
  spec = network.AlexNetSpec()
  params64 = _random_params(spec, 0)
  images = np.random.default_rng(1).uniform(-120, 120, (2, 224, 224, 3))
  want = reference.forward(params64, images, 4, spec.conv1_pads())
  params32 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params64)
  got = jax.jit(lambda p, x: network.apply(p, x, spec))(params32, jnp.asarray(images, jnp.float32))
  rel = np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max()
  assert np.abs(want).max() > 1.0  # a non-trivial output
  assert rel < 1e-5, rel


TINY = network.AlexNetSpec(num_classes=5, image_size=16, in_channels=2, num_towers=2,
                         conv_features=(3, 4, 3, 3, 2), conv_kernels=(3, 3, 3, 3, 3),
                         conv1_stride=1, conv1_padding='same', fc_features=4)


def test_tiny_variant_matches_numpy():
  params64 = _random_params(TINY, 2)
  images = np.random.default_rng(3).uniform(-100, 100, (3, 16, 16, 2))
  want = reference.forward(params64, images, 1, TINY.conv1_pads())
  got = network.apply(jax.tree.map(jnp.asarray, params64), jnp.asarray(images, jnp.float32), TINY)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_gradient_matches_finite_differences():
  with jax.enable_x64(True):
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), _random_params(TINY, 4))
    images = jnp.asarray(np.random.default_rng(5).uniform(-100, 100, (2, 16, 16, 2)))
    labels = jnp.array([1, 3])

    def loss(p):
      logits = network.apply(p, images, TINY, compute_dtype=jnp.float64)
      return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(2), labels])

    loss = jax.jit(loss)
    grads = jax.grad(loss)(params)
    rng = np.random.default_rng(6)
    eps = 1e-6
    for layer in ('conv1', 'conv3', 'conv5', 'fc6', 'fc8'):
      for name in ('kernel', 'bias'):
        for _ in range(3):
          idx = tuple(rng.integers(0, n) for n in params[layer][name].shape)
          bump = lambda d: jax.tree.map(lambda x: x, params) | {
              layer: params[layer] | {name: params[layer][name].at[idx].add(d)}}
          fd = (loss(bump(eps)) - loss(bump(-eps))) / (2 * eps)
          np.testing.assert_allclose(grads[layer][name][idx], fd, rtol=1e-4, atol=1e-9,
                                     err_msg=f'{layer}.{name}{idx}')


def test_dropout_masks_depend_only_on_example_and_tower():
  key = jax.random.key(0)
  full = network.dropout_masks(key, jnp.arange(8), 6, [0, 1], 16, 0.5)
  part = network.dropout_masks(key, jnp.arange(4, 8), 6, [1], 16, 0.5)
  np.testing.assert_array_equal(full[1, 4:], part[0])
  assert set(np.unique(np.asarray(full))) == {0.0, 2.0}
  assert 0.35 < float((full > 0).mean()) < 0.65


@pytest.mark.parametrize('kwargs,expected', [
    (dict(image_size=224), [55, 27, 13, 6]),
    (dict(image_size=227, conv1_padding='0'), [55, 27, 13, 6]),  # Caffe's 227 crops
    (dict(image_size=224, conv1_padding='2'), [55, 27, 13, 6]),  # torchvision's padding
    (dict(image_size=28, conv_kernels=(3, 5, 3, 3, 3), conv1_stride=1, conv1_padding='same'),
     [28, 13, 6, 2]),  # configs/fashion_mnist.py
])
def test_feature_sizes(kwargs, expected):
  assert network.AlexNetSpec(**kwargs).feature_sizes() == expected


@pytest.mark.parametrize('size,kernel,stride,pads', [
    (224, 11, 4, ((0, 3), (0, 3))), (227, 11, 4, ((0, 0), (0, 0))), (31, 5, 2, ((2, 2), (1, 2)))])
def test_space_to_depth_conv_is_the_strided_convolution(size, kernel, stride, pads):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, size, size, 3))
  w = rng.normal(size=(kernel, kernel, 3, 8))
  b = rng.normal(size=8)
  with jax.enable_x64(True):
    got = network.space_to_depth_conv(jnp.asarray(x), jnp.asarray(w), jnp.asarray(b), stride, pads)
  np.testing.assert_allclose(np.asarray(got), reference.conv2d(x, w, b, stride, pads),
                             rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('backward', ['custom', 'xla'])
@pytest.mark.parametrize('window,stride', [(3, 2), (2, 2), (3, 1)])
def test_max_pool_gradient_goes_to_the_first_maximum_of_each_window(window, stride, backward):
  # Small integers: many windows hold tied maxima; overlapping and non-overlapping windows.
  rng = np.random.default_rng(0)
  x = rng.integers(0, 4, size=(2, 9, 11, 3)).astype(np.float32)
  oh, ow = (9 - window) // stride + 1, (11 - window) // stride + 1
  g = rng.normal(size=(2, oh, ow, 3)).astype(np.float32)
  out, vjp = jax.vjp(lambda v: network.max_pool(v, window, stride, backward), jnp.asarray(x))
  want_out = np.zeros(g.shape)
  want_grad = np.zeros(x.shape)
  for n in range(2):
    for i in range(oh):
      for j in range(ow):
        for c in range(3):
          win = x[n, stride * i:stride * i + window, stride * j:stride * j + window, c]
          want_out[n, i, j, c] = win.max()
          di, dj = np.unravel_index(np.argmax(win), win.shape)  # first, row-major
          want_grad[n, stride * i + di, stride * j + dj, c] += g[n, i, j, c]
  np.testing.assert_array_equal(np.asarray(out), want_out)
  np.testing.assert_allclose(np.asarray(vjp(jnp.asarray(g))[0]), want_grad, rtol=1e-6)


# ---- implementation switches (alexnet_jax/model/implementations.py): every form is exact -------------

SWITCHES = [('conv1_impl', 'space_to_depth'), ('conv1_impl', 'strided'),
            ('conv1_input', 'as_is'), ('conv1_input', 'pad4'),
            ('pool_backward', 'custom'), ('pool_backward', 'xla'),
            ('tower_conv', 'per_tower'), ('tower_conv', 'grouped'),
            ('lrn_impl', 'custom'), ('lrn_impl', 'autodiff')]
# conv1 11x11 stride 4 (the space-to-depth form), two towers on one device (grouped).
STRIDED = network.AlexNetSpec(num_classes=5, image_size=67, in_channels=3, num_towers=2,
                            conv_features=(4, 6, 4, 4, 2), conv_kernels=(11, 5, 3, 3, 3),
                            conv1_stride=4, conv1_padding='cuda_convnet', fc_features=6)


@pytest.mark.parametrize('field,value', SWITCHES)
def test_every_form_of_every_switch_matches_float64_numpy(field, value):
  """Forward in float32 against the float64 reference (1e-5), and the gradient in float64
  against central differences of the reference's loss."""
  import dataclasses
  spec = dataclasses.replace(STRIDED, **{field: value})
  params64 = _random_params(spec, 7)
  images = np.random.default_rng(8).uniform(-100, 100, (3, 67, 67, 3))
  labels = np.array([1, 3, 4])
  want = reference.forward(params64, images, 4, spec.conv1_pads())
  got = jax.jit(lambda p, x: network.apply(p, x, spec))(
      jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), params64), jnp.asarray(images, jnp.float32))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
  with jax.enable_x64(True):
    p64 = jax.tree.map(jnp.asarray, params64)
    loss = lambda p: -jnp.mean(jax.nn.log_softmax(network.apply(
        p, jnp.asarray(images), spec, compute_dtype=jnp.float64))[jnp.arange(3), labels])
    grads = jax.jit(jax.grad(loss))(p64)
  rng = np.random.default_rng(9)
  for layer in ('conv1', 'conv2', 'conv4', 'fc6'):
    for _ in range(2):
      idx = tuple(int(rng.integers(0, n)) for n in params64[layer]['kernel'].shape)
      def at(d):
        p = {l: dict(v) for l, v in params64.items()}
        p[layer]['kernel'] = params64[layer]['kernel'].copy()
        p[layer]['kernel'][idx] += d
        return reference.cross_entropy(reference.forward(p, images, 4, spec.conv1_pads()), labels)
      fd = (at(1e-6) - at(-1e-6)) / 2e-6
      np.testing.assert_allclose(grads[layer]['kernel'][idx], fd, rtol=1e-4, atol=1e-9,
                                 err_msg=f'{field}={value} {layer}{idx}')
