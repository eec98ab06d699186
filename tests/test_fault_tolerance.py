"""Runs that survive: SIGKILL and rerun, damaged checkpoints, another mesh, NaNs, bad input.

Every run is `launch.py` in a subprocess, as a user runs it. The runs share a persistent XLA
compilation cache (reruns of a config load its executables instead of compiling again, which is
also what makes a rerun's numbers the uninterrupted run's bit for bit on CPU).
"""

import json
import os
import pathlib
import shutil

import jax
import numpy as np
import pytest

from tests import helpers
from tests.helpers import assert_bitwise_equal
from tests.helpers import finish
from tests.helpers import load_state
from tests.helpers import one_error_line
from tests.helpers import records
from tests.helpers import snapshot
from tests.helpers import steps_on_disk

BASE = [*helpers.SMALL_MODEL, '--config.model.init_std=0.05', '--config.data.crop_pad=2',
        '--config.num_train_steps=10', '--config.log_every_steps=1']
TOWERS_1x2 = ['--config.parallelism=towers', '--config.mesh.data=1', '--config.mesh.model=2']


def launch(xla_cache, workdir, *overrides, **kwargs):
  return helpers.launch(workdir, *overrides, xla_cache=xla_cache, **kwargs)


# ---- SIGKILL and rerun ----------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_anywhere_then_rerun_is_bitwise_the_uninterrupted_run(xla_cache, tmp_path):
  overrides = [*BASE, '--config.checkpoint_every_steps=2', '--config.eval_every_steps=5',
               '--config.keep_checkpoints=1']
  reference = tmp_path / 'reference'
  result = launch(xla_cache, reference, *overrides)
  assert result.returncode == 0, result.stderr[-3000:]

  workdir = tmp_path / 'killed'
  # Between steps (step 2's asynchronous save may still be running), right after the
  # asynchronous save of step 6 has started, and between steps again; then to the end.
  resumed = []
  for faults in ('kill_after_step=3', 'kill_after_save=6', 'kill_after_step=9', ''):
    result = launch(xla_cache, workdir, *overrides, faults=faults)
    assert result.returncode == (0 if not faults else -9), (faults, result.stderr[-3000:])
    assert 'damaged' not in result.stderr, result.stderr[-3000:]
    line = [l for l in result.stderr.splitlines() if 'Resumed from' in l]
    resumed.append(int(line[0].rsplit('/', 1)[1].rstrip('.')) if line else 0)
    if faults == 'kill_after_save=6':
      # keep_checkpoints=1 and killed while 6 was being written: 4 is still there unless 6
      # completed first.
      assert steps_on_disk(workdir) in ([4], [4, 6], [6]), steps_on_disk(workdir)
  assert resumed[0] == 0 and resumed[2] in (4, 6) and resumed[3] in (6, 8), resumed
  assert steps_on_disk(workdir) == [10]
  assert not [p for p in (workdir / 'checkpoints').iterdir() if 'tmp' in p.name]

  assert_bitwise_equal(load_state(workdir, 10), load_state(reference, 10))
  for key, want in (('train/loss', list(range(1, 11))), ('eval/loss', [5, 10])):
    assert [r['step'] for r in records(workdir, key)] == want  # no gap, no duplicate
  ref_evals = [r['eval/loss'] for r in records(reference, 'eval/loss')]
  assert [r['eval/loss'] for r in records(workdir, 'eval/loss')] == ref_evals


@pytest.mark.slow
@pytest.mark.parametrize('storage', [
    pytest.param([], id='jpeg-turbo'),
    pytest.param(['--config.data.storage=raw'], id='raw', marks=pytest.mark.exhaustive),
    pytest.param(['--config.data.decoder=pillow'], id='jpeg-pillow',
                 marks=pytest.mark.exhaustive),
    pytest.param(['--config.data.decode_on=device', '--config.data.decoder=pillow'],
                 id='jpeg-device-pillow', marks=pytest.mark.exhaustive)])
