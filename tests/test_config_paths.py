"""Every path a config names is the one used, or the run stops in one sentence before anything
is read or written (a mistyped data.manual_dir once trained on the embedded data without a
word). Every run names its data source and size in one line: test_launch.py's
test_fashion_mnist_trains_and_logs and test_synthetic_224_records_the_papers_parameter_count."""

import importlib
import re

import pytest

from alexnet_jax.checkpoint import workdir as workdir_lib
from alexnet_jax.data import config as data_config
from alexnet_jax.data import sources
from alexnet_jax.errors import UserError
from tests import helpers

CONFIGS = sorted(p.stem for p in (helpers.ROOT / 'configs').glob('*.py') if p.stem != '__init__')
# Every string field of every config, paths or not: a new one must be placed in one of these.
PATH_FIELDS = ('data.data_dir', 'data.manual_dir', 'data.folder', 'data.statistics', 'init_from')
OTHER_FIELDS = (
    'dataset', 'data.decode_on', 'data.decoder', 'data.eval_split', 'data.mean', 'data.pca',
    'data.pipeline', 'data.prepared_geometry', 'data.std', 'data.storage', 'data.train_split',
    'distributed.coordinator_address', 'lr_schedule', 'model.conv1_impl', 'model.conv1_input',
    'model.conv1_padding', 'model.dropout_placement', 'model.dtype', 'model.lrn_impl',
    'model.pool_backward', 'model.tower_conv', 'on_nonfinite_loss', 'parallelism')


def config_of(name):
  return importlib.import_module(f'configs.{name}').get_config()


def test_every_string_field_is_known_as_a_path_or_not():
  found = set()
  for name in CONFIGS:
    flat = workdir_lib.flatten(config_of(name).to_dict())
    found |= {k for k, v in flat.items() if v is None or isinstance(v, str)}
  assert found == set(PATH_FIELDS) | set(OTHER_FIELDS)


def fails(config, match):
  with pytest.raises(UserError, match=match):
    data_config.validate(config)


@pytest.mark.parametrize('name', CONFIGS)
def test_a_path_that_does_not_exist_stops_every_config(name, tmp_path):
  missing = str(tmp_path / 'nonexistent')
  config = config_of(name)
  data_config.validate(config)  # as written
  if config.dataset not in ('synthetic', 'image_folder'):
    config.data.manual_dir = missing
    fails(config, re.escape(f'data.manual_dir={missing} is not a directory'))
    config.data.manual_dir = None
  if config.dataset == 'image_folder':
    config.data.folder = missing
    fails(config, re.escape(f'data.folder={missing} is not a directory'))
    config.data.folder = None
  if config.data.pipeline == 'stream':
    config.data.statistics = missing
    fails(config, re.escape(f'data.statistics={missing} is not a file'))
    config.data.statistics = ''
  (tmp_path / 'a_file').write_text('')
  config.data.data_dir = str(tmp_path / 'a_file' / 'tfds')  # under a file: cannot be made
  fails(config, 'does not exist and cannot be created')
  config.data.data_dir = str(tmp_path / 'new' / 'tfds')  # can be made: fine
  data_config.validate(config)


def test_a_path_the_dataset_does_not_read_stops_the_run(tmp_path):
  config = config_of('synthetic')
  config.data.manual_dir = str(tmp_path)
  fails(config, 'data.manual_dir=.* is not read with dataset=synthetic')
  config = config_of('fashion_mnist')
  config.data.folder = str(tmp_path)
  fails(config, 'data.folder=.* is read only with dataset=image_folder')
  config = config_of('fashion_mnist')
  config.data.statistics = str(tmp_path / 'stats.npz')
  fails(config, 'data.statistics=.* is read only with data.pipeline=stream')


def test_a_manual_dir_without_the_files_is_not_replaced_by_other_data(tmp_path):
  with pytest.raises(UserError, match=f'looked in {tmp_path}.$'):
    sources.find_fashion_mnist_files(str(tmp_path))
  assert sources.find_fashion_mnist_files(str(sources.EMBEDDED_FASHION_MNIST)) == (
      sources.EMBEDDED_FASHION_MNIST)


def test_init_from_that_does_not_exist_stops_the_run(tmp_path):
  from alexnet_jax.model import config as model_config
  from alexnet_jax.weights import fine_tuning
  spec = model_config.model_spec(config_of('image_folder'))
  with pytest.raises(UserError, match='init_from='):
    fine_tuning.load_init(str(tmp_path / 'nonexistent'), spec, ())


def test_a_mistyped_manual_dir_stops_before_anything_is_written(tmp_path):
  result = helpers.launch(tmp_path / 'run', '--config.data.manual_dir=/nonexistent/fashion',
                          f'--config.data.data_dir={tmp_path / "tfds"}',
                          config='configs/fashion_mnist.py')
  error = helpers.one_error_line(result)
  assert error == ('error: data.manual_dir=/nonexistent/fashion is not a directory; name the '
                   "directory that holds the dataset's files."), error
  assert not (tmp_path / 'run').exists() and not (tmp_path / 'tfds').exists()
