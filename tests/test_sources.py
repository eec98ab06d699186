"""Where the images come from (alexnet_jax/data/sources.py, builders.py): Fashion-MNIST idx
files, image folders and imagenet2012's manual download as tfds datasets, built and read
without TensorFlow; missing data in one sentence."""

import gzip
import io
import sys

import numpy as np
import pytest

from alexnet_jax.data import sources
from alexnet_jax.data import transforms
from alexnet_jax.data.prepare import builders
from alexnet_jax.errors import BadDataError
from alexnet_jax.errors import DatasetNotFoundError
from tests import helpers

# ---- Fashion-MNIST ------------------------------------------------------------------------


@pytest.fixture
def idx_dir(tmp_path):
  rng = np.random.default_rng(0)
  arrays = {'train': (rng.integers(0, 256, (30, 28, 28)), rng.integers(0, 10, 30)),
            'test': (rng.integers(0, 256, (12, 28, 28)), rng.integers(0, 10, 12))}
  for split, (images_name, labels_name) in builders.FASHION_MNIST_FILES.items():
    helpers.write_idx(tmp_path / images_name, arrays[split][0])
    helpers.write_idx(tmp_path / labels_name, arrays[split][1])
  return tmp_path, arrays


def test_read_idx_hand_made_file(tmp_path):
  path = tmp_path / 'x.gz'
  with gzip.open(path, 'wb') as f:  # magic 0x00000803: uint8, 3 dims; 2 x 2 x 3
    f.write(bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(12)))
  np.testing.assert_array_equal(builders.read_idx(path), np.arange(12).reshape(2, 2, 3))


def test_tfds_builder_round_trips_idx_files(idx_dir, tmp_path):
  source, arrays = idx_dir
  builder = sources.fashion_mnist_builder(str(tmp_path / 'tfds'), str(source))
  assert builder.builder_config.name == 'subset30x12'
  for split in ('train', 'test'):
    images, labels = sources.load_arrays(builder, split)
    np.testing.assert_array_equal(images[..., 0], arrays[split][0])  # PNG is lossless
    np.testing.assert_array_equal(labels, arrays[split][1])
  assert sources.class_names(builder)[9] == 'Ankle boot'


def test_missing_fashion_mnist_says_where_to_put_files(tmp_path, monkeypatch):
  monkeypatch.setattr(sources, 'DEBIAN_FASHION_MNIST', tmp_path / 'no-debian')
  monkeypatch.setattr(sources, 'EMBEDDED_FASHION_MNIST', tmp_path / 'no-embedded')
  with pytest.raises(DatasetNotFoundError) as e:
    sources.fashion_mnist_builder(str(tmp_path / 'tfds'), str(tmp_path / 'empty'))
  message = str(e.value)
  assert 'train-images-idx3-ubyte.gz' in message and 'data.manual_dir' in message
  assert message.count('.') >= 1 and '\n' not in message


def test_missing_imagenet_names_the_tars(tmp_path):
  with pytest.raises(DatasetNotFoundError, match='ILSVRC2012_img_train.tar'):
    sources.builder_for('imagenet2012', str(tmp_path), str(tmp_path))


def test_embedded_subset_is_real_fashion_mnist():
  counts = sources.idx_counts(sources.EMBEDDED_FASHION_MNIST)
  assert counts == {'train': 10_000, 'test': 2_000}
  labels = builders.read_idx(sources.EMBEDDED_FASHION_MNIST / 't10k-labels-idx1-ubyte.gz')
  assert np.bincount(labels).min() > 150  # all ten classes


# ---- image folders --------------------------------------------------------------------------


