"""The peak FLOP/s behind MFU: the GPU/TPU data-sheet table by device kind, a config figure,
and a CPU peak that only rises across runs."""

import json
import types

import pytest

from alexnet_jax.model import flops


def fake(kind, platform='gpu', process_index=0):
  return types.SimpleNamespace(device_kind=kind, platform=platform, process_index=process_index)


@pytest.mark.parametrize('kind,dtype,per_device', [
    # jax's device_kind strings for these parts; data-sheet dense peaks.
    ('NVIDIA H100 80GB HBM3', 'bfloat16', 989e12),
    ('NVIDIA H100 80GB HBM3', 'float32', 494.7e12),
    ('NVIDIA H100 PCIe', 'bfloat16', 756e12),
    ('NVIDIA H100 NVL', 'float32', 417.5e12),
    ('NVIDIA H200', 'bfloat16', 989e12),
    ('NVIDIA A100-SXM4-80GB', 'float32', 156e12),
    ('Tesla V100-SXM2-16GB', 'float32', 15.7e12),
    ('TPU v5 lite', 'bfloat16', 197e12),
    ('TPU v5p', 'bfloat16', 459e12),
])
def test_gpu_and_tpu_peaks_come_from_the_table(kind, dtype, per_device):
  peak = flops.peak_flops([fake(kind)] * 4, dtype)
  assert peak['per_device'] == per_device
  assert peak['total'] == 4 * per_device
  assert peak['source'].startswith('table:')


def test_unknown_device_kind_gives_no_mfu_unless_the_config_sets_a_peak():
  assert flops.peak_flops([fake('NVIDIA RTX 9999')], 'float32')['total'] is None
  peak = flops.peak_flops([fake('NVIDIA RTX 9999')] * 2, 'float32', per_device=1e14)
  assert peak['total'] == 2e14 and peak['source'].startswith('config:')


def test_cpu_peak_is_the_best_measured_so_far(tmp_path):
  path = str(tmp_path / 'peak.json')
  measured = iter([5e10, 1e11, 7e10])
  figures = [flops.host_peak_flops(lambda: next(measured), path)[0] for _ in range(3)]
  assert figures == [5e10, 1e11, 1e11]  # a loaded later run does not lower the peak
  (entry,) = json.loads(open(path).read()).values()
  assert entry == {'flops': 1e11, 'runs': 3}
  devices = [fake('cpu', 'cpu')] * 8
  peak = flops.peak_flops(devices, 'float32', measure_host=lambda: (1e11, 'measured: test'))
  assert peak['total'] == 1e11 and peak['per_device'] == 1e11 / 8  # 8 devices share the host