def test_stream_pipeline_sigkill_then_rerun_is_bitwise_the_uninterrupted_run(xla_cache,
                                                                             tmp_path, storage):
  """The same for the stream pipeline (an image folder decoded by 2 threads, random crops,
  reflections, PCA lighting, the mean image computed at start-up): the loader restarts at
  the checkpoint's step and yields exactly the batches the uninterrupted run saw next; with
  the images stored as JPEG (Pillow or libjpeg-turbo decoding them, on the host or through
  the device-decode path's stand-in) or raw."""
  if 'turbo' in ''.join(storage):
    pytest.importorskip('simplejpeg')
  helpers.make_small_folder(tmp_path / 'images', train=16, test=4)
  overrides = [*storage, f'--config.data.folder={tmp_path / "images"}',
               f'--config.data.data_dir={tmp_path / "tfds"}', '--config.batch_size=8',
               '--config.eval_batch_size=8', '--config.num_train_steps=6',
               '--config.checkpoint_every_steps=2', '--config.eval_every_steps=3',
               '--config.log_every_steps=1', '--config.data.threads=2']
  config = 'configs/image_folder.py'
  reference = tmp_path / 'reference'
  result = launch(xla_cache, reference, *overrides, config=config)
  assert result.returncode == 0, result.stderr[-3000:]
  workdir = tmp_path / 'killed'
  result = launch(xla_cache, workdir, *overrides, config=config, faults='kill_after_step=3')
  assert result.returncode == -9, result.stderr[-3000:]
  result = launch(xla_cache, workdir, *overrides, config=config)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'Resumed from {workdir}/checkpoints/2.' in result.stderr
  assert_bitwise_equal(load_state(workdir, 6), load_state(reference, 6))
  assert [r['step'] for r in records(workdir, 'train/loss')] == list(range(1, 7))
  ref_losses = [r['train/loss'] for r in records(reference, 'train/loss')]
  assert [r['train/loss'] for r in records(workdir, 'train/loss')] == ref_losses
  stored = {p.name for p in (tmp_path / 'tfds').rglob('*_36_*')}
  assert any(name.endswith('_raw' if storage and 'raw' in storage[0] else '_q95')
             for name in stored), stored


# ---- a run on towers data=1 x model=2 that the next tests restore, damage and misuse ----------

TRAINED = [*BASE, *TOWERS_1x2, '--config.checkpoint_every_steps=4',
           '--config.eval_every_steps=4', '--config.keep_checkpoints=3']