def test_folder_of_class_subfolders_round_trips(tmp_path):
  written = helpers.make_folder(tmp_path / 'images')
  builder = sources.image_folder_builder(str(tmp_path / 'images'), str(tmp_path / 'tfds'))
  assert sources.class_names(builder) == ('cat', 'dog')
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {'train': 6, 'test': 4}
  import tensorflow_datasets as tfds
  source = builder.as_data_source('train', decoders={'image': tfds.decode.SkipDecoding()})
  for i in range(len(source)):
    ex = source[i]
    name = ex['file_name'].decode()
    assert ex['image'] == written[f'train/{name}']  # stored byte for byte (PNG and JPEG)
    assert sources.class_names(builder)[ex['label']] == name.split('/')[0]
    assert transforms.decode(ex['image'], 32).shape == (32, 32, 3)
  # Prepared once: a second call reads it; a changed folder is a new dataset.
  again = sources.image_folder_builder(str(tmp_path / 'images'), str(tmp_path / 'tfds'))
  assert again.data_dir == builder.data_dir
  helpers.photo().save(tmp_path / 'images' / 'train' / 'dog' / 'new.jpg')
  changed = sources.image_folder_builder(str(tmp_path / 'images'), str(tmp_path / 'tfds'))
  assert changed.data_dir != builder.data_dir and changed.info.splits['train'].num_examples == 7


def test_building_and_reading_leave_nothing_in_the_temp_dir(idx_dir, tmp_path, monkeypatch):
  # tfds 4.9 makes an empty temp dir for every builder constructed before its dataset is
  # prepared and never removes it (hundreds piled up in /tmp during this project).
  import tempfile
  temp = tmp_path / 'temp'
  temp.mkdir()
  monkeypatch.setattr(tempfile, 'tempdir', str(temp))
  source, _ = idx_dir
  helpers.make_folder(tmp_path / 'images')
  for _ in range(2):  # built, then read
    sources.fashion_mnist_builder(str(tmp_path / 'tfds'), str(source))
    sources.image_folder_builder(str(tmp_path / 'images'), str(tmp_path / 'tfds'))
  with pytest.raises(DatasetNotFoundError):
    sources.builder_for('mnist', str(tmp_path / 'tfds'), None)
  assert sorted(p.name for p in temp.iterdir()) == []


def test_missing_or_empty_folder_says_where_to_put_images(tmp_path):
  with pytest.raises(DatasetNotFoundError, match='train/cat/1.jpg'):
    sources.image_folder_builder(str(tmp_path / 'nowhere'), str(tmp_path / 'tfds'))
  (tmp_path / 'empty' / 'train' / 'cat').mkdir(parents=True)
  with pytest.raises(DatasetNotFoundError, match='No images'):
    sources.image_folder_builder(str(tmp_path / 'empty'), str(tmp_path / 'tfds'))


def test_images_prepared_once_at_a_fixed_size(tmp_path):
  import numpy as np
  import tensorflow_datasets as tfds
  helpers.make_folder(tmp_path / 'images')
  source = sources.image_folder_builder(str(tmp_path / 'images'), str(tmp_path / 'tfds'))
  prepared = sources.prepare_resized(source, str(tmp_path / 'tfds'), size=48, quality=95)
  assert {k: v.num_examples for k, v in prepared.info.splits.items()} == {'train': 6,
                                                                         'test': 4}
  assert sources.class_names(prepared) == ('cat', 'dog')
  raw = source.as_data_source('train', decoders={'image': tfds.decode.SkipDecoding()})
  small = prepared.as_data_source('train')
  for i in range(len(raw)):  # same order, same labels; the image is the prepared one
    assert small[i]['label'] == raw[i]['label']
    want = transforms.decode(raw[i]['image'], 48).astype(np.float32)
    got = small[i]['image'].astype(np.float32)
    assert got.shape == (48, 48, 3) and np.abs(got - want).mean() < 3  # JPEG q95
  again = sources.prepare_resized(source, str(tmp_path / 'tfds'), size=48, quality=95)
  assert again.data_dir == prepared.data_dir


