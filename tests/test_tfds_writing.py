"""Every dataset prepared through tfds (alexnet_jax/data/prepare/tfds_writing.py, storage._build):
past tfds's shuffle buffer without TensorFlow, in tfds's order, with the same bytes every
time; a full disk, a disk too small and a SIGTERM in one sentence, leaving nothing behind."""

import errno
import hashlib
import os
import pathlib
import signal
import sys

import numpy as np
import pytest
from tensorflow_datasets.core import shuffle

from alexnet_jax.data import sources
from alexnet_jax.data.prepare import builders
from alexnet_jax.data.prepare import disk
from alexnet_jax.data.prepare import tfds_writing
from alexnet_jax.errors import Stopped
from tests import helpers
from tests.test_sources import _HideTensorFlow


def md5_order(keys, salt: str) -> list:
  """tfds's shuffled order, computed here: by the md5 of the salt then the key."""
  return sorted(keys, key=lambda k: int(hashlib.md5(salt.encode() + k.encode()).hexdigest(), 16))


@pytest.fixture
def no_tensorflow(monkeypatch):
  """Importing TensorFlow fails, even where it is installed."""
  for name in [m for m in sys.modules if m == 'tensorflow' or m.startswith('tensorflow.')]:
    monkeypatch.delitem(sys.modules, name)
  monkeypatch.setattr(sys, 'meta_path', [_HideTensorFlow(f) for f in sys.meta_path])


@pytest.mark.parametrize('disable_shuffling', [False, True])
def test_past_the_buffer_the_records_come_out_complete_and_in_tfds_order(
    tmp_path, monkeypatch, disable_shuffling):
  monkeypatch.setattr(shuffle, 'MAX_MEM_BUFFER_SIZE', 1000)  # about 7 records a run
  rng = np.random.default_rng(0)
  keys = [f'n{rng.integers(10**8):08d}_{i}.JPEG' for i in range(100)]  # string keys
  data = {k: rng.bytes(int(rng.integers(100, 200))) for k in keys}
  shuffler = tfds_writing.Shuffler(tmp_path, 'train', disable_shuffling)
  for k in keys:
    shuffler.add(k, data[k])
  assert len(list(tmp_path.iterdir())) > 10  # spilled into that many sorted runs
  out = list(shuffler)
  want = sorted(keys) if disable_shuffling else md5_order(keys, 'train')
  assert [d for _, d in out] == [data[k] for k in want]
  assert list(tmp_path.iterdir()) == []  # the runs are deleted once merged


def test_imagenet_and_image_folders_past_the_buffer_without_tensorflow(
    tmp_path, monkeypatch, no_tensorflow):
  """tfds's imagenet2012 (hashed order, 12 images) and an image folder (its files' order,
  string keys), each past a buffer lowered to a few images."""
  import tensorflow_datasets as tfds
  monkeypatch.setattr(shuffle, 'MAX_MEM_BUFFER_SIZE', 20_000)
  written = helpers.make_mini_imagenet(tmp_path / 'tars', per_class=3, num_val=4)
  imagenet = sources.prepare_imagenet2012(str(tmp_path / 'tfds'), str(tmp_path / 'tars'))
  train = imagenet.as_data_source('train', decoders={'image': tfds.decode.SkipDecoding()})
  names = [train[i]['file_name'].decode() for i in range(len(train))]
  assert names == md5_order([n for n in written if not n.startswith('ILSVRC')], 'train')
  folder = helpers.make_folder(tmp_path / 'images')
  built = sources.image_folder_builder(str(tmp_path / 'images'), str(tmp_path / 'tfds'))
  train = built.as_data_source('train', decoders={'image': tfds.decode.SkipDecoding()})
  got = {train[i]['file_name'].decode(): train[i]['image'] for i in range(len(train))}
  assert list(got) == sorted(k[len('train/'):] for k in folder if k.startswith('train/'))
  assert all(got[k] == folder[f'train/{k}'] for k in got)


