"""A normal run's log holds only lines a user needs: the main config for a few steps (its
dataset built from scratch), then eval and predict on it, and an image folder stored from
scratch, fail on any line of known library noise."""

import re

import numpy as np
import pytest

from tests import helpers

NOISE = [
    r"Unable to initialize backend 'tpu'",  # jax's TPU probe on a machine without one
    r'dataset_info\.json',  # tfds: an empty variant folder
    r'Using custom data configuration',  # tfds: our builder's named config
    r'OpenCV is not installed',  # tfds decoding with Pillow
    r'Downloading and preparing dataset',  # tfds: a local build that downloads nothing
    r'Dataset .* downloaded and prepared',
    r'\x1b\[|\[A',  # terminal escape codes (tqdm bars in a file)
    r'\d+%\|',  # a tqdm bar
    r'Traceback', r'DeprecationWarning', r'FutureWarning',
    r'Event loop is closed',
]


def noise(result):
  """The lines of known library noise, and any message that repeats more than 3 times with
  only its numbers or quoted names changed (one line a class, a file, a shard), apart from
  the metrics and progress lines, which a run logs by design."""
  lines = (result.stdout + result.stderr).splitlines()
  found = [line for line in lines if any(re.search(p, line) for p in NOISE)]
  shapes = {}
  for line in lines:
    message = re.sub(r'^[IWEF]\d{4} [\d:.]+ +\d+ ', '', line)
    if re.match(r'\S+\.py:\d+\] (step \d+:|.*\d+ / \d+ )', message):
      continue
    shape = re.sub(r"'[^']*'|\d+(\.\d+)?", '#', message)
    shapes.setdefault(shape, []).append(line)
  return found + [l for ls in shapes.values() if len(ls) > 3 for l in ls[:2]]


@pytest.mark.slow
def test_main_config_eval_and_predict_logs_have_no_noise(tmp_path):
  data_dir = tmp_path / 'tfds'  # empty: the embedded subset is built during the run
  common = ['--config.data.manual_dir=data/fashion_mnist', f'--config.data.data_dir={data_dir}']
  work = tmp_path / 'run'
  train = helpers.launch(work, *common, '--config.num_train_steps=3',
                         '--config.log_every_steps=1', config='configs/fashion_mnist.py')
  assert train.returncode == 0, train.stderr[-3000:]
  assert noise(train) == []
  assert 'train/loss' in train.stderr  # the log does hold the run
  evaluation = helpers.launch(work, *common, '--mode=eval', config='configs/fashion_mnist.py')
  assert evaluation.returncode == 0, evaluation.stderr[-3000:]
  assert noise(evaluation) == []
  from PIL import Image
  image = tmp_path / 'shoe.png'
  Image.fromarray(np.full((28, 28), 200, np.uint8)).save(image)
  predict = helpers.launch(work, *common, '--mode=predict', f'--images={image}',
                           config='configs/fashion_mnist.py')
  assert predict.returncode == 0, predict.stderr[-3000:]
  assert noise(predict) == []


@pytest.mark.slow
def test_image_folder_run_log_has_no_noise(tmp_path):
  from PIL import Image
  rng = np.random.default_rng(0)
  for split, n in (('train', 8), ('test', 4)):
    for cls in ('a', 'b'):
      (tmp_path / 'folder' / split / cls).mkdir(parents=True)
      for i in range(n):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), np.uint8)).save(
            tmp_path / 'folder' / split / cls / f'{i}.png')
  result = helpers.launch(
      tmp_path / 'run', f'--config.data.folder={tmp_path / "folder"}',
      f'--config.data.data_dir={tmp_path / "tfds"}', '--config.num_train_steps=2',
      '--config.min_train_steps=0', '--config.batch_size=8', '--config.eval_batch_size=8',
      config='configs/image_folder.py')
  assert result.returncode == 0, result.stderr[-3000:]
  assert noise(result) == []
  assert 'Storing the image folder' in result.stderr
