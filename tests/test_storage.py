"""Prepared datasets on disk (alexnet_jax/data/prepare/storage.py): a truncated copy rebuilt from its
source files or refused in one sentence, a damaged chunk found while training, two jobs that
prepare one data_dir at once, and file systems without locks."""

import errno
import fcntl
import os
import threading
import time

import numpy as np
import pytest

from alexnet_jax.checkpoint import workdir as workdir_lib
from alexnet_jax.data import sources
from alexnet_jax.data.prepare import storage
from alexnet_jax.errors import NoFileLocksError
from tests import helpers
from tests.helpers import one_error_line
from tests.test_sources import idx_dir  # noqa: F401 (a fixture)


def shard(builder, split='train'):
  return os.fspath(builder.info.splits[split].filepaths[0])


def truncate(path):
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)


def test_a_truncated_dataset_is_rebuilt_from_its_source_files_and_says_so(
    idx_dir, tmp_path, caplog):  # noqa: F811
  source, arrays = idx_dir
  builder = sources.fashion_mnist_builder(str(tmp_path / 'tfds'), str(source))
  truncate(shard(builder))
  with caplog.at_level('WARNING'):
    again = sources.fashion_mnist_builder(str(tmp_path / 'tfds'), str(source))
  warning = [r.message for r in caplog.records if 'is damaged' in r.message]
  assert len(warning) == 1 and 'preparing it again from its source files' in warning[0]
  assert 'holds 0 records, not the 30' in warning[0] or 'cannot be read' in warning[0]
  images, labels = sources.load_arrays(again, 'train')
  np.testing.assert_array_equal(images[..., 0], arrays['train'][0])
  np.testing.assert_array_equal(labels, arrays['train'][1])
  aside = [p.name for p in (tmp_path / 'tfds/fashion_mnist_idx/subset30x12').iterdir()
           if 'damaged' in p.name]
  assert len(aside) == 1  # the damaged copy is kept, not deleted


def test_a_damaged_dataset_without_its_sources_is_refused_in_one_sentence(idx_dir, tmp_path):  # noqa: F811
  source, _ = idx_dir
  builder = sources.fashion_mnist_builder(str(tmp_path / 'tfds'), str(source))
  storage.check(builder)  # sound
  os.remove(shard(builder, 'test'))
  with pytest.raises(storage.DamagedDatasetError) as e:
    storage.check(builder)
  message = str(e.value)
  assert str(builder.data_dir) in message and 'test split is missing' in message
  assert 'delete that directory to prepare it again' in message and '\n' not in message


class _SlowBuilder:
  """A builder whose preparation takes a while and is counted (`builds`)."""

  builds = []

  def __init__(self, root):
    self.data_dir = os.path.join(root, 'slow', 'config', '1.0.0')
    self.info = type('Info', (), {'splits': {}, 'dataset_size': 0})()

  def is_prepared(self):
    return os.path.isdir(self.data_dir)

  def download_and_prepare(self, download_dir=None):
    del download_dir  # as tfds's: where downloads would go
    time.sleep(0.5)
    tmp = self.data_dir + '.incomplete'
    os.makedirs(tmp)
    os.rename(tmp, self.data_dir)  # fails if another process built it meanwhile
    _SlowBuilder.builds.append(threading.get_ident())


def test_two_preparers_of_one_data_dir_build_it_once(tmp_path, caplog):
  _SlowBuilder.builds = []
  errors = []

  def prepare():
    try:
      storage.ready(lambda: _SlowBuilder(str(tmp_path)), 'the slow dataset')
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)

  with caplog.at_level('INFO'):
    threads = [threading.Thread(target=prepare) for _ in range(2)]
    for t in threads:
      t.start()
    for t in threads:
      t.join()
  assert errors == [] and len(_SlowBuilder.builds) == 1
  assert any('Another process is preparing the slow dataset' in r.message
             for r in caplog.records)


