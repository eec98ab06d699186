"""Runs that survive real clusters, tried from outside as a user meets them: the signals that
end a job (SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1; config.stop_signals), two runs on one
workdir, a full disk, read-only workdirs, a step directory turned into a link loop, reruns and
their run.json. Runs of several processes: test_cluster.py."""

import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from tests import helpers
from tests.helpers import assert_bitwise_equal
from tests.helpers import load_state
from tests.helpers import one_error_line
from tests.helpers import records
from tests.helpers import snapshot
from tests.helpers import steps_on_disk

RUN = [*helpers.SMALL_MODEL, '--config.model.init_std=0.05', '--config.data.crop_pad=2',
       '--config.num_train_steps=8', '--config.log_every_steps=1',
       '--config.checkpoint_every_steps=4', '--config.eval_every_steps=4']


def launch(xla_cache, workdir, *overrides, **kwargs):
  return helpers.launch(workdir, *overrides, xla_cache=xla_cache, **kwargs)


@pytest.fixture(scope='module')
def reference(xla_cache, tmp_path_factory):
  """RUN uninterrupted."""
  workdir = tmp_path_factory.mktemp('reference') / 'run'
  result = launch(xla_cache, workdir, *RUN)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def stopped_line(result, code=75):
  lines = [l for l in result.stderr.splitlines() if l.startswith('stopped:')]
  assert result.returncode == code and len(lines) == 1, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr and 'KeyboardInterrupt' not in result.stderr
  return lines[0]


def stopped_step(line):
  """The step a `stopped: ... after step N of M ...` line names."""
  return int(line.split(' after step ')[1].split()[0])


def stop_as_preempted(proc):
  """Ends a background run that a test only needed running, as a scheduler would: SIGTERM
  (if it is still running); returns its result."""
  if proc.poll() is None:
    proc.send_signal(signal.SIGTERM)
  return helpers.finish(proc)


# ---- the signals that end a job (config.stop_signals) ------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize('fault,stop_step', [
    ('term_at_step=3', 3), pytest.param('int_at_step=6', 6, marks=pytest.mark.exhaustive),
    ('hup_at_step=5', 5), pytest.param('term_after_save=4', 4, marks=pytest.mark.exhaustive),
    ('int_after_save=4', 4)])
def test_a_signal_saves_the_current_step_and_the_rerun_is_bitwise(xla_cache, reference,
                                                                  tmp_path, fault, stop_step):
  workdir = tmp_path / 'run'
  result = launch(xla_cache, workdir, *RUN, faults=fault)
  line = stopped_line(result)
  signal_name = 'SIG' + fault.split('_')[0].upper()
  assert f'{signal_name} after step {stop_step} of 8' in line, line
  assert f'{workdir}/checkpoints/{stop_step} is written' in line, line
  assert stop_step in steps_on_disk(workdir)
  assert not [p for p in (workdir / 'checkpoints').iterdir() if 'tmp' in p.name]
  result = launch(xla_cache, workdir, *RUN)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'Resumed from {workdir}/checkpoints/{stop_step}.' in result.stderr
  assert_bitwise_equal(load_state(workdir, 8), load_state(reference, 8))
  steps = [r['step'] for r in records(workdir, 'train/loss')]
  assert steps == sorted(set(steps)) and steps[-1] == 8  # no step twice
  assert [r['eval/loss'] for r in records(workdir, 'eval/loss')] == [
      r['eval/loss'] for r in records(reference, 'eval/loss')]


@pytest.mark.slow
@pytest.mark.parametrize('name', ['QUIT', 'USR1'])
def test_every_default_stop_signal_saves_the_current_step(xla_cache, tmp_path, name):
  """SIGQUIT (Ctrl-\\) and SIGUSR1 (sbatch --signal=USR1@120) as SIGTERM: a checkpoint of the
  step they arrive in and exit 75 (SIGTERM, SIGINT and SIGHUP, with the rerun: above)."""
  workdir = tmp_path / 'run'
  line = stopped_line(launch(xla_cache, workdir, *RUN, faults=f'{name.lower()}_at_step=3'))
  assert f'SIG{name} after step 3 of 8' in line and f'{workdir}/checkpoints/3 is written' in line
  assert steps_on_disk(workdir) == [3]


@pytest.mark.slow
def test_stop_signals_chooses_the_signals(xla_cache, tmp_path):
  """A signal added to stop_signals stops the run as SIGTERM does; one left out keeps its
  default action (SIGHUP ends the process at once); a name that is no such signal is refused
  before anything starts."""
  workdir = tmp_path / 'run'
  only = "--config.stop_signals=('SIGTERM','SIGUSR2')"
  line = stopped_line(launch(xla_cache, workdir, *RUN, only, faults='usr2_at_step=3'))
  assert 'SIGUSR2 after step 3 of 8' in line, line
  result = launch(xla_cache, tmp_path / 'hup', *RUN, only, faults='hup_at_step=3')
  assert result.returncode == -signal.SIGHUP, result.stderr[-3000:]
  error = one_error_line(launch(xla_cache, tmp_path / 'bad', *RUN,
                                "--config.stop_signals=('SIGTERM','SIGKIL')"))
  assert "stop_signals: 'SIGKIL' is not one of SIGTERM, SIGINT" in error, error
  assert not (tmp_path / 'bad').exists()


