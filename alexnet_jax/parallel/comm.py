"""Cross-device traffic: the analytic count of the paper's split, and what XLA compiled.

Bytes are counted per device and per step as what a device *sends* with ring
algorithms over a group of G devices:

  all-gather      (G-1)/G  x result
  reduce-scatter  (G-1)    x result     (= (G-1)/G x operand)
  all-reduce      2(G-1)/G x operand
  all-to-all      (G-1)/G  x operand

For G=2 these are the operand of an all-gather, the result of a reduce-scatter
and the operand of an all-reduce: exactly the values that cross between the
two GPUs of the paper.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

from alexnet_jax.model.network import AlexNetSpec

_DTYPE_BYTES = {'f32': 4, 'bf16': 2, 'f16': 2, 'f64': 8, 's32': 4, 'u32': 4, 's8': 1, 'u8': 1,
                'pred': 1, 's64': 8, 'u64': 8}
_OPS = ('all-gather', 'reduce-scatter', 'all-reduce', 'all-to-all', 'collective-permute')
_INSTR = re.compile(r'^\s*(?:ROOT\s+)?%\S+\s*=\s*(?P<shape>.+?)\s+(?P<op>' + '|'.join(_OPS) +
                    r')(?:-start)?\((?P<rest>.*)$')
_ARRAY = re.compile(r'(\w+)\[([\d,]*)\]')


@dataclasses.dataclass(frozen=True)
class Collective:
  op: str
  result_bytes: int
  group_size: int
  axes: str  # 'model', 'data', 'data+model' or '?' (groups XLA printed in another form)
  name: str  # the JAX op it came from (from the HLO metadata)
  # collective-permute: the share of devices that send (source-target pairs / devices).
  senders: float = 0.0

  @property
  def bytes_sent(self) -> float:
    """Bytes one device sends, on average over the devices."""
    g = self.group_size
    if g <= 1:
      return 0.0
    if self.op == 'collective-permute':
      return self.senders * self.result_bytes
    if self.op == 'all-gather':
      return (g - 1) / g * self.result_bytes
    if self.op == 'reduce-scatter':
      return (g - 1) * self.result_bytes
    if self.op == 'all-reduce':
      return 2 * (g - 1) / g * self.result_bytes
    return (g - 1) / g * self.result_bytes


def _shape_bytes(shape: str) -> int:
  total = 0
  for dtype, dims in _ARRAY.findall(shape):
    if dtype in _DTYPE_BYTES:
      total += _DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(',') if d)
  return total


def _groups(rest: str, mesh_shape: tuple[int, int]) -> tuple[int, str]:
  """Group size and the mesh axes a collective's replica groups span."""
  m = re.search(r'replica_groups=\{\{([\d,]+)\}', rest)
  if m:
    ids = [int(i) for i in m.group(1).split(',')]
    n_model = mesh_shape[1]
    same_data = len({i // n_model for i in ids}) == 1
    same_model = len({i % n_model for i in ids}) == 1
    axes = 'model' if same_data else ('data' if same_model else 'data+model')
    return len(ids), axes
  m = re.search(r"replica_groups=mesh\[([^\]]*)\].*?\{([^}]*)\}", rest)
  if m:  # mesh['axis_0'=2,...], device_ids=(...) {'axis_0'}
    sizes = dict((k.strip("'"), int(v)) for k, v in
                 (kv.split('=') for kv in m.group(1).split(',')))
    return math.prod(sizes[a.strip().strip("'")] for a in m.group(2).split(',')), '?'
  m = re.search(r'replica_groups=\[([\d,]+)\]<=', rest)
  if m:  # iota form [num_groups, group_size]<=[...]
    return int(m.group(1).split(',')[-1]), '?'
  return 1, '?'


def collectives(hlo_text: str, mesh_shape: tuple[int, int]) -> list[Collective]:
  """The collectives of a compiled module (`compiled.as_text()`), one per instruction."""
  found = []
  for line in hlo_text.splitlines():
    m = _INSTR.match(line)
    if not m:
      continue
    size, axes = _groups(m.group('rest'), mesh_shape)
    senders = 0.0
    pairs = re.search(r'source_target_pairs=\{((?:\{\d+,\d+\},?)*)\}', m.group('rest'))
    if m.group('op') == 'collective-permute' and pairs:
      ends = [tuple(map(int, p)) for p in re.findall(r'\{(\d+),(\d+)\}', pairs.group(1))]
      n_model = mesh_shape[1]
      same_data = all(a // n_model == b // n_model for a, b in ends)
      same_model = all(a % n_model == b % n_model for a, b in ends)
      size = 2 if ends else 1
      axes = 'model' if same_data else ('data' if same_model else 'data+model')
      senders = len(ends) / math.prod(mesh_shape)
    nbytes = _shape_bytes(m.group('shape'))
    if m.group('op') == 'collective-permute' and 'collective-permute-start(' in line:
      nbytes //= 2  # the async form's shape holds (operand, result, ...)
    op_name = re.search(r'op_name="([^"]*)"', line)
    found.append(Collective(m.group('op'), nbytes, size, axes,
                            op_name.group(1) if op_name else '', senders))
  return found


def bytes_by_axes(colls: list[Collective]) -> dict[str, float]:
  out: dict[str, float] = {}
  for c in colls:
    if c.group_size > 1:
      out[c.axes] = out.get(c.axes, 0.0) + c.bytes_sent
  return out


def towers_activation_bytes(spec: AlexNetSpec, examples: int, num_model: int,
                            dtype_bytes: int = 4) -> dict[str, float]:
  """Analytic bytes one device sends across `model` per train step in the paper's split.

  Forward, the towers' maps are gathered where the paper joins them (pool2 into
  conv3, pool5 into fc6, fc6 into fc7); backward, the gradients with respect to
  the same maps are reduce-scattered back. fc8 is summed across towers (an
  all-reduce of the logits); its backward needs no traffic because every tower
  receives the same logit gradient.
  """
  g, t = num_model, spec.num_towers
  if g == 1:
    return {'conv3_in': 0.0, 'fc6_in': 0.0, 'fc7_in': 0.0, 'fc8_logits': 0.0, 'total': 0.0}
  s2, s5 = spec.feature_sizes()[2], spec.feature_sizes()[3]
  per_tower = {'conv3_in': s2 * s2 * spec.conv_features[1],
               'fc6_in': s5 * s5 * spec.conv_features[4],
               'fc7_in': spec.fc_features}
  out = {k: 2 * (g - 1) / g * t * v * examples * dtype_bytes for k, v in per_tower.items()}
  out['fc8_logits'] = 2 * (g - 1) / g * spec.num_classes * examples * dtype_bytes
  out['total'] = float(sum(out.values()))
  return out


def paper_values_per_image(spec: AlexNetSpec) -> int:
  """The reference card's count: values crossing per image per direction (30,336 at 224)."""
  s2, s5 = spec.feature_sizes()[2], spec.feature_sizes()[3]
  return int(np.sum([s2 * s2 * spec.conv_features[1], s5 * s5 * spec.conv_features[4],
                     spec.fc_features, spec.fc_features]))
