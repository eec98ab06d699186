"""The parameters as a safetensors file under stable names, with the config, the class names,
the normalisation and the project's version in its metadata (docs/export.md has the name
scheme, each tensor's layout and a loader in plain numpy).

    conv{1-5}.tower{t}.kernel  (k, k, in, out)   HWIO: tower t's kernel
    conv{1-5}.tower{t}.bias    (out,)
    fc{6,7}.tower{t}.kernel    (in, out)         the input: every tower's maps side by side
    fc{6,7}.tower{t}.bias      (out,)
    fc8.tower{t}.kernel        (fc7 units of tower t, classes): the rows of tower t's units
    fc8.bias                   (classes,)
    input.mean                 (H, W, C) or (C,): subtracted from 0-255 pixels of the
                               network's input size
    input.scale                (C,): multiplies them after (ones: the paper's 0-255 scale)

Metadata (strings; JSON where structured): format ('alexnet_jax.safetensors'),
format_version, producer (with the version), step, source, towers, lrn, spec, config,
class_names, normalisation.
"""

from __future__ import annotations

import json

import numpy as np

from alexnet_jax.weights import exportable

FORMAT = 'alexnet_jax.safetensors'


def tensors(net: exportable.Network) -> dict[str, np.ndarray]:
  """{name: array} of the name scheme above."""
  out = {}
  for layer, arrays in net.params.items():
    for kind, value in arrays.items():
      if layer == 'fc8' and kind == 'bias':
        out['fc8.bias'] = value
        continue
      for t, tower in enumerate(value):
        out[f'{layer}.tower{t}.{kind}'] = tower
  out['input.mean'] = net.input_mean()
  out['input.scale'] = net.input_scale()
  return {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}


def params_of(arrays: dict[str, np.ndarray]) -> dict:
  """The project's parameter tree (towers stacked on a leading axis) from `tensors`."""
  params = {}
  for name, value in arrays.items():
    if name.startswith('input.'):
      continue
    parts = name.split('.')
    if len(parts) == 2:  # fc8.bias
      params.setdefault(parts[0], {})[parts[1]] = value
      continue
    layer, tower, kind = parts
    params.setdefault(layer, {}).setdefault(kind, {})[int(tower[len('tower'):])] = value
  return {layer: {kind: v if isinstance(v, np.ndarray) else np.stack([v[t] for t in sorted(v)])
                  for kind, v in d.items()} for layer, d in params.items()}


def metadata(net: exportable.Network) -> dict[str, str]:
  info = exportable.description(net, with_preprocessing=False)
  info['normalisation'].update(mean='the tensor input.mean', scale='the tensor input.scale')
  info['format'] = FORMAT
  return {k: v if isinstance(v, str) else json.dumps(v) for k, v in info.items()}


def write(net: exportable.Network, path: str) -> list[str]:
  from safetensors.numpy import save_file
  save_file(tensors(net), path, metadata=metadata(net))
  return [path]


def check(net: exportable.Network, path: str) -> dict:
  """The file read back with safetensors (the names, the metadata), run by the project."""
  from safetensors import safe_open
  from safetensors.numpy import load_file
  arrays = load_file(path)
  with safe_open(path, 'np') as f:
    meta = f.metadata()
  if meta.get('format') != FORMAT or set(arrays) != set(tensors(net)):
    raise AssertionError(f'{path} does not hold the tensors and metadata written')
  images = exportable.check_images(net)
  mean, scale = arrays['input.mean'], arrays['input.scale']
  read = exportable.Network.of(params_of(arrays), net.spec, mean=mean, scale=scale)
  return {'checked_with': 'safetensors.numpy.load_file, the names read back into the network',
          'max_relative_error': exportable.relative_error(
              exportable.jax_logits(read, images), exportable.jax_logits(net, images))}


def refusal(spec) -> str | None:
  del spec
  return None
