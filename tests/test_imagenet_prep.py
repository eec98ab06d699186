"""ImageNet from its tars to the store in one parallel pass (alexnet_jax/data/prepare/imagenet_prep.py):
the store is the one tfds's builder and the serial store loop make (bytes and order), whatever
the number of processes; interrupted, killed or stopped by a full disk, a rerun finishes it
from the finished shards, equal to an uninterrupted one; nothing but the store is left; the
progress lines and the disk's sentences."""

import errno
import logging
import os
import pathlib

from array_record.python import array_record_module
import numpy as np
import pytest

from alexnet_jax.data import sources
from alexnet_jax.data.prepare import disk
from alexnet_jax.data.prepare import imagenet_prep
from alexnet_jax.data.prepare import shard_writer
from alexnet_jax.errors import Stopped
from tests import helpers
from tests import prep_faults

SIZE = 32  # the store's images: small, so that the tests are quick
SETTINGS = shard_writer.Settings(SIZE, 95, 'centre_crop', 1000, decoder='turbo')
SHARD = 2  # images a shard: 6 training and 3 validation shards


def records(builder) -> dict[str, list[bytes]]:
  """Every record of each split of a prepared store, in order."""
  out = {}
  for split in builder.info.splits:
    paths = sorted(pathlib.Path(builder.data_dir).glob(f'*-{split}.array_record-*'))
    out[split] = []
    for path in paths:
      reader = array_record_module.ArrayRecordReader(str(path))
      out[split] += reader.read_all()
      reader.close()
  return out


def tree(root) -> list[str]:
  return sorted(str(p.relative_to(root)) for p in pathlib.Path(root).rglob('*') if p.is_file())


@pytest.fixture(scope='module')
def tars(tmp_path_factory):
  """The official layout, with tfds's CMYK and PNG files: 12 training images, 5 validation."""
  directory = tmp_path_factory.mktemp('tars')
  helpers.make_mini_imagenet(directory, per_class=3, num_val=5)
  return directory


@pytest.fixture(scope='module')
def reference(tars, tmp_path_factory):
  """The store made as before: tfds's imagenet2012 builder, then the serial store loop."""
  data_dir = tmp_path_factory.mktemp('serial')
  official = sources.prepare_imagenet2012(str(data_dir), str(tars))
  return records(sources.prepare_resized(official, str(data_dir), SIZE))


def prepare(tars, data_dir, processes=2, **kwargs):
  return imagenet_prep.store(str(data_dir), str(tars), SETTINGS, processes=processes,
                             shard_images=SHARD, **kwargs)


def test_the_store_is_tfds_s_and_the_same_on_one_or_two_processes(tars, reference, tmp_path):
  import tensorflow_datasets as tfds
  for n in (1, 2):
    store = prepare(tars, tmp_path / f'p{n}', processes=n)
    assert records(store) == reference, n  # the same bytes, in tfds's order
    assert store.info.splits['train'].shard_lengths == [2] * 6
  # Read as any prepared dataset is: tfds's own reader, the checks, the data source.
  read = sources._construct(tfds.builder_from_directory, os.fspath(store.data_dir))
  assert read.info.splits['validation'].num_examples == 5
  source = sources.split_source(store, 'train', decode_images=True)
  assert source[0]['image'].shape == (SIZE, SIZE, 3)
  # Nothing but the store and its lock is left; the tars are as they were.
  assert tree(tars) == ['ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar']
  root = 'prepared_images/imagenet2012_5_1_0_32_q95/'
  assert tree(tmp_path / 'p2') == sorted(
      [root + '1.1.0.lock'] + [root + '1.1.0/' + f for f in (
          'dataset_info.json', 'features.json', 'label.labels.txt', 'pixel_statistics.npz',
          *[f'prepared_images-train.array_record-{i:05d}-of-00006' for i in range(6)],
          *[f'prepared_images-validation.array_record-{i:05d}-of-00003' for i in range(3)])])


def test_keep_originals_also_keeps_tfds_s_full_size_copy_and_the_tars_may_go(
    tars, reference, tmp_path):
  store = prepare(tars, tmp_path, keep_originals=True)
  assert (tmp_path / 'imagenet2012' / '5.1.0' / 'dataset_info.json').is_file()
  assert sorted(p.name for p in tmp_path.iterdir()) == ['imagenet2012', 'prepared_images']
  assert records(store) == reference
  # Once stored, the store is read without the tars (which may be deleted).
  again = imagenet_prep.store(str(tmp_path), None, SETTINGS)
  assert again.data_dir == store.data_dir and records(again) == reference


