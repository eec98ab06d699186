"""The one-column network of `configs/torchvision_alexnet.py` as a state dict that
`torchvision.models.alexnet(num_classes=N)` loads with `strict=True`: the exact inverse of
`importers.from_torchvision_state` (HWIO kernels back to OIHW, fc6's rows from this project's
(row, column, channel) flattening back to torchvision's (channel, row, column), dense kernels
transposed), float32, in torchvision's key order.

The file holds the state dict alone (torch.save of an OrderedDict of contiguous tensors, no
`_metadata`), so the same parameters give the same bytes: torch's zip writer stores no
time stamps, its serialization id is a checksum of the records, and the archive's folder
name, which torch takes from the file's name, is fixed by saving through a buffer. The
preprocessing, which a state dict cannot carry, is stated in `<path>.json` with the class
names and the config (as torchvision's `Normalize` on 0-1 images where it is per channel).
"""

from __future__ import annotations

import collections
import io
import json

import numpy as np

from alexnet_jax.errors import UserError
from alexnet_jax.weights import exportable
from alexnet_jax.weights import importers

# torchvision's alexnet: 64-192-384-256-256, fc 4096, conv1 11x11 stride 4 padding 2, 3x3/2
# pooling, 6x6 pool5 maps into fc6 (its AdaptiveAvgPool2d(6) is the identity there).
FEATURES = (64, 192, 384, 256, 256)
KERNELS = (11, 5, 3, 3, 3)
FC = 4096
POOL5 = 6
SIDECAR = '.json'


def refusal(spec) -> str | None:
  """What torchvision's alexnet cannot express of `spec`, in one sentence; None if nothing."""
  problems = []
  if spec.num_towers != 1:
    problems.append(f'{spec.num_towers} towers (torchvision has one column)')
  if spec.lrn:
    problems.append('LRN after conv1 and conv2 (torchvision has none)')
  if tuple(spec.conv_features) != FEATURES or spec.fc_features != FC:
    problems.append(f'conv widths {"-".join(map(str, spec.conv_features))} and fc '
                    f'{spec.fc_features} (torchvision: 64-192-384-256-256 and 4096)')
  if tuple(spec.conv_kernels) != KERNELS or spec.conv1_stride != 4:
    problems.append(f'kernels {"-".join(map(str, spec.conv_kernels))}, conv1 stride '
                    f'{spec.conv1_stride} (torchvision: 11-5-3-3-3, stride 4)')
  if spec.conv1_pads() != ((2, 2), (2, 2)):
    problems.append(f'conv1 padding {spec.conv1_padding!r} (torchvision pads 2 on every side)')
  if (spec.pool_window, spec.pool_stride) != (3, 2):
    problems.append(f'{spec.pool_window}/{spec.pool_stride} pooling (torchvision: 3/2)')
  if spec.in_channels != 3:
    problems.append(f'{spec.in_channels}-channel images (torchvision: RGB)')
  elif spec.conv1_pads() == ((2, 2), (2, 2)) and spec.feature_sizes()[-1] != POOL5:
    problems.append(f'{spec.image_size}x{spec.image_size} inputs, whose pool5 maps are not '
                    f'{POOL5}x{POOL5}')
  if not problems:
    return None
  return (f'torchvision\'s alexnet cannot express this network: {"; ".join(problems)}; '
          'export it as onnx, stablehlo or safetensors instead.')


def state_dict(net: exportable.Network) -> 'collections.OrderedDict[str, np.ndarray]':
  """torchvision's names and layouts, numpy float32 (the inverse of the importer)."""
  p, size = net.params, net.spec.feature_sizes()[-1]
  out = collections.OrderedDict()
  for name, prefix in importers.TORCHVISION_NAMES.items():
    kernel = p[name]['kernel'][0]
    if name.startswith('conv'):
      weight = kernel.transpose(3, 2, 0, 1)  # (k, k, in, out) -> (out, in, k, k)
    elif name == 'fc6':  # rows (row, column, channel) -> columns (channel, row, column)
      weight = kernel.reshape(size, size, -1, kernel.shape[-1]).transpose(3, 2, 0, 1)
      weight = weight.reshape(kernel.shape[-1], -1)
    else:
      weight = kernel.T
    out[f'{prefix}.weight'] = np.ascontiguousarray(weight, np.float32)
    out[f'{prefix}.bias'] = np.ascontiguousarray(p[name]['bias'].reshape(-1), np.float32)
  return out


def _torch():
  try:
    import torch
  except ImportError:
    raise UserError('The torchvision export writes a PyTorch file and needs PyTorch: pip '
                    'install torch.') from None
  return torch


def to_bytes(state) -> bytes:
  """torch.save of the state dict, through a buffer (the archive's folder name is fixed)."""
  torch = _torch()
  tensors = collections.OrderedDict((k, torch.from_numpy(v.copy())) for k, v in state.items())
  buffer = io.BytesIO()
  torch.save(tensors, buffer)
  return buffer.getvalue()


def sidecar(net: exportable.Network) -> dict:
  info = exportable.description(net, with_preprocessing=False)
  mean, scale = net.input_mean(), net.input_scale()
  # The values themselves (a mean image as nested lists): (pixels - mean) * scale, 0-255.
  info['normalisation'].update(mean=mean.tolist(), scale=scale.tolist())
  if mean.ndim == 1:  # as torchvision's Normalize(mean, std) of 0-1 images
    info['normalisation']['torchvision_normalize'] = {
        'mean': [float(m) / 255 for m in mean], 'std': [1 / (255 * float(s)) for s in scale]}
  info['load'] = ('model = torchvision.models.alexnet(num_classes=%d); model.load_state_dict('
                  'torch.load(path, weights_only=True), strict=True); model.eval()'
                  % net.spec.num_classes)
  return info


def write(net: exportable.Network, path: str) -> list[str]:
  data = to_bytes(state_dict(net))
  with open(path, 'wb') as f:
    f.write(data)
  with open(path + SIDECAR, 'w', encoding='utf-8') as f:
    json.dump(sidecar(net), f, indent=1)
  return [path, path + SIDECAR]


def check(net: exportable.Network, path: str) -> dict:
  """torchvision's alexnet loads the file (strict) and gives the JAX logits; where
  torchvision is not installed, the file is read back and compared with the parameters."""
  torch = _torch()
  state = torch.load(path, map_location='cpu', weights_only=True)
  try:
    import torchvision
  except ImportError:
    want = state_dict(net)
    same = list(state) == list(want) and all(
        np.array_equal(state[k].numpy(), v) for k, v in want.items())
    if not same:
      raise AssertionError(f'{path} does not hold the parameters written')
    return {'checked_with': 'torch.load (torchvision is not installed: logits not checked)',
            'max_relative_error': None}
  model = torchvision.models.alexnet(num_classes=net.spec.num_classes)
  model.load_state_dict(state, strict=True)
  images = exportable.check_images(net)
  x = (images - net.input_mean()) * net.input_scale()
  with torch.no_grad():
    got = model.eval()(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
  return {'checked_with': f'torchvision {torchvision.__version__} alexnet, strict load',
          'max_relative_error': exportable.relative_error(got, exportable.jax_logits(net, images))}
