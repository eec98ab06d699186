"""An independent float64 NumPy AlexNet, written from the paper (Fig. 2, sections 3.3-3.5).

Shares no code with alexnet_jax: convolutions are im2col matmuls, LRN is the
paper's sum written as a loop over channels, pooling is a loop over windows.
Parameters use the same dict layout (kernel[t] is tower t's kernel).
"""

import numpy as np


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


def forward(params, x, conv1_stride, conv1_pads, use_lrn=True):
  p = {l: {n: np.asarray(v, np.float64) for n, v in d.items()} for l, d in params.items()}
  towers = p['conv1']['kernel'].shape[0]
  same = lambda w: ((w.shape[0] // 2,) * 2,) * 2
  maybe_lrn = lrn if use_lrn else (lambda a: a)
  t1 = [maxpool(maybe_lrn(relu(conv2d(x, p['conv1']['kernel'][t], p['conv1']['bias'][t],
                                      conv1_stride, conv1_pads)))) for t in range(towers)]
  t2 = [maxpool(maybe_lrn(relu(conv2d(t1[t], p['conv2']['kernel'][t], p['conv2']['bias'][t], 1,
                                      same(p['conv2']['kernel'][t]))))) for t in range(towers)]
  both = np.concatenate(t2, axis=-1)  # conv3 sees both towers
  t3 = [relu(conv2d(both, p['conv3']['kernel'][t], p['conv3']['bias'][t], 1,
                    same(p['conv3']['kernel'][t]))) for t in range(towers)]
  t4 = [relu(conv2d(t3[t], p['conv4']['kernel'][t], p['conv4']['bias'][t], 1,
                    same(p['conv4']['kernel'][t]))) for t in range(towers)]
  t5 = [maxpool(relu(conv2d(t4[t], p['conv5']['kernel'][t], p['conv5']['bias'][t], 1,
                            same(p['conv5']['kernel'][t])))) for t in range(towers)]
  flat = np.concatenate([t.reshape(t.shape[0], -1) for t in t5], axis=-1)  # fc6 sees both
  h6 = np.concatenate([relu(flat @ p['fc6']['kernel'][t] + p['fc6']['bias'][t])
                       for t in range(towers)], axis=-1)
  h7 = np.concatenate([relu(h6 @ p['fc7']['kernel'][t] + p['fc7']['bias'][t])
                       for t in range(towers)], axis=-1)
  w8 = np.concatenate([p['fc8']['kernel'][t] for t in range(towers)], axis=0)  # dense 4096 x C
  return h7 @ w8 + p['fc8']['bias']
