"""How some layers are computed: forms that give the same sums (each equal to the float64
reference in tests/test_model.py), chosen per backend by measurement.

Every switch is a field of `model.AlexNetSpec` (and of `config.model`) whose default
'auto' means the choice of `AUTO` for the backend the step is traced for. The benchmarks
measure each form: `python -m benchmarks.switches` (CPU), and the GPU check's switch stage
(`benchmarks.gpu_check`), whose winners 'auto' takes on GPU once they are measured.

  conv1         space_to_depth: the strided convolution as a stride-1 one over 4x4 blocks
                (layers.space_to_depth_conv); strided: the plain strided convolution
  conv1_input   as_is: 3 channels; pad4: the image and conv1's kernel padded with a zero
                channel to 4 (a published trick for tensor cores' first layers)
  pool_backward custom: the hand-written backward (first maximum of each window, no
                select-and-scatter); xla: XLA's own (select-and-scatter)
  tower_conv    per_tower: one convolution per tower held on the device; grouped: one
                convolution with feature_group_count = towers (conv2, conv4, conv5)
  lrn           custom: shifted slices with a hand-written backward; autodiff: the same
                forward, differentiated by JAX
"""

from __future__ import annotations

import jax

CHOICES = {
    'conv1': ('space_to_depth', 'strided'),
    'conv1_input': ('as_is', 'pad4'),
    'pool_backward': ('custom', 'xla'),
    'tower_conv': ('per_tower', 'grouped'),
    'lrn': ('custom', 'autodiff'),
}

# 'auto', by backend. CPU: `python -m benchmarks.switches`, 224x224 train step, batch 32
# float32, 2-core Xeon (peak 2.99e11 FLOP/s, load 0.27, 2026-12-03), step ms against auto's
# 739: conv1 strided 732 (a tie: within the 1-2% spread of two runs; space-to-depth kept),
# conv1 pad4 782,
# pool backward xla 841, grouped tower convolutions 2399 (jax-ml/jax#13800: XLA:CPU's
# grouped backward is slow), LRN autodiff 812. Other backends: not measured on a GPU yet,
# so the CPU's forms (every one of them exact) until the GPU check's switch stage has
# measured each there (benchmarks/gpu_check.py, docs/gpu.md).
AUTO = {
    'cpu': {'conv1': 'space_to_depth', 'conv1_input': 'as_is', 'pool_backward': 'custom',
            'tower_conv': 'per_tower', 'lrn': 'custom'},
}
AUTO['default'] = AUTO['cpu']


def choose(switch: str, value: str, platform: str | None = None) -> str:
  """The form `value` names for `switch`; 'auto': AUTO's for `platform` (default: the
  backend JAX traces for)."""
  if value != 'auto':
    return value
  platform = platform or jax.default_backend()
  return AUTO.get(platform, AUTO['default'])[switch]
