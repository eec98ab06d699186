"""The GPU check (benchmarks/gpu_check.py): a rehearsal of its runner with fake stages that fail
in every way a first GPU run can (seconds), its rules (the switch verdicts, the calibration,
the data sheets) on fake figures, and its dry run: every real stage on CPU with tiny shapes,
through the code paths the GPU run takes, so that the GPU meets no Python error a CPU could
have found."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from benchmarks import gpu_calibration
from benchmarks import peaks
from benchmarks import switches
from tests import helpers


def report(out) -> dict:
  return json.loads((out / 'report.json').read_text())


def stages_of(out) -> dict:
  return {s['name']: s for s in report(out)['stages']}


def returned_files(out) -> list[str]:
  """What the GPU machine would return: every file under `out`, relative to it."""
  return sorted(os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out)
                for f in fs)


def fakes(out, scratch, scenario, **kw):
  return subprocess.Popen([sys.executable, '-m', 'tests.gpu_check_fakes', str(out),
                           str(scratch), scenario], cwd=helpers.ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, **kw)


# ---- the rehearsal ------------------------------------------------------------------------


def test_every_failure_keeps_the_other_stages_figures(tmp_path):
  out, scratch = tmp_path / 'out', tmp_path / 'scratch'
  proc = fakes(out, scratch, 'failures')
  log, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, log
  s = stages_of(out)
  assert {n: x['status'] for n, x in s.items()} == {
      'setup': 'failed', 'needs_missing': 'skipped', 'figures': 'ok', 'raises': 'failed',
      'hangs': 'cut', 'killed': 'failed', 'too_long': 'skipped', 'after': 'ok'}
  # The failed import: what was written before it stays, and its dependants are skipped.
  assert s['setup']['results']['versions']['python'] == sys.version.split()[0]
  assert "No module named 'no_such_module_for_the_rehearsal'" in s['setup']['error']
  assert 'no_such_module_for_the_rehearsal' in s['needs_missing']['why']
  assert s['figures']['results']['img_per_s'] == 1234.5
  # The exception, the cut and the SIGKILL: each with its figures and why.
  assert s['raises']['results']['partial'] == 1 and 'planted exception' in s['raises']['error']
  assert s['hangs']['results']['partial'] == 2 and 'cut at 2 s' in s['hangs']['error']
  assert s['hangs']['limit_s'] == 2.0 and s['hangs']['elapsed_s'] < 10
  assert s['killed']['results']['partial'] == 3 and 'killed by SIGKILL' in s['killed']['error']
  assert 'of the budget left' in s['too_long']['why']
  # The stage after all that ran, with what an earlier stage passed on.
  assert s['after']['results']['best_batch_seen'] == 64
  # Only the reports come back; the logs and results stay in the scratch folder.
  assert returned_files(out) == ['logs.txt', 'report.json', 'report.md']
  assert (scratch / 'logs' / 'raises.log').exists()
  assert 'planted exception' in (out / 'logs.txt').read_text()
  md = (out / 'report.md').read_text()
  assert report(out)['provenance']['commit'] in md and '## hangs (cut' in md
  calibration = report(out)['calibration']['measured']['stages']
  assert calibration['hangs'] == {'s': s['hangs']['elapsed_s'], 'cut': True}
  assert 'too_long' not in calibration


def _stage_processes(scratch) -> list[int]:
  """The pids of stage processes working in `scratch`."""
  found = []
  for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
      with open(f'/proc/{pid}/cmdline', 'rb') as f:
        if str(scratch).encode() in f.read():
          found.append(int(pid))
    except OSError:
      continue
  return found


def test_a_kill_of_the_whole_check_leaves_every_finished_stage_in_the_report(tmp_path):
  out, scratch = tmp_path / 'out', tmp_path / 'scratch'
  proc = fakes(out, scratch, 'kill')
  deadline = time.monotonic() + 60
  while time.monotonic() < deadline:  # until the slow stage has written its first figure
    try:
      running = stages_of(out).get('slow', {})
    except (OSError, ValueError):
      running = {}
    if running.get('results', {}).get('partial') == 4:
      break
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=30)
  s = stages_of(out)
  assert s['figures']['status'] == 'ok' and s['figures']['results']['img_per_s'] == 1234.5
  assert s['slow']['status'] == 'running' and s['slow']['results'] == {'partial': 4}
  assert returned_files(out) == ['logs.txt', 'report.json', 'report.md']
  for _ in range(50):  # the stage's process dies with the check (PR_SET_PDEATHSIG)
    if not _stage_processes(scratch):
      break
    time.sleep(0.1)
  assert _stage_processes(scratch) == []


# ---- the rules, on fake figures ------------------------------------------------------------


def test_a_switch_wins_only_beyond_three_spreads():
  auto = [10.0, 10.2, 9.8, 10.1, 9.9]  # median 10.0, spread (MAD) 0.1
  assert switches.spread(auto) == pytest.approx(0.1)
  assert switches.decide(auto, [9.5, 9.6, 9.4, 9.55, 9.45]) == 'faster'  # 0.5 > 3 x 0.1
  assert switches.decide(auto, [9.75, 9.85, 9.65, 9.8, 9.7]) == 'tie'  # 0.25 < 0.3
  assert switches.decide(auto, [10.5, 10.6, 10.4, 10.5, 10.5]) == 'slower'
  # A noisy form's own spread counts: 0.5 faster, but it strays by 0.3 (MAD).
  assert switches.decide(auto, [9.5, 9.9, 9.1, 9.8, 9.2]) == 'tie'


def test_the_winners_keep_the_default_on_a_tie():
  auto = {'switch': 'auto', 'form': 'auto', 'step_ms': 10.0}
  rows = [auto, {'switch': 'lrn', 'form': 'autodiff', 'step_ms': 9.8, 'verdict': 'tie'},
          {'switch': 'conv1', 'form': 'strided', 'step_ms': 9.0, 'verdict': 'faster'},
          {'switch': 'pool_backward', 'form': 'xla', 'step_ms': 12.0, 'verdict': 'slower'}]
  chosen = switches.winners(rows, 'gpu')
  assert chosen['lrn'] == {'form': 'custom', 'verdict': 'tie', 'default': 'custom'}
  assert chosen['conv1'] == {'form': 'strided', 'verdict': 'faster',
                             'default': 'space_to_depth'}
  assert chosen['pool_backward']['form'] == 'custom'
  assert set(chosen) == {'lrn', 'conv1', 'pool_backward'}


def test_the_calibration_is_read_back_from_a_report():
  rep = {'device_kind': 'NVIDIA H100 80GB HBM3', 'provenance': {'commit': 'abc'},
         'started': 'now', 'stages': [
             {'name': 'tests', 'status': 'ok', 'elapsed_s': 41.0, 'results': {}},
             {'name': 'train_step', 'status': 'cut', 'elapsed_s': 200.0,
              'results': {'group_s': {'512 bfloat16': 70.0}}},
             {'name': 'layers', 'status': 'skipped', 'elapsed_s': None, 'results': {}}]}
  kind, measured = gpu_calibration.from_report(rep)
  merged = gpu_calibration.merge({kind: {'stages': {'layers': {'s': 9.0}}, 'groups': {}}},
                                 kind, measured)
  est = lambda what, section='stages': gpu_calibration.estimate(merged, kind, what, section, 1)
  assert est('tests') == (41.0, 'calibration (NVIDIA H100 80GB HBM3)')
  assert est('train_step')[0] == 300.0  # cut there: half as much again
  assert est('layers')[0] == 9.0  # not measured this time: the old figure stays
  assert est('512 bfloat16', 'groups')[0] == 70.0
  assert gpu_calibration.estimate(merged, 'NVIDIA H200', 'tests', 'stages', 60)[0] == 60
  # The committed calibration has the dry run's figures for every stage.
  dry = gpu_calibration.load()[gpu_calibration.DRY_RUN_KIND]['stages']
  from benchmarks import gpu_plan
  assert set(gpu_plan.NAMES) - {'torch_autotune'} <= set(dry)


def test_the_data_sheets_and_bounds_by_device_kind():
  h100, h200 = peaks.sheet('NVIDIA H100 80GB HBM3'), peaks.sheet('NVIDIA H200')
  assert (h100['name'], h100['bfloat16'], h100['bytes_per_s']) == ('H100', 989e12, 3.35e12)
  assert (h200['name'], h200['bfloat16'], h200['bytes_per_s']) == ('H200', 989e12, 4.8e12)
  assert peaks.sheet('NVIDIA H100 PCIe')['bytes_per_s'] == 2.0e12
  assert peaks.sheet('cpu') is None
  from benchmarks import roofline
  # 1 GFLOP moving 1 GB: 1.01 µs of compute, 299 µs (H100) or 208 µs (H200) of memory.
  h100_us, by = roofline.bound_seconds(1e9, 1e9, roofline.device_row(h100), 'bfloat16')
  assert by == 'memory' and h100_us == pytest.approx(1e9 / 3.35e12)
  measured = (798e12, 400e12, 3.0e12)  # this project's H100, measured
  assert roofline.bound_seconds(1e9, 1e9, measured, 'bfloat16')[0] == pytest.approx(1 / 3000)
  assert roofline.bound_seconds(1e12, 1e6, measured, 'bfloat16') == (
      pytest.approx(1e12 / 798e12), 'compute')


def test_without_git_the_commit_comes_from_a_stamp_of_the_same_tree(tmp_path):
  from benchmarks import provenance
  root = tmp_path / 'copy'  # as the GPU machine receives it: files, no .git
  (root / 'alexnet_jax').mkdir(parents=True)
  (root / 'alexnet_jax' / 'a.py').write_text('x = 1\n')
  (root / 'launch.py').write_text('print()\n')
  stamp = tmp_path / 'provenance.json'
  stamp.write_text(json.dumps({'commit': 'abc123', 'dirty': False, 'changed': [],
                               'tree_hash': provenance.tree_hash(str(root))}))
  info = provenance.provenance(str(root), str(stamp))
  assert (info['commit'], info['source'], info['stamp_matches_tree']) == (
      'abc123', 'stamp (.whl/provenance.json)', True)
  assert 'commit abc123 (clean' in provenance.line(info)
  (root / 'alexnet_jax' / 'a.py').write_text('x = 2\n')  # edited after the stamp
  info = provenance.provenance(str(root), str(stamp))
  assert info['stamp_matches_tree'] is False and 'NOT the stamped tree' in provenance.line(info)
  assert provenance.provenance(str(root), str(tmp_path / 'none'))['commit'] is None


# ---- the real stages, on CPU ----------------------------------------------------------------


def run_check(out, *args, timeout=900):
  """On one CPU device, as on one GPU (the tests' session forces 8)."""
  return subprocess.run([sys.executable, '-m', 'benchmarks.gpu_check', f'--out={out}',
                         '--dry_run', *args], cwd=helpers.ROOT, capture_output=True, text=True,
                        timeout=timeout, check=False, env=dict(os.environ, XLA_FLAGS=''))


@pytest.mark.exhaustive
def test_the_dry_run_runs_every_stage_and_returns_three_files(tmp_path):
  out, scratch = tmp_path / 'gc', tmp_path / 'scratch'
  # A loaded CI machine is slower than the calibration: limits far from the estimates.
  result = run_check(out, f'--scratch={scratch}', '--budget_s=1200', '--limit_factor=10')
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert returned_files(out) == ['logs.txt', 'report.json', 'report.md']
  s = stages_of(out)
  assert list(s) == ['environment', 'device', 'tests', 'train_step', 'switches', 'roofline',
                     'layers', 'input', 'train_run', 'torch_autotune']
  has_torch = s['environment']['results']['imports']['torch'] == 'ok'
  assert {n: x['status'] for n, x in s.items()} == dict(
      {n: 'ok' for n in s}, **({} if has_torch else {'torch_autotune': 'skipped'})), {
          n: x['error'] for n, x in s.items()}
  assert s['environment']['results']['jax']['backend'] == 'cpu'
  assert set(s['device']['results']['measured']) == {'bfloat16', 'tf32', 'float32',
                                                     'bytes_per_s'}
  tests = s['tests']['results']['pytest']
  assert [t['backend'] for t in tests['tests']] == ['cpu'] and tests['exit_code'] == 0
  rows = s['train_step']['results']['rows']
  assert {(r['framework'], r['batch'], r['dtype']) for r in rows if r['framework'] == 'jax'} == {
      ('jax', 2, 'bfloat16'), ('jax', 2, 'float32')}
  assert all(r['images_per_s'] > 0 and r['compile_s'] > 0 and r['settings'] and
             r['mfu_measured'] > 0 for r in rows if r['framework'] == 'jax')
  assert "jax_default_matmul_precision='float32'" in next(
      r['settings'] for r in rows if r['framework'] == 'jax' and r['dtype'] == 'float32')
  if has_torch:  # each baseline once, with its settings
    torch_rows = {(r['variant'], r['dtype']): r['settings'] for r in rows
                  if r['framework'] == 'torch'}
    assert set(torch_rows) == {('eager', 'bfloat16'), ('compile', 'bfloat16'),
                               ('torchvision alexnet eager', 'float32')}
    assert all('cudnn.benchmark=True' in t and 'TF32 off' in t for t in torch_rows.values())
    assert all('AMP autocast bfloat16' in t and 'channels_last' in t
               for (_, dtype), t in torch_rows.items() if dtype == 'bfloat16')
    assert "torch.compile(mode='default'" in torch_rows['compile', 'bfloat16']
  assert {(r['switch'], r['form']) for r in s['switches']['results']['rows']} == {
      ('auto', 'auto'), ('lrn', 'autodiff')}
  assert s['switches']['results']['winners']['lrn']['verdict'] in ('faster', 'tie', 'slower')
  roof = s['roofline']['results']['roofline']
  assert list(roof['devices']) == ['cpu measured'] and len(roof['layers']) == 4
  assert len(s['layers']['results']['rows']) == 4
  assert all(r['img_per_s'] > 0 for r in s['input']['results']['rows'])
  assert s['train_run']['results']['train_run']['exit_code'] == 0
  md = (out / 'report.md').read_text()
  assert report(out)['provenance']['commit'] in md
  for name in s:
    assert f'## {name} (' in md
  assert (scratch / 'train_run').is_dir() and (scratch / 'cache').is_dir()


def test_bad_groups_fail_in_one_sentence(tmp_path):
  result = run_check(tmp_path / 'gc', '--groups=512:fp16', timeout=120)
  assert result.returncode != 0
  assert 'BATCH:DTYPE' in result.stderr and not (tmp_path / 'gc').exists()
