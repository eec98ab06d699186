"""ImageNet-trained AlexNet weights from model zoos into this project's parameter tree.

* Caffe's `bvlc_alexnet.caffemodel` (`configs/bvlc_alexnet.py`): the paper's two towers.
  Caffe's blobs are (out, in / group, kh, kw) for convolutions and (out, in) for inner
  products; `group: 2` splits a convolution's inputs and outputs in halves, tower 0 first,
  which is this project's tower order. Caffe feeds BGR images; conv1's input channels are
  reversed here so that the project's RGB pipeline computes the same sums. fc6 reads pool5
  flattened as (channel, row, column) with tower 0's 128 channels first; this project
  flattens each tower's (row, column, channel) and puts the towers side by side.
* torchvision's `alexnet` state dict (`configs/torchvision_alexnet.py`): one tower, the
  same conversions with `features.{0,3,6,8,10}` and `classifier.{1,4,6}`.

The result is numpy float32 in `AlexNetSpec.param_shapes()`, checked against them.
"""

from __future__ import annotations

import pickle

import numpy as np

from alexnet_jax.errors import UserError
from alexnet_jax.model import network as model_lib

LAYERS = model_lib.CONV_LAYERS + ('fc6', 'fc7', 'fc8')
TORCHVISION_NAMES = {'conv1': 'features.0', 'conv2': 'features.3', 'conv3': 'features.6',
                     'conv4': 'features.8', 'conv5': 'features.10', 'fc6': 'classifier.1',
                     'fc7': 'classifier.4', 'fc8': 'classifier.6'}
# Caffe's per-channel ImageNet means, B, G, R (the model zoo's ilsvrc_2012_mean averaged).
CAFFE_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)
# torchvision's normalisation of 0-1 images, as 0-255 values: mean and std per RGB channel.
TORCHVISION_MEAN = tuple(255 * m for m in (0.485, 0.456, 0.406))
TORCHVISION_STD = tuple(255 * s for s in (0.229, 0.224, 0.225))


class WeightImportError(UserError):
  """Weights that do not fit the config's network."""


def _conv(weight: np.ndarray, towers: int) -> np.ndarray:
  """(out, in_g, kh, kw) -> (towers, kh, kw, in_g, out / towers)."""
  w = np.transpose(weight, (2, 3, 1, 0))
  return np.stack(np.split(w, towers, axis=-1))


def _dense(weight: np.ndarray, towers: int) -> np.ndarray:
  """(out, in) -> (towers, in, out / towers)."""
  return np.stack(np.split(weight.T, towers, axis=-1))


def convert(blobs: dict[str, tuple[np.ndarray, np.ndarray]], spec: model_lib.AlexNetSpec,
            source: str, bgr: bool = False) -> dict:
  """{layer: (weight, bias)} in Caffe's / PyTorch's layouts -> this project's parameters."""
  shapes = spec.param_shapes()
  t = spec.num_towers
  p5 = spec.feature_sizes()[-1]
  missing = [name for name in LAYERS if name not in blobs]
  if missing:
    raise WeightImportError(f'{source} has no weights for {", ".join(missing)}: is it an '
                            'AlexNet?')
  params = {}
  for name in LAYERS:
    weight, bias = (np.asarray(b, np.float32) for b in blobs[name])
    want_out = shapes[name]['bias'][0] * shapes[name]['bias'][-1] if name != 'fc8' else (
        shapes[name]['bias'][0])
    if not name.startswith('conv'):  # V1 files store inner products as (1, 1, out, in)
      weight = weight.reshape(-1, weight.shape[-1])
    try:
      if name.startswith('conv'):
        weight = weight.reshape(weight.shape[0], -1, *weight.shape[-2:])
        if name == 'conv1' and bgr:
          weight = weight[:, ::-1]
        kernel = _conv(weight, t)
      elif name == 'fc6':  # (out, t * C * p5 * p5), C-major -> per tower (row, col, C)
        c = weight.shape[1] // (t * p5 * p5)
        w = weight.reshape(weight.shape[0], t, c, p5, p5).transpose(0, 1, 3, 4, 2)
        kernel = _dense(w.reshape(weight.shape[0], -1), t)
      elif name == 'fc7':
        kernel = _dense(weight, t)
      else:  # fc8: tower t holds the rows of its own fc7 units
        kernel = weight.T.reshape(t, -1, weight.shape[0])
    except ValueError:
      kernel = weight  # reported below with the shapes
    if kernel.shape != shapes[name]['kernel'] or bias.size != want_out:
      raise WeightImportError(
          f'{source}: {name} has weights of shape {tuple(weight.shape)} and {bias.size} '
          f'biases, which do not fit the config\'s {name} (kernel {shapes[name]["kernel"]}, '
          f'{want_out} biases); use the config written for these weights.')
    params[name] = {'kernel': np.ascontiguousarray(kernel),
                    'bias': bias.reshape(shapes[name]['bias'])}
  return params


def from_caffe(path: str, spec: model_lib.AlexNetSpec) -> dict:
  """Parameters from a `.caffemodel` in either layer format (`caffe_format.read_net`)."""
  from alexnet_jax.weights import caffe_format
  layers = caffe_format.read_net(path)
  blobs = {}
  for name in LAYERS:
    layer = layers.get(name)
    if layer is not None and len(layer.blobs) >= 2:
      blobs[name] = (layer.blobs[0], layer.blobs[1])
  return convert(blobs, spec, path, bgr=True)


def caffe_mean(path: str) -> np.ndarray:
  """Caffe's `.binaryproto` mean, (1, 3, H, W) BGR -> (H, W, 3) RGB float32."""
  from alexnet_jax.weights import caffe_format
  mean = caffe_format.read_blob(path)
  mean = mean.reshape(mean.shape[-3:]) if mean.ndim >= 3 else mean
  if mean.ndim != 3 or mean.shape[0] != 3:
    raise WeightImportError(f'{path} holds a blob of shape {mean.shape}, not a (3, H, W) '
                            'mean image.')
  return np.ascontiguousarray(mean[::-1].transpose(1, 2, 0)).astype(np.float32)


def from_torchvision(path: str, spec: model_lib.AlexNetSpec) -> dict:
  """Parameters from torchvision's `alexnet` state dict (`.pth`); torch reads the file."""
  try:
    import torch
  except ImportError:
    raise WeightImportError(f'Reading {path} needs PyTorch: pip install torch.') from None
  try:
    state = torch.load(path, map_location='cpu', weights_only=True)
  # What torch.load raises on a damaged, truncated or foreign file (RuntimeError: a zip it
  # cannot read; UnpicklingError: not a pickle, or one weights_only refuses).
  except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
    raise WeightImportError(f'{path} is not a readable PyTorch state dict ({e}).') from None
  state = state.get('state_dict', state) if isinstance(state, dict) else state
  if not isinstance(state, dict):
    raise WeightImportError(f'{path} holds a {type(state).__name__}, not a state dict.')
  return from_torchvision_state({k: v.float().numpy() for k, v in state.items()
                                 if isinstance(v, torch.Tensor)}, spec, path)


def from_torchvision_state(state: dict, spec: model_lib.AlexNetSpec, source: str) -> dict:
  """Parameters from torchvision's `alexnet` state dict as {name: numpy array}."""
  blobs = {name: (state[f'{prefix}.weight'], state[f'{prefix}.bias'])
           for name, prefix in TORCHVISION_NAMES.items()
           if f'{prefix}.weight' in state and f'{prefix}.bias' in state}
  return convert(blobs, spec, source)
