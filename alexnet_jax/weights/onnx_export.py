"""The inference network as an ONNX graph (opset 17), built with `onnx.helper` from the
parameters, checked with onnxruntime on the CPU.

* Input `pixels`: float32 (batch, H, W, C), NHWC, RGB (or grey), 0-255, the batch dynamic;
  the graph subtracts the mean (per pixel or per channel), multiplies by the scale and
  transposes to NCHW. Output `logits` (batch, classes). Both stated in the model's doc
  string and metadata_props (with the class names, the config and the LRN form).
* The towers: conv2, conv4 and conv5 see only their own tower, which is a grouped
  convolution (group = towers), output channels tower by tower; conv1 and conv3 (which see
  the image and both towers) are ordinary convolutions of the towers' kernels side by side;
  fc6, fc7 and fc8 are one Gemm each (fc8's towers' rows stacked: the sum over towers of the
  partial logits is that product).
* conv1's padding is the model's, asymmetric where it is (cuda-convnet's: 0 top/left,
  3 bottom/right at 224).
* LRN: ONNX's LRN is x / (bias + alpha / size * window sum of x^2)^beta over all channels,
  the window clipped at the edges: the model's convention (alpha / n) with bias = k,
  size = n. Caffe's LRN across both towers is that op on the towers' channels as they
  stand. The paper's LRN within each tower is not (at the tower boundary ONNX's window
  would reach into the other tower): it is built as Split (per tower) + LRN + Concat.
* fc6 reads pool5 flattened per tower as (row, column, channel); ONNX's Flatten of NCHW
  gives (channel, row, column), so fc6's rows are permuted to that order here.
"""

from __future__ import annotations

import json

import numpy as np

from alexnet_jax.weights import exportable

OPSET = 17
IR_VERSION = 8  # the IR of opset 17: readable by every runtime that reads the opset


def _conv_weight(kernel: np.ndarray) -> np.ndarray:
  """(towers, k, k, in, out) -> ONNX's (towers * out, in, k, k), tower 0's outputs first."""
  return np.ascontiguousarray(np.concatenate(list(kernel), axis=-1).transpose(3, 2, 0, 1))


def _fc6_rows_for_flatten(kernel: np.ndarray, towers: int, size: int) -> np.ndarray:
  """fc6's (towers * size * size * C, out) rows, project order (tower, row, column, channel),
  reordered to ONNX's Flatten of NCHW: (tower, channel, row, column)."""
  out = kernel.shape[-1]
  channels = kernel.shape[0] // (towers * size * size)
  w = kernel.reshape(towers, size, size, channels, out).transpose(0, 3, 1, 2, 4)
  return np.ascontiguousarray(w.reshape(-1, out))


class _Graph:
  """Nodes and initializers in the making."""

  def __init__(self):
    from onnx import helper
    from onnx import numpy_helper
    self.helper, self.numpy_helper = helper, numpy_helper
    self.nodes, self.initializers = [], []

  def const(self, name: str, value: np.ndarray) -> str:
    self.initializers.append(self.numpy_helper.from_array(np.asarray(value), name))
    return name

  def op(self, kind: str, inputs: list[str], name: str, outputs: int = 1, **attrs):
    names = [name] if outputs == 1 else [f'{name}_{i}' for i in range(outputs)]
    self.nodes.append(self.helper.make_node(kind, inputs, names, name=name, **attrs))
    return names[0] if outputs == 1 else names


