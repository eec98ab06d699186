"""A user's folder of class subfolders as a tfds dataset, without TensorFlow."""

import numpy as np
import pytest

from alexnet_jax import datasets, streaming, transforms
from alexnet_jax.errors import DatasetNotFoundError
from tests import mini_imagenet


def make_folder(root):
  photo = mini_imagenet.photo()
  written = {}
  for split, n in (('train', 3), ('test', 2)):
    for k, cls in enumerate(('cat', 'dog')):
      (root / split / cls).mkdir(parents=True)
      for i in range(n):
        image = photo.crop((40 * i, 50 * k, 40 * i + 120, 50 * k + 90))
        path = root / split / cls / f'{i}.{"png" if i == 0 else "jpg"}'
        image.save(path)
        written[f'{split}/{cls}/{path.name}'] = path.read_bytes()
  (root / 'train' / 'cat' / 'notes.txt').write_text('not an image')
  return written


def test_folder_of_class_subfolders_round_trips(tmp_path):
  written = make_folder(tmp_path / 'images')
  builder = datasets.image_folder_builder(str(tmp_path / 'images'), str(tmp_path / 'tfds'))
  assert datasets.class_names(builder) == ['cat', 'dog']
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {'train': 6, 'test': 4}
  import tensorflow_datasets as tfds
  source = builder.as_data_source('train', decoders={'image': tfds.decode.SkipDecoding()})
  for i in range(len(source)):
    ex = source[i]
    name = ex['file_name'].decode()
    assert ex['image'] == written[f'train/{name}']  # stored byte for byte (PNG and JPEG)
    assert datasets.class_names(builder)[ex['label']] == name.split('/')[0]
    assert streaming.decode(ex['image'], 32).shape == (32, 32, 3)
  # Prepared once: a second call reads it; a changed folder is a new dataset.
  again = datasets.image_folder_builder(str(tmp_path / 'images'), str(tmp_path / 'tfds'))
  assert again.data_dir == builder.data_dir
  mini_imagenet.photo().save(tmp_path / 'images' / 'train' / 'dog' / 'new.jpg')
  changed = datasets.image_folder_builder(str(tmp_path / 'images'), str(tmp_path / 'tfds'))
  assert changed.data_dir != builder.data_dir and changed.info.splits['train'].num_examples == 7


def test_missing_or_empty_folder_says_where_to_put_images(tmp_path):
  with pytest.raises(DatasetNotFoundError, match='train/cat/1.jpg'):
    datasets.image_folder_builder(str(tmp_path / 'nowhere'), str(tmp_path / 'tfds'))
  (tmp_path / 'empty' / 'train' / 'cat').mkdir(parents=True)
  with pytest.raises(DatasetNotFoundError, match='No images'):
    datasets.image_folder_builder(str(tmp_path / 'empty'), str(tmp_path / 'tfds'))


def test_images_prepared_once_at_a_fixed_size(tmp_path):
  import numpy as np
  import tensorflow_datasets as tfds
  make_folder(tmp_path / 'images')
  source = datasets.image_folder_builder(str(tmp_path / 'images'), str(tmp_path / 'tfds'))
  prepared = datasets.prepare_resized(source, str(tmp_path / 'tfds'), size=48, quality=95)
  assert {k: v.num_examples for k, v in prepared.info.splits.items()} == {'train': 6,
                                                                         'test': 4}
  assert datasets.class_names(prepared) == ['cat', 'dog']
  raw = source.as_data_source('train', decoders={'image': tfds.decode.SkipDecoding()})
  small = prepared.as_data_source('train')
  for i in range(len(raw)):  # same order, same labels; the image is the prepared one
    assert small[i]['label'] == raw[i]['label']
    want = streaming.decode(raw[i]['image'], 48).astype(np.float32)
    got = small[i]['image'].astype(np.float32)
    assert got.shape == (48, 48, 3) and np.abs(got - want).mean() < 3  # JPEG q95
  again = datasets.prepare_resized(source, str(tmp_path / 'tfds'), size=48, quality=95)
  assert again.data_dir == prepared.data_dir