@pytest.mark.slow
def test_a_second_sigint_exits_at_once(xla_cache, tmp_path):
  result = launch(xla_cache, tmp_path / 'run', *RUN, faults='int_twice_at_step=6')
  assert result.returncode == 130, result.stderr[-3000:]
  assert 'second SIGINT' in result.stderr and 'Traceback' not in result.stderr
  # At once: the save of step 4 may have been cut short (orbax's temporary directory is
  # cleaned up by the next run, which resumes from the last complete checkpoint, if any).
  assert steps_on_disk(tmp_path / 'run') in ([], [4])
  result = launch(xla_cache, tmp_path / 'run', *RUN)
  assert result.returncode == 0, result.stderr[-3000:]


# ---- one run per workdir -----------------------------------------------------------------


@pytest.mark.slow
def test_a_second_run_on_a_busy_workdir_is_refused_and_a_dead_runs_lock_is_taken(
    xla_cache, tmp_path):
  workdir = tmp_path / 'run'
  first = launch(xla_cache, workdir, *RUN, '--config.num_train_steps=400',
                 '--config.log_every_steps=50', '--config.eval_every_steps=400',
                 '--config.checkpoint_every_steps=400', background=True)
  deadline = time.time() + 120
  while not (workdir / 'metrics.jsonl').exists():  # training has started
    assert time.time() < deadline and first.poll() is None
    time.sleep(0.2)
  before = snapshot(workdir / 'checkpoints')
  second = launch(xla_cache, workdir, *RUN)
  error = one_error_line(second)
  assert 'Another run is training' in error and f'PID {first.pid}' in error, error
  # Refused before any data is read or anything compiles (not timed: a loaded machine is slow).
  for later in ('pixel statistics', 'Peak FLOP/s', 'Training steps', 'Storing'):
    assert later not in second.stderr, second.stderr[-3000:]
  assert snapshot(workdir / 'checkpoints') == before
  # The first run trains on, unharmed; it need not train to the end: once it has logged
  # (its signal handlers are set by then), it is stopped as on preemption.
  while first.poll() is None and not records(workdir, 'train/loss'):
    assert time.time() < deadline
    time.sleep(0.2)
  result = stop_as_preempted(first)
  assert result.returncode in (0, 75), result.stderr[-3000:]
  last = 400 if result.returncode == 0 else stopped_step(stopped_line(result))
  assert steps_on_disk(workdir)[-1] == last
  # A run killed with SIGKILL leaves run.lock behind but not the lock: the next run goes on.
  killed = tmp_path / 'killed'
  result = launch(xla_cache, killed, *RUN, faults='kill_after_step=5')
  assert result.returncode == -9 and (killed / 'run.lock').exists()
  result = launch(xla_cache, killed, *RUN)
  assert result.returncode == 0, result.stderr[-3000:]
  assert [r['step'] for r in records(killed, 'train/loss')][-1] == 8


@pytest.mark.slow
def test_eval_reads_a_workdir_that_a_run_is_training_in(xla_cache, reference, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(reference, workdir)
  first = launch(xla_cache, workdir, *RUN, '--config.num_train_steps=300',
                 '--config.log_every_steps=50', '--config.checkpoint_every_steps=300',
                 background=True)
  deadline = time.time() + 120
  while len(records(workdir, 'train/loss')) <= 8:
    assert time.time() < deadline and first.poll() is None
    time.sleep(0.2)
  result = launch(xla_cache, workdir, *RUN, '--mode=eval')
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads(result.stdout.split('eval: ', 1)[1])['step'] == 8
  assert stop_as_preempted(first).returncode in (0, 75)


# ---- full disks, read-only workdirs: small file systems mounted for the test ----------------


@pytest.fixture
def mount(tmp_path):
  """mount(size, read_only_copy_of=None) -> a tmpfs of `size` bytes (optionally holding a
  copy of a directory, remounted read-only); skipped where the machine forbids mounting."""
  mounted = []

  def make(size, read_only_copy_of=None):
    point = tmp_path / f'mnt{len(mounted)}'
    point.mkdir()
    result = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(point)],
                            capture_output=True, text=True, check=False, timeout=60)
    if result.returncode:
      pytest.skip(f'cannot mount a file system here: {result.stderr.strip()}')
    mounted.append(point)
    if read_only_copy_of is not None:
      shutil.copytree(read_only_copy_of, point / 'run')
      subprocess.run(['mount', '-o', 'remount,ro', str(point)], check=True, timeout=60)
    return point

  yield make
  for point in mounted:
    subprocess.run(['umount', '-l', str(point)], check=False, timeout=60)


