"""Caffe's `.caffemodel` (a NetParameter) and `.binaryproto` (a BlobProto) read by hand: the
protobuf wire format and the field numbers of BVLC/caffe's `src/caffe/proto/caffe.proto`, no
Caffe install and no generated code.

    NetParameter      layer = 100 (LayerParameter, today's format), layers = 2 (V1LayerParameter,
                      the format of the model-zoo files of 2014, bvlc_alexnet's among them)
    LayerParameter    name = 1 (string), type = 2 (string), blobs = 7 (BlobProto)
    V1LayerParameter  name = 4 (string), type = 5 (enum V1LayerParameter.LayerType),
                      blobs = 6 (BlobProto)
    BlobProto         shape = 7 (BlobShape), data = 5 (packed float), double_data = 8 (packed
                      double), num = 1, channels = 2, height = 3, width = 4 (the old 4-D shape)
    BlobShape         dim = 1 (packed int64)

Unknown fields are skipped by their wire type, as protobuf readers do, so files that carry
more (solver state, layer parameters of later Caffe versions) read the same.
"""

from __future__ import annotations

import dataclasses
import struct

import numpy as np

from alexnet_jax.errors import UserError

# V1LayerParameter.LayerType values (caffe.proto) of the layers a classifier holds.
V1_TYPES = {4: 'Convolution', 14: 'InnerProduct', 15: 'LRN', 17: 'Pooling', 18: 'ReLU',
            6: 'Dropout', 20: 'Softmax', 21: 'SoftmaxWithLoss', 5: 'Data', 1: 'Accuracy',
            3: 'Concat', 8: 'Flatten', 22: 'Split', 0: 'None'}
_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


class CaffeFormatError(UserError):
  """A file that is not the protobuf message it should be."""


@dataclasses.dataclass
class Layer:
  name: str
  type: str
  blobs: list[np.ndarray]


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
  shift = result = 0
  while True:
    if i >= len(buf):
      raise ValueError('truncated varint')
    b = buf[i]
    i += 1
    result |= (b & 0x7F) << shift
    if not b & 0x80:
      return result, i
    shift += 7
    if shift > 63:
      raise ValueError('varint longer than 10 bytes')


def fields(buf: memoryview):
  """(field number, wire type, value) of each field of one message: an int for varints and
  fixed-width values, a memoryview for length-delimited ones."""
  i = 0
  while i < len(buf):
    key, i = _varint(buf, i)
    number, wire = key >> 3, key & 7
    if wire == _VARINT:
      value, i = _varint(buf, i)
    elif wire == _FIXED64:
      value, i = buf[i:i + 8], i + 8
    elif wire == _FIXED32:
      value, i = buf[i:i + 4], i + 4
    elif wire == _BYTES:
      n, i = _varint(buf, i)
      value, i = buf[i:i + n], i + n
    else:
      raise ValueError(f'wire type {wire} (groups are not used by caffe.proto)')
    if i > len(buf):
      raise ValueError('truncated field')
    yield number, wire, value


def _packed_varints(value, wire) -> list[int]:
  if wire == _VARINT:
    return [value]
  out, i = [], 0
  while i < len(value):
    v, i = _varint(value, i)
    out.append(v)
  return out


def blob(buf: memoryview) -> np.ndarray:
  """A BlobProto's values in its shape (float32, or float64 from double_data)."""
  dims, old = [], {}
  floats, doubles = [], []
  for number, wire, value in fields(buf):
    if number == 7 and wire == _BYTES:  # shape: BlobShape
      for n, w, v in fields(value):
        if n == 1:
          dims.extend(_packed_varints(v, w))
    elif number == 5:  # data: packed, or one float per field in old writers
      floats.append(np.frombuffer(value, '<f4'))
    elif number == 8:
      doubles.append(np.frombuffer(value, '<f8'))
    elif number in (1, 2, 3, 4) and wire == _VARINT:
      old[number] = value
  data = np.concatenate(doubles) if doubles else (
      np.concatenate(floats) if floats else np.zeros(0, np.float32))
  if not dims and old:  # (num, channels, height, width); Caffe writes all four
    dims = [old.get(k, 1) for k in (1, 2, 3, 4)]
  if int(np.prod(dims or [data.size])) != data.size:
    raise ValueError(f'a blob of shape {dims} holds {data.size} values')
  return data.reshape(dims or [data.size]).copy()


def _layer(buf: memoryview, v1: bool) -> Layer:
  name_field, type_field, blob_field = (4, 5, 6) if v1 else (1, 2, 7)
  name, kind, blobs = '', '', []
  for number, wire, value in fields(buf):
    if number == name_field and wire == _BYTES:
      name = bytes(value).decode('utf-8', 'replace')
    elif number == type_field:
      kind = V1_TYPES.get(value, f'V1 type {value}') if v1 else bytes(value).decode()
    elif number == blob_field and wire == _BYTES:
      blobs.append(blob(value))
  return Layer(name, kind, blobs)


def read_net(path: str) -> dict[str, Layer]:
  """The layers of a `.caffemodel`, by name, in either format (those with no blobs too)."""
  data = _read(path)
  layers = {}
  try:
    for number, wire, value in fields(memoryview(data)):
      if wire == _BYTES and number in (100, 2):
        layer = _layer(value, v1=number == 2)
        layers[layer.name] = layer
  except (ValueError, struct.error) as e:
    raise CaffeFormatError(f'{path} is not a readable Caffe NetParameter ({e}); pass the '
                           '.caffemodel file (binary), not a .prototxt.') from None
  if not layers:
    raise CaffeFormatError(f'{path} holds no Caffe layers: pass a .caffemodel file.')
  return layers


def read_blob(path: str) -> np.ndarray:
  """A `.binaryproto` BlobProto (Caffe's mean image: (1, 3, 256, 256), BGR)."""
  data = _read(path)
  try:
    return blob(memoryview(data))
  except (ValueError, struct.error) as e:
    raise CaffeFormatError(f'{path} is not a readable Caffe BlobProto ({e}); pass the '
                           '.binaryproto mean file.') from None


def _read(path: str) -> bytes:
  try:
    with open(path, 'rb') as f:
      return f.read()
  except OSError as e:
    raise CaffeFormatError(f'Cannot read {path} ({e.strerror}).') from None
