"""The zoo networks' forward passes in float64 NumPy, N-C-H-W as their frameworks lay them out:
Caffe's bvlc_alexnet deploy net and torchvision's `alexnet`. Independent of the project's code
(H-W-C, JAX): the weights go in as the zoo files hold them."""

import numpy as np


def conv(x, w, b, stride=1, pad=0, groups=1):
  """x (B, C, H, W); w (O, C / groups, k, k) as Caffe and PyTorch store it."""
  x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  bsz, c, h, wd = x.shape
  out, cg, k, _ = w.shape
  oh, ow = (h - k) // stride + 1, (wd - k) // stride + 1
  cols = np.empty((bsz, c, k, k, oh, ow))
  for i in range(k):
    for j in range(k):
      cols[:, :, i, j] = x[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]
  og = out // groups
  y = np.concatenate([
      np.einsum('bckhw,ock->bohw', cols[:, g * cg:(g + 1) * cg].reshape(bsz, cg, k * k, oh, ow),
                w[g * og:(g + 1) * og].reshape(og, cg, k * k))
      for g in range(groups)], axis=1)
  return y + b[None, :, None, None]


def lrn(x, n=5, alpha=1e-4, beta=0.75, k=1.0):
  """Caffe's ACROSS_CHANNELS LRN: x / (k + alpha / n * sum of x^2 over n channels)^beta, the
  window centred and zero beyond the first and last channel (of all the channels)."""
  sq = np.pad(x ** 2, ((0, 0), (n // 2, n // 2), (0, 0), (0, 0)))
  window = sum(sq[:, i:i + x.shape[1]] for i in range(n))
  return x / (k + alpha / n * window) ** beta


def maxpool(x, window=3, stride=2):
  bsz, c, h, w = x.shape
  oh, ow = (h - window) // stride + 1, (w - window) // stride + 1
  out = np.full((bsz, c, oh, ow), -np.inf)
  for i in range(window):
    for j in range(window):
      out = np.maximum(out, x[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride])
  return out


relu = lambda x: np.maximum(x, 0)
linear = lambda x, w, b: x @ w.T + b


def caffe_alexnet(blobs, images_bgr):
  """bvlc_alexnet's deploy net: {layer: (weights, bias)}, images (B, 227, 227, 3) BGR."""
  w = {k: (np.asarray(a, np.float64), np.asarray(b, np.float64)) for k, (a, b) in blobs.items()}
  x = np.asarray(images_bgr, np.float64).transpose(0, 3, 1, 2)
  x = maxpool(lrn(relu(conv(x, *w['conv1'], stride=4))))
  x = maxpool(lrn(relu(conv(x, *w['conv2'], pad=2, groups=2))))
  x = relu(conv(x, *w['conv3'], pad=1))
  x = relu(conv(x, *w['conv4'], pad=1, groups=2))
  x = maxpool(relu(conv(x, *w['conv5'], pad=1, groups=2))).reshape(len(x), -1)  # C-H-W
  x = relu(linear(x, *w['fc6']))
  x = relu(linear(x, *w['fc7']))
  return linear(x, *w['fc8'])


def torchvision_alexnet(state, images):
  """torchvision.models.AlexNet in eval mode: {name: array} with its state-dict names,
  images (B, 224, 224, 3). Its AdaptiveAvgPool2d((6, 6)) is the identity on pool5's 6x6."""
  p = {k: np.asarray(v, np.float64) for k, v in state.items()}
  layer = lambda i: (p[f'features.{i}.weight'], p[f'features.{i}.bias'])
  fc = lambda i: (p[f'classifier.{i}.weight'], p[f'classifier.{i}.bias'])
  x = np.asarray(images, np.float64).transpose(0, 3, 1, 2)
  x = maxpool(relu(conv(x, *layer(0), stride=4, pad=2)))
  x = maxpool(relu(conv(x, *layer(3), pad=2)))
  x = relu(conv(x, *layer(6), pad=1))
  x = relu(conv(x, *layer(8), pad=1))
  x = maxpool(relu(conv(x, *layer(10), pad=1)))
  assert x.shape[2:] == (6, 6), x.shape
  x = relu(linear(x.reshape(len(x), -1), *fc(1)))
  x = relu(linear(x, *fc(4)))
  return linear(x, *fc(6))


# ---- the same two networks in PyTorch, where torch is installed (tests skip without it) ----


def caffe_alexnet_torch(blobs, images_bgr):
  """bvlc_alexnet's deploy net in PyTorch, float64: F.local_response_norm over all channels
  with k=1 is Caffe's LRN, groups=2 its `group: 2`."""
  import torch
  import torch.nn.functional as F
  w = {k: (torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64))
       for k, (a, b) in blobs.items()}
  lrn = lambda x: F.local_response_norm(x, 5, alpha=1e-4, beta=0.75, k=1.0)
  pool = lambda x: F.max_pool2d(x, 3, 2)
  x = torch.tensor(np.ascontiguousarray(images_bgr), dtype=torch.float64).permute(0, 3, 1, 2)
  x = pool(lrn(F.relu(F.conv2d(x, *w['conv1'], stride=4))))
  x = pool(lrn(F.relu(F.conv2d(x, *w['conv2'], padding=2, groups=2))))
  x = F.relu(F.conv2d(x, *w['conv3'], padding=1))
  x = F.relu(F.conv2d(x, *w['conv4'], padding=1, groups=2))
  x = pool(F.relu(F.conv2d(x, *w['conv5'], padding=1, groups=2))).flatten(1)
  x = F.relu(F.linear(x, *w['fc6']))
  x = F.relu(F.linear(x, *w['fc7']))
  return F.linear(x, *w['fc8']).numpy()


def torchvision_alexnet_torch(state, images):
  """torchvision.models.AlexNet's layer list (torchvision itself is not needed), float64,
  eval mode, loaded with `state`."""
  import torch
  nn = torch.nn
  f = [state[f'features.{i}.weight'].shape[0] for i in (0, 3, 6, 8, 10)]
  h, classes = state['classifier.1.weight'].shape[0], state['classifier.6.weight'].shape[0]
  net = nn.Module()
  net.features = nn.Sequential(
      nn.Conv2d(3, f[0], 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
      nn.Conv2d(f[0], f[1], 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
      nn.Conv2d(f[1], f[2], 3, padding=1), nn.ReLU(),
      nn.Conv2d(f[2], f[3], 3, padding=1), nn.ReLU(),
      nn.Conv2d(f[3], f[4], 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))
  net.avgpool = nn.AdaptiveAvgPool2d((6, 6))
  net.classifier = nn.Sequential(
      nn.Dropout(0.5), nn.Linear(f[4] * 36, h), nn.ReLU(),
      nn.Dropout(0.5), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, classes))
  net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
  net = net.double().eval()
  x = torch.tensor(np.asarray(images), dtype=torch.float64).permute(0, 3, 1, 2)
  with torch.no_grad():
    x = torch.flatten(net.avgpool(net.features(x)), 1)
    return net.classifier(x).numpy()