def test_sigterm_stops_after_the_shards_in_flight_and_a_rerun_finishes_them(
    tars, reference, tmp_path, caplog):
  with pytest.raises(Stopped) as e:
    prepare(tars, tmp_path, processes=1, worker_setup=prep_faults.SignalAfterShard(1))
  assert e.value.exit_code == 75
  message = str(e.value)
  assert message.startswith('SIGTERM: stopped storing imagenet2012 at 32x32 with ')
  assert 'rerun the same command to continue from them' in message and '\n' not in message
  work = next(tmp_path.rglob('1.1.0.incomplete'))
  done = sorted(p.name for p in work.glob('*-train.array_record-*'))
  assert 2 <= len(done) < 6  # shard 1 and those in flight, not the rest
  assert not [p for p in work.iterdir() if shard_writer.PARTIAL in p.name]
  before = {n: os.stat(work / n).st_ino for n in done}
  caplog.set_level(logging.INFO)
  store = prepare(tars, tmp_path, processes=2)
  assert records(store) == reference
  assert f'({len(done) * SHARD} done before)' in caplog.text  # the rerun skipped them
  for name, inode in before.items():  # the very files, not written again
    assert os.stat(pathlib.Path(store.data_dir) / name).st_ino == inode


def test_what_a_sigkill_leaves_is_finished_by_a_rerun(tars, reference, tmp_path):
  """A killed preparation leaves finished shards (in the manifest, or not yet: killed
  between a shard's rename and the manifest's update) and the partial files of the shards
  in flight: the rerun redoes exactly what the manifest does not list."""
  import json
  with pytest.raises(Stopped):
    prepare(tars, tmp_path, processes=1, worker_setup=prep_faults.SignalAfterShard(1))
  work = next(tmp_path.rglob('1.1.0.incomplete'))
  manifest = json.loads((work / 'manifest.json').read_text())
  dropped = sorted(manifest['shards'])[-1]  # its file is there, the manifest forgets it
  del manifest['shards'][dropped]
  (work / 'manifest.json').write_text(json.dumps(manifest))
  index = int(dropped.split('-')[1])
  shard = work / f'prepared_images-train.array_record-{index:05d}-of-00006'
  shard.write_bytes(b'cut short by the kill')
  partial = f'prepared_images-train.array_record-00005-of-00006{shard_writer.PARTIAL}-99'
  (work / partial).write_bytes(b'half a shard')
  store = prepare(tars, tmp_path)
  assert records(store) == reference
  assert not [p for p in pathlib.Path(store.data_dir).iterdir()
              if shard_writer.PARTIAL in p.name]


@pytest.mark.parametrize('code, words', [(errno.ENOSPC, 'No space left on device'),
                                         (errno.EDQUOT, 'Disk quota exceeded')])
def test_a_disk_that_fills_midway_ends_in_one_sentence_and_the_rerun_continues(
    tars, reference, tmp_path, code, words):
  with pytest.raises(disk.DiskFullError) as e:
    prepare(tars, tmp_path, worker_setup=prep_faults.DiskFullAtShard(3, code))
  message = str(e.value)
  work = next(tmp_path.rglob('1.1.0.incomplete'))
  assert message.startswith(f'The disk of {work} filled up while storing imagenet2012 at '
                            f'32x32 ({words}): about ')
  assert message.endswith('more are needed there; free that much, then rerun the same '
                          'command to continue from what is stored.') and '\n' not in message
  assert records(prepare(tars, tmp_path)) == reference


def test_a_disk_too_small_is_told_before_anything_is_written(tars, tmp_path, monkeypatch):
  monkeypatch.setattr(disk.shutil, 'disk_usage', lambda path: type(
      'Usage', (), {'free': 2_000, 'total': 10**9, 'used': 0})())
  with pytest.raises(disk.DiskFullError) as e:
    prepare(tars, tmp_path)
  message = str(e.value)
  assert message.startswith('Storing imagenet2012 at 32x32 needs about ')
  assert 'and 2.0 kB are free there; free ' in message and '\n' not in message
  assert not list(tmp_path.rglob('*.incomplete')) and not list(tmp_path.rglob('*array_record*'))


def test_progress_lines_with_an_eta_reach_a_log_that_is_not_a_terminal(tars, tmp_path,
                                                                       monkeypatch, caplog):
  monkeypatch.setenv('ALEXNET_JAX_PROGRESS_SECONDS', '0')
  caplog.set_level(logging.INFO)
  prepare(tars, tmp_path)
  lines = [r.getMessage() for r in caplog.records]
  assert 'imagenet2012 at 32x32, indexing the class tars: 4 class tars to do.' in lines
  train = [l for l in lines if l.startswith('imagenet2012 at 32x32, train: ') and 'ETA' in l]
  assert train[-1].startswith('imagenet2012 at 32x32, train: 12 / 12 images (100.0%), ')
  assert [int(l.split(': ')[1].split(' / ')[0]) for l in train] == [2, 4, 6, 8, 10, 12]
  assert any(l.startswith('imagenet2012 at 32x32, validation: 5 / 5 images') for l in lines)


