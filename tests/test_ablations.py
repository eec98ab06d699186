"""scripts/ablations.py: the interval arithmetic by hand, and the quick mode end to end."""

import json
import subprocess
import sys

import pytest

from scripts import ablations
from tests import helpers


def test_welch_interval_by_hand():
  # Means 2 and 5, variances 1 and 1, n = 3: se = sqrt(2/3), df = 4, t(0.975, 4) = 2.776.
  diff, half = ablations.difference([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
  assert diff == pytest.approx(-3.0)
  assert half == pytest.approx(2.776 * (2 / 3) ** 0.5)
  assert ablations.difference([1.0], [2.0, 3.0]) is None  # one seed: no interval


def test_variants_are_overrides_of_the_config():
  from configs import fashion_mnist
  from configs import image_folder
  names = set(ablations.variants(fashion_mnist.get_config()))
  assert names == {'baseline', 'no_lrn', 'pool_2x2', 'one_tower_half_width',
                   'one_tower_full_width', 'no_dropout', 'no_reflections'}
  assert 'no_pca_lighting' in ablations.variants(image_folder.get_config())  # it has PCA
  full = ablations.variants(fashion_mnist.get_config())['one_tower_full_width']
  assert '--config.model.conv_features=(32,64,96,96,64)' in full  # twice the per-tower width


# ml_collections loads a config file with importlib's deprecated load_module().
@pytest.mark.filterwarnings('ignore:the load_module:DeprecationWarning')
@pytest.mark.parametrize('config', ['fashion_mnist', 'image_folder', 'alexnet'])
def test_every_variant_is_a_config_launch_accepts(config):
  """Each variant's overrides, as launch.py parses and checks them (the study runs two of them
  end to end below)."""
  import importlib
  for name, overrides in ablations.variants(importlib.import_module(
      f'configs.{config}').get_config()).items():
    parsed = helpers.launch_config(f'--config=configs/{config}.py', '--workdir=unused',
                                   *overrides)
    if name.startswith('one_tower'):
      assert parsed.model.num_towers == 1 and parsed.mesh.model == 1


def test_a_run_trained_before_the_study_keeps_its_own_wall_time(tmp_path):
  # Started 12:00:00 UTC, last record at 12:47:30: 2,850 s, however long the study's call took.
  (tmp_path / 'run.json').write_text(json.dumps({'time': '2026-11-22T12:00:00+00:00'}))
  start = 1795348800.0  # 2026-11-22T12:00:00Z
  lines = [{'step': 50, 'time': start + 60}, {'step': 100, 'eval/top1': 0.9, 'time': start + 2850}]
  (tmp_path / 'metrics.jsonl').write_text(''.join(json.dumps(l) + '\n' for l in lines))
  assert ablations.recorded_seconds(tmp_path) == pytest.approx(2850.0)
  assert ablations.curve(tmp_path) == {100: pytest.approx(0.1)}

@pytest.mark.slow
@pytest.mark.exhaustive
def test_quick_mode_runs_variants_resumably_with_the_mesh_passed_through(tmp_path):
  """Two variants end to end (a two-tower and a one-tower network, small, on random
  images): trained, evaluated, tabulated and drawn, then found finished by a second call."""
  out = tmp_path / 'study'
  base = [sys.executable, '-m', 'scripts.ablations', f'--out={out}', '--quick',
          '--config=configs/synthetic.py', '--variants=baseline,one_tower_half_width', '--']
  cmd = [*base, *helpers.SMALL_MODEL, '--config.mesh.data=2', '--config.mesh.model=1']
  env = dict(__import__('os').environ, XLA_FLAGS='--xla_force_host_platform_device_count=2',
             JAX_PLATFORMS='cpu')
  result = subprocess.run(cmd, cwd=helpers.ROOT, env=env, capture_output=True, text=True,
                          timeout=900, check=False)
  assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-2000:]
  rows = [l for l in (out / 'ablations.md').read_text().splitlines() if l.startswith('| ')]
  assert [r.split(' | ')[0][2:] for r in rows[1:]] == ['baseline', 'one_tower_half_width']
  assert (out / 'ablations.png').stat().st_size > 10_000
  # Every run got the pass-through flags: a 2x1 mesh, for two towers and for one.
  mesh = json.loads((out / 'baseline' / 'seed0' / 'run.json').read_text())['mesh']
  assert mesh['data'] == 2
  assert json.loads((out / 'one_tower_half_width' / 'seed0' / 'run.json').read_text())[
      'config']['model']['num_towers'] == 1
  # A second call trains nothing: every run is finished and evaluated.
  again = subprocess.run(cmd, cwd=helpers.ROOT, env=env, capture_output=True, text=True,
                         timeout=300, check=False)
  assert again.returncode == 0 and again.stdout.splitlines()[-1] == result.stdout.splitlines()[-1]
  bad = subprocess.run([*base, 'extra'], cwd=helpers.ROOT, env=env, capture_output=True,
                       text=True, timeout=60, check=False)
  assert 'only --config.<field>=<value> flags pass through' in bad.stderr