@pytest.mark.slow
def test_a_full_disk_stops_the_run_at_the_failed_save_and_the_resume_is_bitwise(
    xla_cache, mount, tmp_path):
  every_10 = [*RUN, '--config.num_train_steps=30', '--config.checkpoint_every_steps=10',
              '--config.eval_every_steps=100', '--config.log_every_steps=1']
  reference = tmp_path / 'reference'
  assert launch(xla_cache, reference, *every_10).returncode == 0
  disk = mount(8 << 20)
  workdir = disk / 'run'
  result = launch(xla_cache, workdir, *every_10, faults='fill_disk_after_step=13')
  error = one_error_line(result)
  assert 'Saving the checkpoint of step 20' in error and 'No space left on device' in error
  assert f'the last complete checkpoint is {workdir}/checkpoints/10' in error, error
  # Noticed within steps of the failed save, not at the next save (step 30).
  assert 20 <= [r['step'] for r in records(workdir, 'train/loss')][-1] < 30
  assert steps_on_disk(workdir) == [10]
  (workdir / 'disk_filler').unlink()
  result = launch(xla_cache, workdir, *every_10)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'Resumed from {workdir}/checkpoints/10.' in result.stderr
  assert_bitwise_equal(load_state(workdir, 30), load_state(reference, 30))


@pytest.mark.slow
def test_a_disk_too_small_for_one_checkpoint_fails_before_training(xla_cache, mount):
  disk = mount(1 << 20)
  result = launch(xla_cache, disk / 'run', *RUN)
  error = one_error_line(result)
  assert 'less than one checkpoint needs' in error, error
  assert not (disk / 'run').exists()


@pytest.mark.slow
def test_a_read_only_workdir_can_be_evaluated_predicted_from_and_drawn(xla_cache, reference,
                                                                       mount, tmp_path):
  workdir = mount(64 << 20, read_only_copy_of=reference) / 'run'
  result = launch(xla_cache, workdir, *RUN, '--mode=eval')
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(result.stdout.split('eval: ', 1)[1])
  assert out['step'] == 8 and out['centre/images'] == 32 and out['ten_crop/images'] == 32
  from PIL import Image
  image = tmp_path / 'a.png'
  Image.new('RGB', (40, 30), (200, 10, 10)).save(image)
  result = launch(xla_cache, workdir, *RUN, '--mode=predict', f'--images={image}')
  assert result.returncode == 0, result.stderr[-3000:]
  result = launch(xla_cache, workdir, *RUN, '--mode=figures')
  assert 'name another directory with --figures_dir' in one_error_line(result)
  result = launch(xla_cache, workdir, *RUN, '--mode=figures', f'--figures_dir={tmp_path}/f')
  assert result.returncode == 0, result.stderr[-3000:]
  assert sorted(p.name for p in (tmp_path / 'f').iterdir()) == [
      'conv1_step8.png', 'curves.png', 'figure4_neighbours_step8.png', 'figure4_top5_step8.png']
  result = launch(xla_cache, workdir, *RUN)  # training needs to write
  assert 'not writable' in one_error_line(result)


# ---- damaged step directories, reruns -------------------------------------------------------


@pytest.mark.slow
def test_a_step_directory_turned_into_a_link_loop_is_moved_aside(xla_cache, reference, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(reference, workdir)
  final = workdir / 'checkpoints' / '8'
  shutil.rmtree(final)
  os.symlink('8', final)  # a link to itself
  result = launch(xla_cache, workdir, *RUN)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'Resumed from {workdir}/checkpoints/4.' in result.stderr
  assert steps_on_disk(workdir) == [4, 8] and (workdir / 'checkpoints' / '8').is_dir()
  assert [p.name.split('-')[0] for p in (workdir / 'corrupt_checkpoints').iterdir()] == ['8']
  assert_bitwise_equal(load_state(workdir, 8), load_state(reference, 8))


@pytest.mark.slow
def test_a_rerun_of_a_finished_run_changes_nothing_and_a_resume_is_recorded(
    xla_cache, reference, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(reference, workdir)
  before = snapshot(workdir)
  result = launch(xla_cache, workdir, *RUN)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'already trained to step 8 of 8' in result.stderr
  assert "'eval/top1'" in result.stderr and 'Training steps' not in result.stderr
  assert snapshot(workdir) == before
  result = launch(xla_cache, workdir, *RUN, '--config.num_train_steps=10')
  assert result.returncode == 0, result.stderr[-3000:]
  run = json.loads((workdir / 'run.json').read_text())
  first = json.loads((reference / 'run.json').read_text())
  assert run['config'] == first['config'] and run['train_step_flops'] > 0
  assert run['start_step'] == 0 and len(run['resumes']) == 1
  resume = run['resumes'][0]
  assert resume['start_step'] == 8 and resume['host'] and resume['time']
  assert resume['config_changes'] == {'num_train_steps': [8, 10]}