def make_small_folder(root, train=24, test=8):
  """Two classes cut from the two halves of a real photograph, 60x44 JPEGs."""
  photo = mini_imagenet.photo()
  for split, n in (('train', train), ('test', test)):
    for k, cls in enumerate(('left', 'right')):
      (root / split / cls).mkdir(parents=True)
      for i in range(n):
        x = (0 if k == 0 else photo.size[0] // 2) + 7 * i
        image = photo.crop((x, 30 + 5 * i, x + 150, 140 + 5 * i)).resize((60, 44))
        image.save(root / split / cls / f'{i}.jpg')


@pytest.mark.slow
def test_launch_trains_evaluates_and_predicts_from_an_image_folder(tmp_path):
  """The README's image-folder command: the stream pipeline (tfds builder, images stored
  at 36x36, random 32 crops, reflections, PCA lighting, per-pixel mean, decode in a grain
  worker process with 2 threads), then --mode=eval (centre and 10-crop) and --mode=predict;
  then the stored images again, as any tfds dataset is read: by name from data_dir."""
  import json
  from tests import test_launch
  make_small_folder(tmp_path / 'images')
  common = [f'--config.data.folder={tmp_path / "images"}',
            f'--config.data.data_dir={tmp_path / "tfds"}', '--config.batch_size=16',
            '--config.eval_batch_size=16']
  result = test_launch.launch('configs/image_folder.py', tmp_path / 'run', *common,
                              '--config.num_epochs=2', '--config.log_every_steps=3',
                              '--config.data.processes=1', '--config.data.threads=2')
  assert result.returncode == 0, result.stderr[-3000:]
  records = [json.loads(l) for l in (tmp_path / 'run' / 'metrics.jsonl').read_text().split('\n')
             if l]
  assert [r['step'] for r in records if 'eval/top1' in r] == [3, 6]  # 48 images, 16 a batch
  run = json.loads((tmp_path / 'run' / 'run.json').read_text())
  assert run['config']['data']['pipeline'] == 'stream'
  result = test_launch.launch('configs/image_folder.py', tmp_path / 'run', *common,
                              '--mode=eval')
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(result.stdout.split('eval: ', 1)[1])
  assert out['step'] == 6 and 0 <= out['ten_crop/top1'] <= 1
  assert np.isfinite(out['ten_crop/loss']) and out['ten_crop/loss'] != out['centre/loss']
  image = tmp_path / 'images' / 'test' / 'right' / '3.jpg'
  result = test_launch.launch('configs/image_folder.py', tmp_path / 'run', *common,
                              '--mode=predict', f'--images={image}')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'left' in result.stdout and 'right' in result.stdout
  # Any tfds dataset prepared in data_dir, by name: here the 36x36 images stored above.
  stored = [p.name for p in (tmp_path / 'tfds' / 'prepared_images').iterdir()]
  assert len(stored) == 1
  result = test_launch.launch('configs/image_folder.py', tmp_path / 'by_name', *common,
                              f'--config.dataset=prepared_images/{stored[0]}',
                              '--config.data.prepare_once=False', '--config.num_train_steps=2')
  assert result.returncode == 0, result.stderr[-3000:]


def test_pixel_statistics_script_feeds_the_pipeline(tmp_path):
  """scripts/compute_pixel_statistics.py reads the config's training images as training
  does; its mean is the float64 mean of the prepared images, and data.statistics makes the
  pipeline subtract it (without the file, the pipeline computes the same at start-up)."""
  import subprocess
  import sys
  from configs import image_folder
  from alexnet_jax import input_pipeline
  from tests import test_launch
  make_small_folder(tmp_path / 'images', train=4, test=2)
  overrides = [f'--config.data.folder={tmp_path / "images"}',
               f'--config.data.data_dir={tmp_path / "tfds"}']
  out = tmp_path / 'stats.npz'
  result = subprocess.run([sys.executable, 'scripts/compute_pixel_statistics.py',
                           '--config=configs/image_folder.py', *overrides, f'--out={out}'],
                          cwd=test_launch.ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert '8 images (0 unreadable)' in result.stdout
  config = image_folder.get_config()
  config.data.folder, config.data.data_dir = str(tmp_path / 'images'), str(tmp_path / 'tfds')
  config.batch_size = 8
  source = streaming.split_source(streaming.training_builder(config), 'train')
  want = np.mean([streaming.decode(source[i]['image'], 36) for i in range(len(source))],
                 axis=0, dtype=np.float64)
  stats = np.load(out)
  assert stats['mean'].shape == (36, 36, 3) and int(stats['count']) == 8
  np.testing.assert_allclose(stats['mean'], want, atol=1e-3)
  config.data.statistics = str(out)
  data = input_pipeline.load(config)
  np.testing.assert_array_equal(data.mean, stats['mean'])
  np.testing.assert_array_equal(data.loader.augment.eigval, transforms.IMAGENET_EIGVAL)
  config.data.pca = 'statistics'  # the training set's PCA instead of the card's
  data = input_pipeline.load(config)
  np.testing.assert_allclose(data.loader.augment.eigval, stats['eigval'])
  np.testing.assert_allclose(data.loader.augment.eigvec, stats['eigvec'])
  config.data.pca = 'imagenet'
  config.data.statistics = ''
  np.testing.assert_allclose(input_pipeline.load(config).mean, stats['mean'], atol=1e-4)


def test_storing_once_leaves_out_undecodable_files_up_to_the_limit(tmp_path, caplog):
  from alexnet_jax.errors import BadDataError
  make_folder(tmp_path / 'images')
  (tmp_path / 'images' / 'train' / 'dog' / '1.jpg').write_bytes(b'not a jpeg')
  source = datasets.image_folder_builder(str(tmp_path / 'images'), str(tmp_path / 'tfds'))
  with pytest.raises(BadDataError, match='max_bad_records=0.*dog/1.jpg'):
    datasets.prepare_resized(source, str(tmp_path / 'strict'), size=24, max_bad_records=0)
  with caplog.at_level('WARNING'):
    prepared = datasets.prepare_resized(source, str(tmp_path / 'tfds'), size=24,
                                        max_bad_records=1)
  assert prepared.info.splits['train'].num_examples == 5  # 6 files, one left out
  assert any('dog/1.jpg' in r.message for r in caplog.records)
