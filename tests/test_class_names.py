"""Class names a person can read: ImageNet's WordNet ids with their names (the embedded table,
checked against torchvision's and tfds's own lists), a model zoo's synsets file, and
predictions that print both. A folder's non-ASCII class names: test_launch.py's
test_launch_trains_evaluates_and_predicts_from_an_image_folder."""

import json
import os

import numpy as np
import pytest

from alexnet_jax.data import class_names
from alexnet_jax.errors import UserError
from configs import bvlc_alexnet
from tests import helpers
from tests.test_weight_import import CAFFE_NARROW
from tests.test_weight_import import caffe_blobs
from tests.test_weight_import import caffemodel
from tests.test_weight_import import spec_of


def tfds_wnids() -> list[str]:
  import tensorflow_datasets as tfds
  path = os.path.join(os.path.dirname(tfds.__file__), 'datasets', 'imagenet2012', 'labels.txt')
  with open(path, encoding='utf-8') as f:
    return [line.strip() for line in f if line.strip()]


def test_the_embedded_names_are_torchvisions_in_tfds_order():
  meta = pytest.importorskip('torchvision.models._meta')
  assert class_names.imagenet_wnids() == tfds_wnids()
  names = class_names.imagenet_names()
  assert [names[w] for w in tfds_wnids()] == list(meta._IMAGENET_CATEGORIES)
  assert names['n01440764'] == 'tench' and names['n02012849'] == 'crane bird'


def test_a_synsets_file_gives_the_ids_and_names_in_its_order(tmp_path):
  path = tmp_path / 'synset_words.txt'
  path.write_text('n01443537 goldfish, Carassius auratus\nn01440764 tench, Tinca tinca\n'
                  'n01484850\n', encoding='utf-8')
  assert class_names.read_synsets(str(path)) == (
      ['n01443537', 'n01440764', 'n01484850'],
      ['goldfish, Carassius auratus', 'tench, Tinca tinca', 'great white shark'])
  path.write_text('tench n01440764\n', encoding='utf-8')
  with pytest.raises(UserError, match='line 1 .* does not start with a WordNet id'):
    class_names.read_synsets(str(path))


def predictions(result) -> list[dict]:
  assert result.returncode == 0, result.stderr[-3000:]
  return [json.loads(l[len('predict: '):]) for l in result.stdout.splitlines()
          if l.startswith('predict: ')]


@pytest.mark.slow
def test_predict_names_imagenet_classes(tmp_path):
  """A 1,000-class ImageNet checkpoint (random weights of a narrow network, imported as a
  Caffe model) predicts WordNet ids with their names: ImageNet's by default, a zoo's own
  synsets file's where one is given (--synsets)."""
  from PIL import Image
  meta = pytest.importorskip('torchvision.models._meta')
  spec = spec_of(bvlc_alexnet.get_config(), classes=1000, **CAFFE_NARROW)
  (tmp_path / 'net.caffemodel').write_bytes(caffemodel(caffe_blobs(spec, seed=3), v1=True))
  narrow = ['--config.model.conv_features=(8,16,24,24,16)', '--config.model.fc_features=32']
  image = tmp_path / 'a.png'
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 80, 3), np.uint8)).save(image)
  wnids = tfds_wnids()
  words = tmp_path / 'synset_words.txt'
  words.write_text(''.join(f'{w} zoo class {i}, with its synonyms\n' for i, w in enumerate(wnids)),
                   encoding='utf-8')
  for workdir, synsets in (('default', []), ('zoo', [f'--synsets={words}'])):
    imported = helpers.run_script('scripts.import_weights',
                                  f'--caffe={tmp_path / "net.caffemodel"}',
                                  f'--workdir={tmp_path / workdir}', *synsets, *narrow)
    assert imported.returncode == 0, imported.stderr[-3000:]
    result = helpers.launch(tmp_path / workdir, *narrow, '--mode=predict', f'--images={image}',
                            config='configs/bvlc_alexnet.py')
    [out] = predictions(result)
    assert len(out['top']) == 5 and out['top'][0]['probability'] > 0
    for top in out['top']:
      i = wnids.index(top['class'])
      want = meta._IMAGENET_CATEGORIES[i] if not synsets else f'zoo class {i}, with its synonyms'
      assert top['name'] == want, top