@pytest.fixture(scope='module')
def trained(xla_cache, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('trained') / 'run'
  result = launch(xla_cache, workdir, *TRAINED, devices=2)
  assert result.returncode == 0, result.stderr[-3000:]
  assert steps_on_disk(workdir) == [4, 8, 10]
  return workdir


@pytest.mark.slow
def test_damaged_latest_checkpoint_is_skipped_for_the_previous_one(xla_cache, trained, tmp_path):
  def truncate(path):
    with open(path, 'r+b') as f:
      f.truncate(path.stat().st_size // 2)

  def overwrite(path):  # tensorstore decodes this without complaint: the fingerprint catches it
    data = bytearray(path.read_bytes())
    data[len(data) // 2:len(data) // 2 + 8] = bytes(8)
    path.write_bytes(bytes(data))

  for damage in (truncate, overwrite):
    workdir = tmp_path / damage.__name__
    shutil.copytree(trained, workdir)
    arrays = sorted((workdir / 'checkpoints/10/state').rglob('d/*'), key=lambda p: p.stat().st_size)
    damage(arrays[-1])
    result = launch(xla_cache, workdir, *TRAINED, devices=2)
    assert result.returncode == 0, result.stderr[-3000:]
    warning = [l for l in result.stderr.splitlines() if 'Skipping the damaged checkpoint' in l]
    assert len(warning) == 1 and f'{workdir}/checkpoints/10' in warning[0], result.stderr[-3000:]
    assert f'Resumed from {workdir}/checkpoints/8.' in result.stderr
    assert [p.name.split('-')[0] for p in (workdir / 'corrupt_checkpoints').iterdir()] == ['10']
    assert steps_on_disk(workdir) == [4, 8, 10]
    assert_bitwise_equal(load_state(workdir, 10), load_state(trained, 10))
    assert [r['step'] for r in records(workdir, 'train/loss')] == list(range(1, 11))


@pytest.mark.slow
@pytest.mark.parametrize('fault,cause', [('restore_eio=1', 'Input/output error'),
                                         ('restore_memory_error=1', 'out of memory')])
def test_a_restore_that_fails_for_the_machine_stops_and_moves_nothing(xla_cache, trained,
                                                                      tmp_path, fault, cause):
  """An I/O error (a lost NFS mount) or MemoryError while orbax reads the arrays is not a
  damaged checkpoint: the run stops in one sentence, and no checkpoint is skipped, moved or
  retrained from step 0, and metrics.jsonl keeps every line."""
  workdir = tmp_path / 'run'
  shutil.copytree(trained, workdir)
  before = snapshot(workdir)
  error = one_error_line(launch(xla_cache, workdir, *TRAINED, '--config.num_train_steps=14',
                                devices=2, faults=fault))
  assert f'Restoring the checkpoint {workdir}/checkpoints/10 failed ({cause}' in error, error
  assert 'with the machine; nothing was moved or retrained' in error, error
  assert snapshot(workdir) == before


@pytest.mark.slow
def test_when_no_checkpoint_restores_the_run_names_them_unless_told_to_start_again(
    xla_cache, trained, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(trained, workdir)
  for step in (4, 8, 10):  # each one truncated: evidence of damage
    arrays = sorted((workdir / f'checkpoints/{step}/state').rglob('d/*'),
                    key=lambda p: p.stat().st_size)
    with open(arrays[-1], 'r+b') as f:
      f.truncate(arrays[-1].stat().st_size // 2)
  before = snapshot(workdir)
  error = one_error_line(launch(xla_cache, workdir, *TRAINED, devices=2))
  assert f'No checkpoint in {workdir}/checkpoints restores (4: its arrays are unreadable' in error
  assert '8: its arrays' in error and '10: its arrays' in error, error
  assert 'and nothing was moved' in error and 'start_fresh_if_damaged=True' in error, error
  assert snapshot(workdir) == before
  result = launch(xla_cache, workdir, *TRAINED, '--config.start_fresh_if_damaged=True',
                  devices=2)
  assert result.returncode == 0, result.stderr[-3000:]
  moved = sorted(p.name.split('-')[0] for p in (workdir / 'corrupt_checkpoints').iterdir())
  assert moved == ['10', '4', '8', 'metrics'], moved  # the old curves kept beside them
  assert_bitwise_equal(load_state(workdir, 10), load_state(trained, 10))  # trained again


# ---- restore on another mesh, evaluation mode ------------------------------------------------


@pytest.mark.slow
def test_checkpoint_of_towers_1x2_evaluates_the_same_on_data_8_and_one_device(xla_cache, trained):
  before = snapshot(trained)
  evals = {r['step']: r for r in records(trained, 'eval/loss')}
  runs = {'data=8': launch(xla_cache, trained, *BASE, '--config.parallelism=data',
                           '--config.mesh.data=8', '--config.mesh.model=1', '--mode=eval',
                           devices=8, background=True),
          'one device': launch(xla_cache, trained, *BASE, '--mode=eval', devices=1,
                               background=True),
          'step 8': launch(xla_cache, trained, *BASE, '--mode=eval', '--checkpoint_step=8',
                           devices=1, background=True)}
  out = {}
  for name, proc in runs.items():
    result = finish(proc)
    assert result.returncode == 0, (name, result.stderr[-3000:])
    line = [l for l in result.stdout.splitlines() if l.startswith('eval: ')]
    out[name] = json.loads(line[-1][len('eval: '):])
  assert out['data=8']['mesh']['devices'] == 8 and out['one device']['mesh']['devices'] == 1
  for name, step in (('data=8', 10), ('one device', 10), ('step 8', 8)):
    assert out[name]['step'] == step
    for k in ('loss', 'top1', 'top5'):
      np.testing.assert_allclose(out[name][f'centre/{k}'], evals[step][f'eval/{k}'], rtol=1e-5)
  for k in ('loss', 'top1', 'top5'):
    np.testing.assert_allclose(out['data=8'][f'ten_crop/{k}'], out['one device'][f'ten_crop/{k}'],
                               rtol=1e-5)
  assert out['one device']['ten_crop/loss'] != out['one device']['centre/loss']
  assert snapshot(trained) == before  # evaluation writes nothing


@pytest.mark.slow
def test_training_resumed_on_another_mesh_takes_the_same_steps(xla_cache, trained, tmp_path):
  """A run started on towers 1x2 continues on data 2 x model 1 and on one device: its losses
  and final state are the uninterrupted 1x2 run's, to float32 rounding."""
  longer = [*TRAINED, '--config.num_train_steps=16']
  reference = tmp_path / 'reference'
  result = launch(xla_cache, reference, *longer, devices=2)
  assert result.returncode == 0, result.stderr[-3000:]
  want = {r['step']: r['train/loss'] for r in records(reference, 'train/loss')}
  for name, mesh, devices in (('2x1', ['--config.mesh.data=2', '--config.mesh.model=1'], 2),
                              ('1x1', ['--config.mesh.data=1', '--config.mesh.model=1'], 1)):
    workdir = tmp_path / name
    shutil.copytree(trained, workdir)
    result = launch(xla_cache, workdir, *longer, *mesh, devices=devices)
    assert result.returncode == 0, (name, result.stderr[-3000:])
    assert f'Resumed from {workdir}/checkpoints/10.' in result.stderr
    got = {r['step']: r['train/loss'] for r in records(workdir, 'train/loss')}
    assert sorted(got) == list(range(1, 17))
    np.testing.assert_allclose([got[s] for s in range(11, 17)], [want[s] for s in range(11, 17)],
                               rtol=1e-5, err_msg=name)
    resumed = json.loads((workdir / 'run.json').read_text())['resumes'][-1]
    assert resumed['mesh']['data'] == int(name[0]) and resumed['start_step'] == 10
    for a, b in zip(jax.tree.leaves(load_state(workdir, 16)['params']),
                    jax.tree.leaves(load_state(reference, 16)['params'])):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max(), err_msg=name)


# ---- NaN / Inf ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize('policy', ['stop', 'skip'])
def test_nonfinite_loss(xla_cache, tmp_path, policy):
  overrides = [*BASE, '--config.num_train_steps=5', '--config.checkpoint_every_steps=2',
               '--config.eval_every_steps=5', f'--config.on_nonfinite_loss={policy}']
  result = launch(xla_cache, tmp_path, *overrides, faults='nan_at_step=3')
  if policy == 'stop':
    error = one_error_line(result)
    assert 'at step 3;' in error and f'the last good checkpoint is {tmp_path}/checkpoints/2' \
        in error, error
    # What to change, in the same sentence.
    assert 'the updates diverged: lower learning_rate (now 0.01; try 0.001)' in error, error
    assert 'lr_warmup_steps (now 0; try 100)' in error and 'data.std=channel' in error, error
    assert steps_on_disk(tmp_path) == [2]
  else:
    assert result.returncode == 0, result.stderr[-3000:]
    skipped = {r['step']: r['train/skipped_steps'] for r in records(tmp_path, 'train/loss')}
    assert skipped == {1: 0, 2: 0, 3: 1, 4: 0, 5: 0}
    state = load_state(tmp_path, 5)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state['params']))


# ---- bad input --------------------------------------------------------------------------------


@pytest.mark.slow
def test_bad_input_fails_in_one_sentence_and_leaves_the_workdir(xla_cache, trained, tmp_path):
  """Each bad flag, config value, config file or workdir exits 1 with one `error:` sentence
  and no traceback, before anything is written."""
  workdir = tmp_path / 'run'
  shutil.copytree(trained, workdir)
  a_file = tmp_path / 'a_file'
  a_file.write_text('not a workdir')
  # root may write anywhere that is not a special file system: use /proc for it.
  unwritable = (tmp_path / 'locked' / 'run') if os.geteuid() else pathlib.Path('/proc/alexnet/run')
  if os.geteuid():
    (tmp_path / 'locked').mkdir(mode=0o500)
  (tmp_path / 'syntax.py').write_text('import ml_collections\n\ndef get_config(:\n  pass\n')
  (tmp_path / 'no_get_config.py').write_text('import ml_collections\n\ndef config():\n'
                                             '  return ml_collections.ConfigDict()\n')
  (tmp_path / 'raises.py').write_text('def get_config():\n  return 1 / 0\n')
  empty = tmp_path / 'empty'
  empty.mkdir()
  bomb = tmp_path / 'bomb.png'
  bomb.write_bytes(helpers.bomb_png())
  synthetic = 'configs/synthetic.py'
  cases = {  # name: (workdir, extra flags, expected in the error line, config file)
      'unknown field': (workdir, ['--config.learning_ratee=0.1'],
                        '--config.learning_ratee is not a config field (did you mean '
                        'learning_rate?)', synthetic),
      'wrong type': (workdir, ['--config.batch_size=sixteen'], '--config.batch_size=sixteen',
                     synthetic),
      'negative lr': (workdir, ['--config.learning_rate=-0.1'],
                      'learning_rate=-0.1 must be positive.', synthetic),
      'infinite lr': (workdir, ['--config.learning_rate=inf'],
                      'learning_rate=inf must be a finite number.', synthetic),
      'zero batch': (workdir, ['--config.batch_size=0'], 'batch_size=0 must be at least 1.',
                     synthetic),
      'no classes': (workdir, ['--config.data.num_classes=0'],
                     'data.num_classes=0 must be the number of classes', synthetic),
      'one class': (workdir, ['--config.data.num_classes=1'],
                    'data.num_classes=1 must be the number of classes', synthetic),
      'negative seed': (workdir, ['--config.seed=-1'], 'seed=-1 must be in', synthetic),
      'four convolutions': (workdir, ['--config.model.conv_features=(8,16,24,24)'],
                            'must be 5 positive numbers', synthetic),
      'even kernels': (workdir, ['--config.model.conv_kernels=(3,4,3,3,3)'],
                       'must be odd after conv1', synthetic),
      'two channels': (workdir, ['--config.data.channels=2'], 'data.channels=2 must be 1',
                       synthetic),
      'bad boundaries': (workdir, ['--config.lr_boundaries=(0.5,2.0)'],
                         'must be increasing fractions', synthetic),
      'a stray argument': (workdir, ['extra'], 'unexpected arguments: extra', synthetic),
      'missing config file': (workdir, [], 'there is no such file', 'configs/nope.py'),
      'config syntax error': (workdir, [], 'invalid syntax at line 3', tmp_path / 'syntax.py'),
      'config without get_config': (workdir, [], 'defines no get_config()',
                                    tmp_path / 'no_get_config.py'),
      'config that raises': (workdir, [], 'ZeroDivisionError', tmp_path / 'raises.py'),
      'workdir is a file': (a_file, [], 'is a file, not a directory.', synthetic),
      # (/proc, for root, whom permissions do not stop, fails the disk-space check first.)
      'workdir not writable': (unwritable, [], 'is not writable' if os.geteuid() else
                               'MiB free, less than one checkpoint needs', synthetic),
      'resume changes shapes': (workdir, ['--config.model.fc_features=64'],
                                "changes the model's shapes (model.fc_features=64 (the "
                                'checkpoint has 32))', synthetic),
      'eval without checkpoints': (empty, ['--mode=eval'], 'No restorable checkpoint',
                                   synthetic),
      'eval of a missing step': (workdir, ['--mode=eval', '--checkpoint_step=3'],
                                 'There is no checkpoint for step 3', synthetic),
      'predict a missing image': (workdir, ['--mode=predict', f'--images={tmp_path}/no.png'],
                                  'cannot read', synthetic),
      'predict a decompression bomb': (workdir, ['--mode=predict', f'--images={bomb}'],
                                       'as an image (it is 1,600,000,000 pixels, more than the '
                                       '67,108,864 that are decoded; resize it first)',
                                       synthetic),
      'an empty image name': (workdir, ['--mode=predict', f'--images={bomb},'],
                              'has an empty file name', synthetic),
      'an empty figures_dir': (workdir, ['--mode=figures', '--figures_dir='],
                               '--figures_dir is empty', synthetic),
      'an empty data_dir': (workdir, ['--config.data.data_dir='], 'data.data_dir is empty',
                            synthetic),
      'a data_dir that is a file': (workdir, [f'--config.data.data_dir={a_file}'],
                                    'is a file, not a directory of datasets', synthetic),
  }
  before = {p: snapshot(p) for p in (workdir, a_file, unwritable, empty)}
  def flags(extra):  # a flag given twice would be appended to for tuples: replace it
    names = {e.split('=')[0] for e in extra}
    return [a for a in TRAINED if a.split('=')[0] not in names] + extra

  procs = {name: launch(xla_cache, path, *flags(extra), devices=2, config=config,
                        background=True)
           for name, (path, extra, _, config) in cases.items()}
  for name, proc in procs.items():
    error = one_error_line(finish(proc))
    assert cases[name][2] in error, (name, error)
    assert error.count('. ') == 0, (name, error)  # one sentence
  assert {p: snapshot(p) for p in before} == before


@pytest.mark.slow
def test_an_empty_workdir_fails_in_one_sentence_and_writes_nothing(xla_cache):
  """`--workdir=$RUN` with RUN unset: not a run in the current directory (the checkout)."""
  before = sorted(p.name for p in helpers.ROOT.iterdir())
  for workdir in ('', ' '):
    error = one_error_line(launch(xla_cache, workdir, *BASE))
    assert error == ("error: --workdir is empty (an unset shell variable?); name the run's "
                     'directory, such as --workdir=runs/x.'), error
  assert sorted(p.name for p in helpers.ROOT.iterdir()) == before