def test_storing_once_leaves_out_undecodable_files_up_to_the_limit(tmp_path, caplog):
  helpers.make_folder(tmp_path / 'images')
  (tmp_path / 'images' / 'train' / 'dog' / '1.jpg').write_bytes(b'not a jpeg')
  source = sources.image_folder_builder(str(tmp_path / 'images'), str(tmp_path / 'tfds'))
  with pytest.raises(BadDataError, match='max_bad_records=0.*dog/1.jpg'):
    sources.prepare_resized(source, str(tmp_path / 'strict'), size=24, max_bad_records=0)
  with caplog.at_level('WARNING'):
    prepared = sources.prepare_resized(source, str(tmp_path / 'tfds'), size=24,
                                        max_bad_records=1)
  assert prepared.info.splits['train'].num_examples == 5  # 6 files, one left out
  assert any('dog/1.jpg' in r.message for r in caplog.records)


# ---- imagenet2012 ---------------------------------------------------------------------------


class _HideTensorFlow:
  """Wraps a meta-path finder so that it finds no `tensorflow`: the module is then absent,
  as on a machine without it, even where it is installed."""

  def __init__(self, finder):
    self.finder = finder

  def find_spec(self, name, path=None, target=None):
    if name == 'tensorflow' or name.startswith('tensorflow.'):
      return None
    find = getattr(self.finder, 'find_spec', None)
    return find(name, path, target) if find else None

  def __getattr__(self, attr):
    return getattr(self.finder, attr)


def test_imagenet2012_prepares_from_the_official_tars_without_tensorflow(tmp_path,
                                                                        monkeypatch):
  from PIL import Image
  import tensorflow_datasets as tfds

  # Importing TensorFlow fails during the test, even where it is installed.
  for name in [m for m in sys.modules if m == 'tensorflow' or m.startswith('tensorflow.')]:
    monkeypatch.delitem(sys.modules, name)
  monkeypatch.setattr(sys, 'meta_path', [_HideTensorFlow(f) for f in sys.meta_path])
  written = helpers.make_mini_imagenet(tmp_path / 'manual', per_class=2, num_val=4)
  builder = sources.prepare_imagenet2012(str(tmp_path / 'tfds'), str(tmp_path / 'manual'))
  assert builder.is_prepared() and builder.info.version == '5.1.0'
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
      'train': 8, 'validation': 4}
  names = sources.class_names(builder)
  train = builder.as_data_source('train', decoders={'image': tfds.decode.SkipDecoding()})
  seen = {}
  for i in range(len(train)):
    ex = train[i]
    name = ex['file_name'].decode()
    assert names[ex['label']] == name.split('_')[0]  # the class tar it came from
    image = Image.open(io.BytesIO(ex['image']))
    assert image.format == 'JPEG' and image.mode == 'RGB'  # CMYK and PNG fixed
    want = np.asarray(written[name], np.float32)
    got = np.asarray(image, np.float32)
    assert got.shape == want.shape
    assert np.abs(got - want).mean() < 6  # JPEG round trips of the written picture
    seen[name] = ex['image']
  assert set(seen) == {n for n in written if not n.startswith('ILSVRC')}
  # Ordinary files are stored byte for byte; only the CMYK and PNG ones are re-encoded.
  with open(tmp_path / 'manual' / 'ILSVRC2012_img_train.tar', 'rb') as f:
    for _, inner in tfds.download.iter_archive(f, tfds.download.ExtractMethod.TAR_STREAM):
      for name, member in tfds.download.iter_archive(io.BytesIO(inner.read()),
                                                     tfds.download.ExtractMethod.TAR_STREAM):
        data = member.read()
        assert (seen[name] == data) == (name not in ('n01739381_1309.JPEG',
                                                     'n02105855_2933.JPEG'))
  # Validation labels are tfds's list in the order of the sorted file names:
  # val_00000001 n01751748, 00000002 n09193705, 00000003 n02105855, 00000004 n04263257.
  val = builder.as_data_source('validation')
  labels = {val[i]['file_name'].decode(): names[val[i]['label']] for i in range(len(val))}
  assert labels == {'ILSVRC2012_val_00000001.JPEG': 'n01751748',
                    'ILSVRC2012_val_00000002.JPEG': 'n09193705',
                    'ILSVRC2012_val_00000003.JPEG': 'n02105855',
                    'ILSVRC2012_val_00000004.JPEG': 'n04263257'}
  # A second call finds it prepared; tfds's own registered builder reads it too.
  assert sources.prepare_imagenet2012(str(tmp_path / 'tfds'), None).is_prepared()