def test_the_full_training_sets_statistics_come_out_of_the_same_pass(tars, tmp_path):
  """Stored raw, the store's pixels are exactly those summed: the mean image, the mean
  square and the PCA against float64 NumPy over the stored training images."""
  import dataclasses
  store = imagenet_prep.store(str(tmp_path), str(tars),
                              dataclasses.replace(SETTINGS, quality=0), processes=2,
                              shard_images=SHARD)
  train = sources.split_source(store, 'train')
  images = np.stack([np.frombuffer(train[i]['image'], np.uint8).reshape(SIZE, SIZE, 3)
                     for i in range(len(train))]).astype(np.float64)
  with np.load(pathlib.Path(store.data_dir) / imagenet_prep.STATISTICS) as f:
    stats = {k: f[k] for k in f.files}
  assert int(stats['count']) == 12 and int(stats['bad']) == 0
  np.testing.assert_allclose(stats['mean'], images.mean(axis=0), rtol=1e-6)
  pixels = images.reshape(-1, 3)
  np.testing.assert_allclose(stats['mean_square'], (pixels ** 2).mean(axis=0), rtol=1e-12)
  cov = np.cov(pixels / 255, rowvar=False, bias=True)
  eigval, eigvec = np.linalg.eigh(cov)
  np.testing.assert_allclose(stats['eigval'], eigval[::-1], rtol=1e-9, atol=1e-12)
  for i in range(3):  # up to sign
    assert abs(abs(stats['eigvec'][:, i] @ eigvec[:, 2 - i]) - 1) < 1e-9


SMALL_IMAGENET = ['--config.data.image_size=32', '--config.data.prepared_size=36',
                  '--config.data.crop_size=32', *[a for a in helpers.SMALL_MODEL if (
                      'num_classes' not in a and 'image_size' not in a and 'batch' not in a)],
                  '--config.batch_size=4', '--config.eval_batch_size=4',
                  '--config.num_train_steps=2', '--config.eval_every_steps=2']


@pytest.mark.exhaustive
def test_the_readme_command_stops_on_sigterm_in_one_line_and_the_rerun_trains(tars, tmp_path):
  """configs/alexnet.py on the tars (a small network; the 1,000 classes of ILSVRC-2012, 4 of
  them with images): SIGTERM while the store is written ends the run in one line with exit
  75; the same command continues the store from its finished shards and trains."""
  common = [f'--config.data.manual_dir={tars}', f'--config.data.data_dir={tmp_path / "tfds"}',
            *SMALL_IMAGENET]
  stopped = helpers.launch(tmp_path / 'run', *common, config='configs/alexnet.py',
                           faults='term_at_shard=1')
  assert stopped.returncode == 75, stopped.stderr[-3000:]
  last = stopped.stderr.strip().splitlines()[-1]
  assert last.startswith('stopped: SIGTERM: stopped storing imagenet2012 at 36x36 with '), last
  assert 'Traceback' not in stopped.stderr
  assert not (tmp_path / 'run' / 'checkpoints').exists()
  result = helpers.launch(tmp_path / 'run', *common, config='configs/alexnet.py',
                          faults='term_at_shard=99',  # never: the same shards of 2 images
                          env={'ALEXNET_JAX_PROGRESS_SECONDS': '0'})
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'done before)' in result.stderr  # the finished shards were kept
  assert 'train: 12 / 12 images (100.0%)' in result.stderr  # the log is a pipe, not a tty
  assert 'Using the pixel statistics of all 12 training images' in result.stderr
  assert helpers.records(tmp_path / 'run', 'eval/top1')[-1]['eval/images'] == 5
  assert tree(tars) == ['ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar']
  assert [p for p in tree(tmp_path / 'tfds') if not p.endswith('.lock')] == [
      p for p in tree(tmp_path / 'tfds') if '/1.1.0/' in p]  # only the store


def test_a_damaged_tar_is_one_sentence(tars, tmp_path):
  from alexnet_jax.errors import BadDataError
  (tmp_path / 'tars').mkdir()
  train = (tars / 'ILSVRC2012_img_train.tar').read_bytes()
  (tmp_path / 'tars' / 'ILSVRC2012_img_train.tar').write_bytes(train[:len(train) // 3])
  (tmp_path / 'tars' / 'ILSVRC2012_img_val.tar').write_bytes(
      (tars / 'ILSVRC2012_img_val.tar').read_bytes())
  with pytest.raises(BadDataError) as e:
    prepare(tmp_path / 'tars', tmp_path / 'tfds')
  assert 'ILSVRC2012_img_train.tar' in str(e.value) and '\n' not in str(e.value)
  assert str(e.value).endswith('download or copy it again.')


def test_a_progress_line_by_hand(caplog):
  from alexnet_jax.data.prepare import progress
  now = [100.0]
  p = progress.Progress('imagenet2012 at 256x256', every=15, clock=lambda: now[0])
  caplog.set_level(logging.INFO)
  p.phase('train', 1_281_167, done=281_167)  # resumed: those are not in the rate
  now[0] += 10
  p.advance(20_000)  # under 15 s: no line yet
  now[0] += 10
  p.advance(20_000)
  assert caplog.records[-1].getMessage() == (
      'imagenet2012 at 256x256, train: 321,167 / 1,281,167 images (25.1%), 2,000 img/s, '
      'ETA 8 min 00 s')
  assert progress.duration(7_500) == '2 h 05 min' and progress.duration(12.4) == '12 s'
