"""The GPU check's dry run: every stage on CPU with tiny shapes, through the code paths the
GPU run takes, so that the GPU meets no Python error that a CPU could have found."""

import json
import os
import subprocess
import sys

from tests import helpers


def run_check(out, *args, timeout=900):
  """On one CPU device, as on one GPU (the tests' session forces 8)."""
  return subprocess.run([sys.executable, '-m', 'benchmarks.gpu_check', f'--out={out}',
                         '--dry_run', *args], cwd=helpers.ROOT, capture_output=True, text=True,
                        timeout=timeout, check=False, env=dict(os.environ, XLA_FLAGS=''))


def test_the_dry_run_runs_every_stage_and_writes_its_report(tmp_path):
  result = run_check(tmp_path / 'gc')
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  report = json.loads((tmp_path / 'gc' / 'report.json').read_text())
  stages = {s['name']: s for s in report['stages']}
  assert list(stages) == ['environment', 'tests', 'train_step', 'switches', 'roofline',
                          'layers', 'input', 'train_run']
  assert {s['status'] for s in stages.values()} == {'ok'}, {
      n: s['error'] for n, s in stages.items()}
  assert all(s['elapsed_s'] is not None for s in stages.values())
  rows = stages['train_step']['results']['rows']
  assert {(r['framework'], r['batch'], r['dtype']) for r in rows if r['framework'] == 'jax'} == {
      ('jax', 4, 'bfloat16'), ('jax', 2, 'bfloat16'), ('jax', 4, 'float32')}
  assert all(r['images_per_s'] > 0 and r['compile_s'] > 0 for r in rows if r['framework'] == 'jax')
  switch_rows = stages['switches']['results']['rows']
  assert {(r['switch'], r['form']) for r in switch_rows} == {
      ('auto', 'auto'), ('conv1', 'strided'), ('conv1_input', 'pad4'), ('pool_backward', 'xla'),
      ('tower_conv', 'grouped'), ('lrn', 'autodiff')}
  roofline = stages['roofline']['results']['roofline']
  assert len(roofline['layers']) == 15 and roofline['step']['H200']['img_per_s'] > 0
  assert len(stages['layers']['results']['rows']) == 15
  storages = ['q95-pillow', 'q95-turbo', 'q90-turbo', 'raw']
  assert [(r['storage'], r['workers']) for r in stages['input']['results']['rows']] == [
      ('q95-pillow', '1 process')] + [(s, w) for s in storages
                                        for w in ('2 threads', '2 processes')]
  assert all(r['img_per_s'] > 0 for r in stages['input']['results']['rows'])
  decode = stages['input']['results']['device_decode']
  # The Pillow stand-in decodes as Pillow does: no difference at all.
  assert decode['decoder'] == 'pillow' and decode['max_abs_diff'] == 0, decode
  assert stages['train_run']['results']['train_run']['exit_code'] == 0
  markdown = (tmp_path / 'gc' / 'report.md').read_text()
  for name in stages:
    assert f'## {name} (ok' in markdown


def test_a_budget_that_is_spent_skips_the_stages_and_says_why(tmp_path):
  result = run_check(tmp_path / 'gc', '--budget_s=1', '--stages=environment,tests,train_step,'
                     'switches')
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  report = json.loads((tmp_path / 'gc' / 'report.json').read_text())
  stages = {s['name']: s for s in report['stages']}
  assert stages['tests']['status'] == stages['switches']['status'] == 'skipped'
  assert 'of the budget left' in stages['tests']['markdown'][0]
  assert not stages['train_step']['results'].get('rows')
  assert any(k.startswith('skipped 4 bfloat16') for k in stages['train_step']['results'])


def test_bad_groups_fail_in_one_sentence(tmp_path):
  result = run_check(tmp_path / 'gc', '--groups=512:fp16', timeout=120)
  assert result.returncode != 0
  assert 'BATCH:DTYPE' in result.stderr and not (tmp_path / 'gc').exists()
