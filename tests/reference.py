"""Independent references the tests compare the code with, written from the paper and
sharing no code with alexnet_jax:

* a float64 NumPy AlexNet (Fig. 2, sections 3.3-3.5): convolutions are im2col matmuls, LRN
  is the paper's sum written as a loop over channels, pooling is a loop over windows;
  parameters use the same dict layout (kernel[t] is tower t's kernel);
* the paper's training view as the composition of its steps (sections 2 and 4.1): subtract
  the mean, crop, reflect, add the PCA shift, drawing from the generator in the loader's
  order (crop offset, reflection, PCA).
"""

import numpy as np

# The reference card's PCA of ImageNet's RGB covariance, 0-1 scale; eigenvectors are columns.
CARD_EIGVAL = np.array([0.2175, 0.0188, 0.0045])
CARD_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009],
                        [-0.5808, -0.0045, -0.8140],
                        [-0.5836, -0.6948, 0.4203]])


def random_params(param_shapes, seed):
  """Random float64 weights for `spec.param_shapes()`, scaled so that every layer (and LRN)
  is in its working range."""
  rng = np.random.default_rng(seed)
  params = {}
  for layer, shapes in param_shapes.items():
    fan_in = int(np.prod(shapes['kernel'][1:-1]))
    std = 0.05 if layer == 'conv1' else 1.5 / np.sqrt(fan_in)
    params[layer] = {'kernel': rng.normal(0, std, shapes['kernel']),
                     'bias': rng.normal(0, 0.1, shapes['bias'])}
  return params


def cross_entropy(logits, labels):
  """The mean softmax cross-entropy of float64 logits (B, C) against integer labels."""
  z = logits - logits.max(axis=-1, keepdims=True)
  log_p = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
  return -log_p[np.arange(len(labels)), labels].mean()


def conv2d(x, w, b, stride, pads):
  """x (B,H,W,C), w (k,k,C,F), pads ((top,bottom),(left,right))."""
  x = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  k = w.shape[0]
  bsz, h, wd, c = x.shape
  oh, ow = (h - k) // stride + 1, (wd - k) // stride + 1
  cols = np.empty((bsz, oh, ow, k, k, c))
  for i in range(k):
    for j in range(k):
      cols[:, :, :, i, j, :] = x[:, i:i + stride * oh:stride, j:j + stride * ow:stride, :]
  return cols.reshape(bsz, oh, ow, -1) @ w.reshape(-1, w.shape[-1]) + b