def test_missing_imagenet_tars_fail_in_one_sentence(tmp_path):
  (tmp_path / 'manual').mkdir()
  (tmp_path / 'manual' / 'ILSVRC2012_img_train.tar').write_bytes(b'')
  with pytest.raises(DatasetNotFoundError) as e:
    sources.prepare_imagenet2012(str(tmp_path / 'tfds'), str(tmp_path / 'manual'))
  message = str(e.value)
  assert 'ILSVRC2012_img_train.tar' in message and 'ILSVRC2012_img_val.tar' in message
  assert 'data.manual_dir' in message and '\n' not in message




def test_an_undecodable_eval_image_stops_the_storing_and_names_the_file(tmp_path):
  helpers.make_folder(tmp_path / 'images')
  png = tmp_path / 'images' / 'test' / 'cat' / '0.png'
  png.write_bytes(png.read_bytes()[:200])  # truncated
  source = sources.image_folder_builder(str(tmp_path / 'images'), str(tmp_path / 'tfds'),
                                        ('train', 'test'))
  with pytest.raises(BadDataError, match=r'test record \d+ \(cat/0.png\) .* failed to decode'):
    sources.prepare_resized(source, str(tmp_path / 'tfds'), size=24, max_bad_records=5,
                            train_split='train')


def test_missing_splits_and_classes_without_training_images(tmp_path, caplog):
  helpers.make_folder(tmp_path / 'images')
  with pytest.raises(DatasetNotFoundError, match=r'No images in .*images/validation/<class>/'):
    sources.image_folder_builder(str(tmp_path / 'images'), str(tmp_path / 'tfds'),
                                 ('train', 'validation'))
  (tmp_path / 'images' / 'test' / 'bird').mkdir()
  helpers.photo().crop((0, 0, 50, 50)).save(tmp_path / 'images' / 'test' / 'bird' / '0.jpg')
  with caplog.at_level('WARNING'):
    sources.image_folder_builder(str(tmp_path / 'images'), str(tmp_path / 'tfds'),
                                 ('train', 'test'))
  assert any("'bird'" in r.message and 'none in' in r.message for r in caplog.records)


def test_a_bomb_in_a_folder_is_a_bad_record_and_a_turned_photo_is_stored_upright(tmp_path,
                                                                                 caplog):
  from PIL import Image
  import tensorflow_datasets as tfds
  helpers.make_folder(tmp_path / 'images')
  (tmp_path / 'images' / 'train' / 'dog' / 'bomb.png').write_bytes(helpers.bomb_png())
  upright = Image.new('RGB', (90, 60), (220, 40, 40))
  upright.paste((40, 40, 220), (0, 0, 30, 60))  # a blue band on the left
  (tmp_path / 'images' / 'train' / 'cat' / 'turned.jpg').write_bytes(helpers.rotated_jpeg(upright))
  source = sources.image_folder_builder(str(tmp_path / 'images'), str(tmp_path / 'tfds'))
  with caplog.at_level('WARNING'):
    prepared = sources.prepare_resized(source, str(tmp_path / 'tfds'), size=24,
                                       max_bad_records=1)
  assert prepared.info.splits['train'].num_examples == 7  # 8 files, the bomb left out
  assert any('dog/bomb.png' in r.message and '1,600,000,000 pixels' in r.message
             for r in caplog.records)
  raw = source.as_data_source('train', decoders={'image': tfds.decode.SkipDecoding()})
  index = next(i for i in range(len(raw)) if raw[i]['file_name'] == b'cat/turned.jpg')
  stored = prepared.as_data_source('train')[index]['image'].astype(int)
  # The centre 24 x 24 of the upright photo (scaled to 36 x 24): blue at its left edge only.
  assert stored[12, 1, 2] > 150 and stored[12, 1, 0] < 100 and stored[12, 22, 0] > 150