def test_a_file_system_without_locks_is_refused_unless_allowed(tmp_path, monkeypatch, caplog):
  def no_locks(fd, op):
    raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

  (tmp_path / 'run').mkdir()
  (tmp_path / 'run' / 'run.lock').write_text('{}')
  monkeypatch.setattr(fcntl, 'flock', no_locks)
  lock = workdir_lib.RunLock(str(tmp_path / 'run'))
  for take in (lock.check_free, lock.acquire):
    with pytest.raises(NoFileLocksError, match='gives no file locks .*No locks available.*'
                       'allow_no_file_locks=True'):
      take()
  with pytest.raises(NoFileLocksError):
    storage.ready(lambda: _SlowBuilder(str(tmp_path)), 'the slow dataset')
  with caplog.at_level('WARNING'):
    allowed = workdir_lib.RunLock(str(tmp_path / 'run'), allow_no_locks=True)
    allowed.check_free()
    with allowed:
      pass
    storage.ready(lambda: _SlowBuilder(str(tmp_path)), 'the slow dataset', allow_no_locks=True)
  assert sum('No file locks' in r.message for r in caplog.records) == 3


# ---- end to end --------------------------------------------------------------------------------

FOLDER_RUN = ['--config.batch_size=8', '--config.eval_batch_size=8',
              '--config.num_train_steps=4', '--config.eval_every_steps=4',
              '--config.log_every_steps=2', '--config.data.threads=2']


@pytest.mark.slow
def test_two_jobs_prepare_one_data_dir_at_once_and_both_train(tmp_path):
  """Two runs (their own workdirs) start together on a fresh data_dir, as two jobs share
  ~/tensorflow_datasets: the folder and its images stored at 36x36 are prepared once."""
  helpers.make_small_folder(tmp_path / 'images', train=16, test=4)
  overrides = [*FOLDER_RUN, f'--config.data.folder={tmp_path / "images"}',
               f'--config.data.data_dir={tmp_path / "tfds"}']
  procs = [helpers.launch(tmp_path / f'run{i}', *overrides, config='configs/image_folder.py',
                          background=True) for i in range(2)]
  results = [helpers.finish(p) for p in procs]
  for r in results:
    assert r.returncode == 0, r.stderr[-3000:]
  logs = results[0].stderr + results[1].stderr
  assert logs.count('Storing the image folder') == 1, logs[-3000:]
  assert logs.count('Storing image_folder at 36x36') == 1, logs[-3000:]
  # Whether the second job waited or found the data ready depends on when it started: both are
  # right. The waiting itself is tested, deterministically, by the slow-builder test above.


@pytest.mark.slow
def test_a_damaged_chunk_read_while_training_stops_the_run_in_one_sentence(tmp_path):
  """Bytes overwritten inside the stored 36x36 images (the shard's footer intact, so it
  opens): the run stops in one sentence at the first read of them, and trains on nothing
  it could not read."""
  helpers.make_small_folder(tmp_path / 'images', train=16, test=4)
  overrides = [*FOLDER_RUN, f'--config.data.folder={tmp_path / "images"}',
               f'--config.data.data_dir={tmp_path / "tfds"}']
  first = helpers.launch(tmp_path / 'run', *overrides, config='configs/image_folder.py')
  assert first.returncode == 0, first.stderr[-3000:]
  stored = next(p for p in (tmp_path / 'tfds').rglob('prepared_images-train.array_record*'))
  data = bytearray(stored.read_bytes())
  data[len(data) // 10:len(data) // 10 + 16] = bytes(16)  # inside the first chunk's records
  stored.write_bytes(bytes(data))
  error = one_error_line(helpers.launch(tmp_path / 'again', *overrides,
                                        config='configs/image_folder.py'))
  assert f'of the prepared dataset in {stored.parent} failed' in error, error
  assert 'it is damaged; delete that directory' in error, error
  assert not (tmp_path / 'again' / 'checkpoints').exists()