def build(net: exportable.Network):
  """The `onnx.ModelProto` of `net`."""
  import onnx
  from onnx import TensorProto
  from onnx import helper
  spec, p, g = net.spec, net.params, _Graph()
  t = spec.num_towers
  x = g.op('Sub', ['pixels', g.const('mean', net.input_mean())], 'centred')
  x = g.op('Mul', [x, g.const('scale', net.input_scale())], 'normalised')
  x = g.op('Transpose', [x], 'nchw', perm=[0, 3, 1, 2])

  def conv(name, x, group=1, stride=1, pads=None):
    k = spec.conv_kernels[int(name[-1]) - 1]
    pads = pads or ((k // 2, k // 2), (k // 2, k // 2))
    y = g.op('Conv', [x, g.const(f'{name}.weight', _conv_weight(p[name]['kernel'])),
                      g.const(f'{name}.bias', p[name]['bias'].reshape(-1))], name,
             kernel_shape=[k, k], strides=[stride, stride], group=group,
             pads=[pads[0][0], pads[1][0], pads[0][1], pads[1][1]])
    return g.op('Relu', [y], f'{name}.relu')

  def lrn(name, x, channels):
    if not spec.lrn:
      return x
    attrs = dict(size=spec.lrn_n, alpha=spec.lrn_alpha, beta=spec.lrn_beta, bias=spec.lrn_k)
    if t == 1 or spec.lrn_across_towers:
      return g.op('LRN', [x], name, **attrs)
    parts = g.op('Split', [x, g.const(f'{name}.split', np.full(t, channels, np.int64))],
                 f'{name}.towers', outputs=t, axis=1)
    normed = [g.op('LRN', [part], f'{name}.tower{i}', **attrs) for i, part in enumerate(parts)]
    return g.op('Concat', normed, name, axis=1)

  def pool(name, x):
    return g.op('MaxPool', [x], name, kernel_shape=[spec.pool_window] * 2,
                strides=[spec.pool_stride] * 2)

  def dense(name, x, kernel, relu=True):
    bias = p[name]['bias'].reshape(-1)
    y = g.op('Gemm', [x, g.const(f'{name}.weight', kernel), g.const(f'{name}.bias', bias)],
             name)
    return g.op('Relu', [y], f'{name}.relu') if relu else y

  f = spec.conv_features
  x = pool('pool1', lrn('lrn1', conv('conv1', x, 1, spec.conv1_stride, spec.conv1_pads()), f[0]))
  x = pool('pool2', lrn('lrn2', conv('conv2', x, group=t), f[1]))
  x = conv('conv5', conv('conv4', conv('conv3', x), group=t), group=t)
  x = g.op('Flatten', [pool('pool5', x)], 'flatten', axis=1)
  side_by_side = lambda k: np.ascontiguousarray(np.concatenate(list(k), axis=-1))
  fc6 = _fc6_rows_for_flatten(side_by_side(p['fc6']['kernel']), t, spec.feature_sizes()[-1])
  x = dense('fc6', x, fc6)
  x = dense('fc7', x, side_by_side(p['fc7']['kernel']))
  fc8 = np.ascontiguousarray(p['fc8']['kernel'].reshape(-1, spec.num_classes))
  logits = dense('fc8', x, fc8, relu=False)
  g.nodes.append(helper.make_node('Identity', [logits], ['logits'], name='logits'))

  size, channels = spec.image_size, spec.in_channels
  graph = helper.make_graph(
      g.nodes, 'alexnet', [helper.make_tensor_value_info(
          'pixels', TensorProto.FLOAT, ['batch', size, size, channels])],
      [helper.make_tensor_value_info('logits', TensorProto.FLOAT, ['batch', spec.num_classes])],
      g.initializers)
  info = exportable.description(net)
  model = helper.make_model(
      graph, opset_imports=[helper.make_opsetid('', OPSET)], producer_name='alexnet_jax',
      producer_version=exportable.project_version(), doc_string=_doc(net, info))
  model.ir_version = IR_VERSION
  helper.set_model_props(model, {k: v if isinstance(v, str) else json.dumps(v)
                                 for k, v in info.items()})
  onnx.checker.check_model(model)
  return model


def _doc(net: exportable.Network, info: dict) -> str:
  norm = info['normalisation']
  spec = net.spec
  towers = (f'{spec.num_towers} towers: conv2, conv4, conv5 grouped (group='
            f'{spec.num_towers}); LRN ') if spec.num_towers > 1 else 'one column; LRN '
  built = ''
  if spec.lrn:
    built = (' (ONNX LRN per tower: Split, LRN, Concat, as ONNX\'s window spans every '
             'channel)' if spec.num_towers > 1 and not spec.lrn_across_towers else
             ' (ONNX LRN, bias=k, size=n)')
  return (f'AlexNet (alexnet_jax, step {net.step}), inference. Input "pixels": {norm["input"]}, '
          f'batch dynamic; the graph computes {norm["formula"]} (mean: '
          f'{norm.get("mean_source", norm["mean"])}; scale: {norm["scale"] or "none, 0-255"}) '
          f'and transposes to NCHW. Output "logits": (batch, {net.spec.num_classes}), class '
          f'names in metadata_props["class_names"]. {towers}{info["lrn"]}{built}.')


def write(net: exportable.Network, path: str) -> list[str]:
  import onnx
  onnx.save(build(net), path)
  return [path]


def check(net: exportable.Network, path: str) -> dict:
  """onnxruntime's logits of the written file on the CPU against the JAX logits."""
  import onnxruntime
  session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
  images = exportable.check_images(net)
  got = session.run(['logits'], {'pixels': images})[0]
  return {'checked_with': f'onnxruntime {onnxruntime.__version__} (CPU)',
          'max_relative_error': exportable.relative_error(got, exportable.jax_logits(net, images))}


def refusal(spec) -> str | None:
  del spec
  return None  # every network of the project is eight layers of standard ONNX ops
