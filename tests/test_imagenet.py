"""imagenet2012 through tfds's own builder, offline and without TensorFlow, from a miniature
manual download in the official layout (tests/mini_imagenet.py)."""

import io
import sys

import numpy as np
import pytest

from alexnet_jax import datasets
from alexnet_jax.errors import DatasetNotFoundError
from tests import mini_imagenet


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
  import tensorflow_datasets as tfds
  from PIL import Image

  # Importing TensorFlow fails during the test, even where it is installed.
  for name in [m for m in sys.modules if m == 'tensorflow' or m.startswith('tensorflow.')]:
    monkeypatch.delitem(sys.modules, name)
  monkeypatch.setattr(sys, 'meta_path', [_HideTensorFlow(f) for f in sys.meta_path])
  written = mini_imagenet.make(tmp_path / 'manual', per_class=2, num_val=4)
  builder = datasets.prepare_imagenet2012(str(tmp_path / 'tfds'), str(tmp_path / 'manual'))
  assert builder.is_prepared() and builder.info.version == '5.1.0'
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
      'train': 8, 'validation': 4}
  names = datasets.class_names(builder)
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
  assert datasets.prepare_imagenet2012(str(tmp_path / 'tfds'), None).is_prepared()


def test_missing_imagenet_tars_fail_in_one_sentence(tmp_path):
  (tmp_path / 'manual').mkdir()
  (tmp_path / 'manual' / 'ILSVRC2012_img_train.tar').write_bytes(b'')
  with pytest.raises(DatasetNotFoundError) as e:
    datasets.prepare_imagenet2012(str(tmp_path / 'tfds'), str(tmp_path / 'manual'))
  message = str(e.value)
  assert 'ILSVRC2012_img_train.tar' in message and 'ILSVRC2012_img_val.tar' in message
  assert 'data.manual_dir' in message and '\n' not in message


@pytest.mark.slow
def test_the_papers_config_trains_and_tests_from_the_imagenet_tars(tmp_path):
  """configs/alexnet.py as a user runs it on the manual download: tfds's imagenet2012
  builder prepares the tars, the images are stored at 256x256 once, the pixel statistics
  are computed, and the paper's network trains on random 224 crops with PCA lighting and
  is tested on the centre crop and the 10 crops."""
  import json
  from tests import test_launch
  mini_imagenet.make(tmp_path / 'tars')
  common = [f'--config.data.manual_dir={tmp_path / "tars"}',
            f'--config.data.data_dir={tmp_path / "tfds"}', '--config.batch_size=4',
            '--config.eval_batch_size=4']
  result = test_launch.launch('configs/alexnet.py', tmp_path / 'run', *common,
                              '--config.num_train_steps=2', '--config.eval_every_steps=2')
  assert result.returncode == 0, result.stderr[-3000:]
  assert (tmp_path / 'tfds' / 'imagenet2012' / '5.1.0').is_dir()
  assert list((tmp_path / 'tfds' / 'prepared_images').glob('imagenet2012_*_256_q95'))
  run = json.loads((tmp_path / 'run' / 'run.json').read_text())
  assert run['num_params'] == 60_965_224
  records = [json.loads(l) for l in (tmp_path / 'run' / 'metrics.jsonl').read_text().split('\n')
             if l]
  assert [r['step'] for r in records if 'eval/top1' in r] == [2]
  result = test_launch.launch('configs/alexnet.py', tmp_path / 'run', *common, '--mode=eval')
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(result.stdout.split('eval: ', 1)[1])
  assert out['step'] == 2 and np.isfinite(out['ten_crop/loss'])