def first_train_shard(folder, data_dir) -> bytes:
  """The first training shard of the image folder's dataset, built in a new process."""
  import subprocess
  code = ('import os, sys\nfrom alexnet_jax.data import sources\n'
          'b = sources.image_folder_builder(sys.argv[1], sys.argv[2])\n'
          'p = sorted(f for f in os.listdir(b.data_dir) if "-train." in f)[0]\n'
          'sys.stdout.buffer.write(open(os.path.join(b.data_dir, p), "rb").read())')
  return subprocess.run([sys.executable, '-c', code, str(folder), str(data_dir)],
                        cwd=helpers.ROOT, capture_output=True, check=True, timeout=120).stdout


def test_the_same_files_give_the_same_bytes_every_time(tmp_path):
  """tfds serializes a protobuf map, whose order varies between processes: sorted here."""
  helpers.make_small_folder(tmp_path / 'images', train=3, test=1)
  shards = [first_train_shard(tmp_path / 'images', tmp_path / f'tfds{run}') for run in range(3)]
  assert shards[0] and shards[0] == shards[1] == shards[2]


def test_a_full_disk_while_tfds_writes_is_one_sentence_and_leaves_nothing(tmp_path,
                                                                          monkeypatch):
  from array_record.python import array_record_module
  real = array_record_module.ArrayRecordWriter

  class Full:
    def __init__(self, path, options):
      self.real = real(path, options)

    def write(self, record):
      raise RuntimeError(f'write() failed: {os.strerror(errno.EDQUOT)}; writing a shard')

    def close(self):
      self.real.close()

  monkeypatch.setattr(array_record_module, 'ArrayRecordWriter', Full)
  helpers.make_folder(tmp_path / 'images')
  with pytest.raises(disk.DiskFullError) as e:
    sources.image_folder_builder(str(tmp_path / 'images'), str(tmp_path / 'tfds'))
  message = str(e.value)
  assert message.startswith(f'The disk of {tmp_path / "tfds" / "image_folder"}/images_')
  assert (f'filled up while storing the image folder {tmp_path / "images"} (Disk quota '
          'exceeded) and its partial files are removed: it needs about ') in message
  assert message.endswith(' there in all; free that much, then rerun the same command to '
                          'prepare it again.') and '\n' not in message
  assert [p for p in (tmp_path / 'tfds').rglob('*') if p.is_file()] == [
      next((tmp_path / 'tfds').rglob('*.lock'))]


def test_a_disk_too_small_for_a_tfds_dataset_is_told_before_it_is_written(tmp_path,
                                                                           monkeypatch):
  monkeypatch.setattr(disk.shutil, 'disk_usage', lambda path: type(
      'Usage', (), {'free': 5_000, 'total': 10**9, 'used': 0})())
  written = helpers.make_folder(tmp_path / 'images')
  with pytest.raises(disk.DiskFullError) as e:
    sources.image_folder_builder(str(tmp_path / 'images'), str(tmp_path / 'tfds'))
  needed = sum(len(b) + 256 for b in written.values())
  assert str(e.value).startswith(f'Storing the image folder {tmp_path / "images"} needs about '
                                 f'{disk.human(needed)} in ')
  assert 'and 5.0 kB are free there' in str(e.value)


def test_sigterm_while_tfds_writes_stops_in_one_line_and_leaves_nothing(tmp_path, monkeypatch):
  generate = builders.ImageFolderNoTF._generate_examples

  def interrupted(self, split, files):
    for i, example in enumerate(generate(self, split, files)):
      if i == 2:
        os.kill(os.getpid(), signal.SIGTERM)
      yield example

  monkeypatch.setattr(builders.ImageFolderNoTF, '_generate_examples', interrupted)
  helpers.make_folder(tmp_path / 'images')
  with pytest.raises(Stopped) as e:
    sources.image_folder_builder(str(tmp_path / 'images'), str(tmp_path / 'tfds'))
  assert e.value.exit_code == 75
  assert str(e.value) == (f'SIGTERM while storing the image folder {tmp_path / "images"}: its '
                          'partial files are removed; rerun the same command to prepare it '
                          'again.')
  assert [p.name for p in pathlib.Path(tmp_path / 'tfds').rglob('*') if p.is_file()] == [
      next((tmp_path / 'tfds').rglob('*.lock')).name]
  assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # restored