def lrn(a, k=2.0, n=5, alpha=1e-4, beta=0.75):
  """b_i = a_i / (k + alpha/n * sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} a_j^2)^beta (alpha/n convention)."""
  big_n = a.shape[-1]
  out = np.empty_like(a)
  for i in range(big_n):
    lo, hi = max(0, i - n // 2), min(big_n - 1, i + n // 2)
    s = np.sum(a[..., lo:hi + 1] ** 2, axis=-1)
    out[..., i] = a[..., i] / (k + alpha / n * s) ** beta
  return out


def maxpool(x, window=3, stride=2):
  bsz, h, w, c = x.shape
  oh, ow = (h - window) // stride + 1, (w - window) // stride + 1
  out = np.full((bsz, oh, ow, c), -np.inf)
  for i in range(window):
    for j in range(window):
      out = np.maximum(out, x[:, i:i + stride * oh:stride, j:j + stride * ow:stride, :])
  return out


def relu(x):
  return np.maximum(x, 0)


def forward(params, x, conv1_stride, conv1_pads, use_lrn=True, activations=False):
  """The logits; with `activations`, also {layer: output}, the towers side by side on the
  last axis, under the names `network.apply(activations=True)` gives them."""
  p = {l: {n: np.asarray(v, np.float64) for n, v in d.items()} for l, d in params.items()}
  towers = p['conv1']['kernel'].shape[0]
  same = lambda w: ((w.shape[0] // 2,) * 2,) * 2
  maybe_lrn = lrn if use_lrn else (lambda a: a)
  acts = {}

  def keep(name, ts):
    acts[name] = np.concatenate(ts, axis=-1)
    return ts

  c1 = keep('conv1', [relu(conv2d(x, p['conv1']['kernel'][t], p['conv1']['bias'][t],
                                  conv1_stride, conv1_pads)) for t in range(towers)])
  t1 = keep('pool1', [maxpool(a) for a in keep('lrn1', [maybe_lrn(a) for a in c1])])
  c2 = keep('conv2', [relu(conv2d(t1[t], p['conv2']['kernel'][t], p['conv2']['bias'][t], 1,
                                  same(p['conv2']['kernel'][t]))) for t in range(towers)])
  t2 = keep('pool2', [maxpool(a) for a in keep('lrn2', [maybe_lrn(a) for a in c2])])
  both = np.concatenate(t2, axis=-1)  # conv3 sees both towers
  t3 = keep('conv3', [relu(conv2d(both, p['conv3']['kernel'][t], p['conv3']['bias'][t], 1,
                                  same(p['conv3']['kernel'][t]))) for t in range(towers)])
  t4 = keep('conv4', [relu(conv2d(t3[t], p['conv4']['kernel'][t], p['conv4']['bias'][t], 1,
                                  same(p['conv4']['kernel'][t]))) for t in range(towers)])
  c5 = keep('conv5', [relu(conv2d(t4[t], p['conv5']['kernel'][t], p['conv5']['bias'][t], 1,
                                  same(p['conv5']['kernel'][t]))) for t in range(towers)])
  t5 = keep('pool5', [maxpool(a) for a in c5])
  flat = np.concatenate([t.reshape(t.shape[0], -1) for t in t5], axis=-1)  # fc6 sees both
  h6 = np.concatenate(keep('fc6', [relu(flat @ p['fc6']['kernel'][t] + p['fc6']['bias'][t])
                                   for t in range(towers)]), axis=-1)
  h7 = np.concatenate(keep('fc7', [relu(h6 @ p['fc7']['kernel'][t] + p['fc7']['bias'][t])
                                   for t in range(towers)]), axis=-1)
  w8 = np.concatenate([p['fc8']['kernel'][t] for t in range(towers)], axis=0)  # dense 4096 x C
  logits = keep('fc8', [h7 @ w8 + p['fc8']['bias']])[0]
  return (logits, acts) if activations else logits


# ---- the paper's training view, step by step --------------------------------------------


def subtract_mean(image, mean):
  """float64 image minus a per-pixel (H, W, C) or per-channel (C,) mean."""
  return np.asarray(image, np.float64) - np.asarray(mean, np.float64)


def batch_draws(seed, step, n, sigma=0.1):
  """The draws a loader makes for batch `step` of n views, as documented: one generator
  seeded (seed, step); n places (n, 2) uniform in [0, 1), n coins, n x 3 standard normals.
  Returns the crop places, the reflections (coin < 1/2) and the PCA alphas (~ N(0, sigma))."""
  r = np.random.default_rng([seed, step])
  place = r.random((n, 2))
  coins = r.random(n)
  return place, coins < 0.5, r.normal(0.0, 1.0, (n, 3)) * sigma


def crop_offset(place, h, w, size):
  """The window position of a place in [0, 1)^2: each of the H - size + 1 rows (and W's)
  covers an equal part of [0, 1)."""
  return int(place[0] * (h - size + 1)), int(place[1] * (w - size + 1))


def reflect(image):
  return image[:, ::-1]


def pca_shift(alpha, eigval=CARD_EIGVAL, eigvec=CARD_EIGVEC):
  """[p1 p2 p3][a1 l1, a2 l2, a3 l3]^T on the 0-255 scale, written out per channel."""
  return 255.0 * np.array([sum(eigvec[c][i] * alpha[i] * eigval[i] for i in range(3))
                           for c in range(3)])


def train_view(image, top, left, reflected, alpha, mean=None, crop_size=None):
  """One training view of a prepared image, float64: the mean subtracted from the whole
  image (cropped with it), the crop at (top, left), the reflection, the PCA shift of
  `alpha` (None: off)."""
  x = subtract_mean(image, np.zeros(image.shape[-1]) if mean is None else mean)
  if crop_size:
    x = x[top:top + crop_size, left:left + crop_size]
  if reflected:
    x = reflect(x)
  if alpha is not None:
    x = x + pca_shift(alpha)
  return x


def ten_crop(image, size):
  """The 10 test views: corners, centre, and their reflections, (10, size, size, C)."""
  h, w = image.shape[:2]
  corners = [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size),
             ((h - size) // 2, (w - size) // 2)]
  views = [image[t:t + size, l:l + size] for t, l in corners]
  return np.stack(views + [reflect(v) for v in views])


def normalize_view(view, window, shift, mean):
  """The float half of a view cut at window = (top, left, reflected): the view minus the
  per-pixel mean under the window (or a per-channel mean), reflected if the window says so,
  plus the PCA shift."""
  top, left, reflected = (int(v) for v in window)
  mean = np.asarray(mean, np.float64)
  size = view.shape[0]
  x = view.astype(np.float64) - (mean[top:top + size, left:left + size] if mean.ndim == 3
                                 else mean)
  return (reflect(x) if reflected else x) + np.asarray(shift, np.float64)
