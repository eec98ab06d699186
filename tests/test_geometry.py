"""The stored images' geometry (alexnet_jax/data/geometry.py): the paper's central crop, or
Caffe's warp of the whole image as OpenCV's INTER_LINEAR resize computes it, checked by
hand; the two are stores of their own."""

import numpy as np
import pytest

from alexnet_jax.data import geometry
from alexnet_jax.data import transforms


def test_halving_the_rows_is_the_rounded_mean_of_each_pair():
  """4 rows to 2: each output row's source point falls midway between two rows (weights
  1024 and 1024), so their mean, rounded half up."""
  image = (np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3) * 5)
  got = geometry.warp(image, 2)[:, :, 0]
  a = image[:, :, 0].astype(float)
  assert got.shape == (2, 2)  # the whole 4x6 image: its aspect ratio is not kept
  # Columns: 6 -> 2 is a factor 3, source x = 3 * x + 1: the middle column exactly.
  want = np.floor([[(a[0, 1] + a[1, 1]) / 2 + 0.5, (a[0, 4] + a[1, 4]) / 2 + 0.5],
                   [(a[2, 1] + a[3, 1]) / 2 + 0.5, (a[2, 4] + a[3, 4]) / 2 + 0.5]])
  np.testing.assert_array_equal(got, want)


def test_doubling_interpolates_at_quarter_points_and_repeats_the_edges():
  """2 -> 4: source points -0.25 (clamped to the edge pixel), 0.25, 0.75, 1.25 (clamped):
  weights (1, 0), (3/4, 1/4), (1/4, 3/4), (0, 1) of the two pixels."""
  image = np.array([[0, 100], [0, 100]], np.uint8)[..., None]
  np.testing.assert_array_equal(geometry.warp(image, 4)[:, :, 0], [[0, 25, 75, 100]] * 4)


def test_prepare_warps_the_whole_image_or_crops_the_centre():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (30, 60, 3), dtype=np.uint8)
  np.testing.assert_array_equal(geometry.prepare(image, 15, geometry='warp'),
                                geometry.warp(image, 15))
  np.testing.assert_array_equal(geometry.prepare(image, 15),
                                transforms.resize_and_centre_crop(image, 15))
  view, window = geometry.centre_view(image, 16, 8, geometry='warp')
  np.testing.assert_array_equal(view, geometry.warp(image, 16)[4:12, 4:12])
  assert window.tolist() == [4, 4, 0]
  with pytest.raises(ValueError, match='Unknown geometry'):
    geometry.prepare(image, 15, geometry='stretch')


def test_caffes_config_warps_into_a_store_of_its_own(tmp_path):
  from alexnet_jax.data import config as data_config
  from alexnet_jax.data import sources
  from alexnet_jax.errors import ConfigError
  from configs import alexnet
  from configs import bvlc_alexnet
  from tests import helpers
  assert bvlc_alexnet.get_config().data.prepared_geometry == 'warp'
  assert alexnet.get_config().data.prepared_geometry == 'centre_crop'
  helpers.make_small_folder(tmp_path / 'images', train=2, test=1)
  source = sources.image_folder_builder(str(tmp_path / 'images'), str(tmp_path / 'tfds'))
  crop = sources.prepare_resized(source, str(tmp_path / 'tfds'), 16)
  warp = sources.prepare_resized(source, str(tmp_path / 'tfds'), 16, geometry='warp')
  assert warp.data_dir != crop.data_dir and str(warp.data_dir).endswith('_16_q95_warp/1.1.0')
  records = sources.split_source(warp, 'train', decode_images=True)
  original = sources.split_source(source, 'train')
  got = records[0]['image'].astype(int)
  want = geometry.warp(transforms.decode(original[0]['image'], 0), 16).astype(int)
  assert np.abs(got - want).mean() < 3  # JPEG of the warped image
  config = alexnet.get_config()
  config.data.prepared_geometry, config.data.prepare_once = 'warp', False
  with pytest.raises(ConfigError, match='data.prepared_geometry=warp stores the warped images '
                     'once'):
    data_config.validate(config)
