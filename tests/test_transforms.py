"""The paper's per-image transforms (alexnet_jax/transforms.py) against hand-computed values."""

import numpy as np
import pytest

from alexnet_jax import transforms as T


# ---- preparation: shorter side 256, central crop ----------------------------------------


def test_shorter_side_already_256_is_only_centre_cropped():
  # 256 x 512 (landscape): column j holds j // 2. No resampling; columns 128..383 are kept.
  image = np.repeat((np.arange(512) // 2).astype(np.uint8)[None, :, None], 256, axis=0)
  image = np.repeat(image, 3, axis=2)
  out = T.resize_and_centre_crop(image)
  assert out.shape == (256, 256, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out, image[:, 128:384])
  assert out[0, 0, 0] == 64 and out[0, -1, 0] == 191


def test_portrait_image_is_scaled_to_width_256_and_cropped_vertically():
  # 600 x 300: scale 256/300, new size 512 x 256 (round(600 * 256 / 300) = 512); the crop
  # keeps rows 128..383 of the resized image, i.e. rows 150..449 of the original.
  image = np.zeros((600, 300, 3), np.uint8)
  image[300:] = 200  # top half 0, bottom half 200: the boundary lands at output row 128
  out = T.resize_and_centre_crop(image)
  assert out.shape == (256, 256, 3)
  assert (out[:120] == 0).all() and (out[136:] == 200).all()
  assert 0 < out[128, 0, 0] < 200  # the bilinear blend across the boundary


def test_grey_and_small_images():
  grey = np.full((28, 40, 1), 77, np.uint8)  # upscaled: 256 x round(40 * 256 / 28) = 366
  out = T.resize_and_centre_crop(grey)
  assert out.shape == (256, 256, 1) and (out == 77).all()
  rgb = T.resize_and_centre_crop(grey, channels=3)
  assert rgb.shape == (256, 256, 3) and (rgb == 77).all()
  assert T.resize_and_centre_crop(np.zeros((10, 10, 3), np.uint8), size=4).shape == (4, 4, 3)


# ---- random crops and reflections ----------------------------------------------------------


def test_random_crops_cover_every_allowed_position_and_nothing_else():
  image = np.arange(6 * 7, dtype=np.int32).reshape(6, 7, 1)  # pixel value = 7 * row + col
  rng = np.random.default_rng(0)
  seen = set()
  for _ in range(600):
    out = T.random_crop(image, 4, rng)
    top, left = divmod(int(out[0, 0, 0]), 7)
    np.testing.assert_array_equal(out, image[top:top + 4, left:left + 4])
    seen.add((top, left))
  # 6 - 4 + 1 = 3 rows and 7 - 4 + 1 = 4 columns of positions.
  assert seen == {(t, l) for t in range(3) for l in range(4)}


def test_224_crops_of_256_range_over_0_to_32():
  rng = np.random.default_rng(1)
  offsets = np.array([T.random_crop_offset((256, 256, 3), 224, rng) for _ in range(4000)])
  for axis in (0, 1):
    counts = np.bincount(offsets[:, axis], minlength=33)
    assert len(counts) == 33 and counts.min() > 60  # all of 0..32, about 121 each
  with pytest.raises(ValueError):
    T.random_crop_offset((200, 256, 3), 224, rng)


def test_reflection_by_hand_and_half_the_time():
  image = np.array([[[1], [2], [3]], [[4], [5], [6]]])
  np.testing.assert_array_equal(T.reflect(image)[..., 0], [[3, 2, 1], [6, 5, 4]])
  rng = np.random.default_rng(2)
  flips = sum(T.random_reflection(image, rng)[0, 0, 0] == 3 for _ in range(1000))
  assert 440 < flips < 560


# ---- mean subtraction --------------------------------------------------------------------


def test_mean_subtraction_per_pixel_and_per_channel():
  image = np.array([[[10, 20, 30], [40, 50, 60]]], np.uint8)  # 1 x 2 x 3
  per_pixel = np.array([[[1, 2, 3], [4, 5, 6]]], np.float32)
  np.testing.assert_array_equal(T.subtract_mean(image, per_pixel),
                                [[[9, 18, 27], [36, 45, 54]]])
  out = T.subtract_mean(image, np.array([127.3, 119.7, 104.9]))
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, [[[-117.3, -99.7, -74.9], [-87.3, -69.7, -44.9]]], atol=1e-4)


# ---- PCA colour augmentation -----------------------------------------------------------


class _FixedNormal:
  """A generator whose normal draws are (1, -2, 0.5) standard deviations."""

  def normal(self, loc, scale, size):
    assert size == 3 and loc == 0
    return np.array([1.0, -2.0, 0.5]) * scale


def test_pca_shift_by_hand():
  # alpha = (0.1, -0.2, 0.05); alpha * eigval = (0.02175, -0.00376, 0.000225).
  # Red: 255 * (-0.5675 * 0.02175 + 0.7192 * -0.00376 + 0.4009 * 0.000225) = -3.81406
  # Green: 255 * (-0.5808 * 0.02175 - 0.0045 * -0.00376 - 0.8140 * 0.000225) = -3.26365
  # Blue: 255 * (-0.5836 * 0.02175 - 0.6948 * -0.00376 + 0.4203 * 0.000225) = -2.54650
  shift = T.pca_shift(_FixedNormal(), sigma=0.1)
  np.testing.assert_allclose(shift, [-3.81406, -3.26365, -2.54650], atol=1e-4)
  image = np.array([[[100, 100, 100], [0, 255, 7]]], np.uint8)
  out = T.pca_lighting(image, _FixedNormal())
  np.testing.assert_allclose(out, image.astype(np.float32) + shift, atol=1e-5)  # every pixel


def test_pca_noise_has_the_configured_covariance():
  rng = np.random.default_rng(3)
  n = 40_000
  shifts = np.stack([T.pca_shift(rng, sigma=0.1) for _ in range(n)]).astype(np.float64)
  # cov = 255^2 P diag(0.1^2 l^2) P^T; its eigenvalues are (25.5 l)^2.
  std = 255 * 0.1 * T.IMAGENET_EIGVAL  # 5.54625, 0.4794, 0.114750
  want = (T.IMAGENET_EIGVEC * std**2) @ T.IMAGENET_EIGVEC.T
  np.testing.assert_allclose(want[0, 0], 0.5675**2 * 5.54625**2 + 0.7192**2 * 0.4794**2
                             + 0.4009**2 * 0.11475**2, rtol=1e-9)
  got = np.cov(shifts, rowvar=False)
  np.testing.assert_allclose(got, want, atol=0.03 * want.max())  # ~1% sampling error
  np.testing.assert_allclose(shifts.mean(axis=0), 0, atol=0.1)
  # Along each eigenvector the spread is 255 * sigma * l_i.
  np.testing.assert_allclose((shifts @ T.IMAGENET_EIGVEC).std(axis=0), std, rtol=0.02)
  sigma2 = np.stack([T.pca_shift(rng, sigma=0.2) for _ in range(n)])
  np.testing.assert_allclose((sigma2 @ T.IMAGENET_EIGVEC).std(axis=0), 2 * std, rtol=0.02)


def test_pca_from_pixels_recovers_a_known_covariance():
  # Pixels 128 +- 51 u +- 25.5 v with u = (1, 2, 2) / 3, v = (2, 1, -2) / 3, all four signs
  # equally often: covariance (51/255)^2 u u^T + (25.5/255)^2 v v^T (times n / (n - 1)).
  u, v = np.array([1, 2, 2]) / 3, np.array([2, 1, -2]) / 3
  pixels = np.array([128 + a * 51 * u + b * 25.5 * v for a in (-1, 1) for b in (-1, 1)] * 25)
  eigval, eigvec = T.pca_from_pixels(pixels)
  np.testing.assert_allclose(eigval, np.array([0.04, 0.01, 0.0]) * 100 / 99, atol=1e-12)
  np.testing.assert_allclose(eigvec[:, 0], -u, atol=1e-9)  # sign: first entry negative
  np.testing.assert_allclose(eigvec[:, 1], -v, atol=1e-9)


# ---- test views ----------------------------------------------------------------------------


def test_ten_crop_windows_by_hand():
  image = np.arange(25).reshape(5, 5, 1)  # rows 0-4, 5-9, ...
  views = T.ten_crop(image, 3)[..., 0]
  assert views.shape == (10, 3, 3)
  want = np.array([
      [[0, 1, 2], [5, 6, 7], [10, 11, 12]],  # top-left (0, 0)
      [[2, 3, 4], [7, 8, 9], [12, 13, 14]],  # top-right (0, 2)
      [[10, 11, 12], [15, 16, 17], [20, 21, 22]],  # bottom-left (2, 0)
      [[12, 13, 14], [17, 18, 19], [22, 23, 24]],  # bottom-right (2, 2)
      [[6, 7, 8], [11, 12, 13], [16, 17, 18]],  # centre (1, 1)
  ])
  np.testing.assert_array_equal(views[:5], want)
  np.testing.assert_array_equal(views[5:], want[:, :, ::-1])


def test_ten_crop_224_of_256_windows_and_centre_crop():
  assert T.ten_crop_offsets((256, 256, 3), 224) == [(0, 0), (0, 32), (32, 0), (32, 32),
                                                    (16, 16)]
  image = np.random.default_rng(4).integers(0, 256, (256, 256, 3), dtype=np.uint8)
  views = T.ten_crop(image)
  assert views.shape == (10, 224, 224, 3)
  np.testing.assert_array_equal(views[3], image[32:, 32:])
  np.testing.assert_array_equal(views[4], image[16:240, 16:240])
  np.testing.assert_array_equal(views[9], image[16:240, 16:240][:, ::-1])
  np.testing.assert_array_equal(T.centre_crop(image), image[16:240, 16:240])


# ---- the composed training view ------------------------------------------------------------


def test_train_view_crops_the_per_pixel_mean_with_the_image():
  rng = np.random.default_rng(5)
  mean = rng.uniform(0, 200, (8, 8, 3)).astype(np.float32)
  image = (mean + 5).astype(np.uint8)  # image - mean is 5 - frac(mean) wherever the crop is
  want_full = image.astype(np.float32) - mean
  for seed in range(20):
    out = T.train_view(image, np.random.default_rng(seed), mean, crop_size=5, flip=False,
                       pca_sigma=0)
    top, left = T.random_crop_offset(image.shape, 5, np.random.default_rng(seed))
    np.testing.assert_array_equal(out, want_full[top:top + 5, left:left + 5])


def test_train_view_switches_and_determinism():
  image = np.random.default_rng(6).integers(0, 256, (10, 10, 3), dtype=np.uint8)
  plain = T.train_view(image, np.random.default_rng(0), None, crop_size=None, flip=False,
                       pca_sigma=0)
  np.testing.assert_array_equal(plain, image.astype(np.float32))
  a = T.train_view(image, np.random.default_rng(7), np.zeros(3), crop_size=6)
  b = T.train_view(image, np.random.default_rng(7), np.zeros(3), crop_size=6)
  assert a.shape == (6, 6, 3) and a.dtype == np.float32
  np.testing.assert_array_equal(a, b)
  c = T.train_view(image, np.random.default_rng(8), np.zeros(3), crop_size=6)
  assert not np.array_equal(a, c)


@pytest.mark.parametrize('mean_shape', [(3,), (9, 11, 3)])
def test_train_view_equals_the_composition_of_the_steps(mean_shape):
  rng = np.random.default_rng(9)
  image = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
  mean = rng.uniform(0, 255, mean_shape).astype(np.float32)
  for seed in range(12):
    got = T.train_view(image, np.random.default_rng(seed), mean, crop_size=6, flip=True,
                       pca_sigma=0.1)
    r = np.random.default_rng(seed)  # the same draws, in order: offset, reflection, PCA
    want = T.crop(T.subtract_mean(image, mean), *T.random_crop_offset(image.shape, 6, r), 6)
    want = T.random_reflection(want, r)
    want = T.pca_lighting(want, r, 0.1)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_resampling_only_the_kept_window_matches_resize_then_crop():
  from PIL import Image
  from tests import mini_imagenet
  photo = mini_imagenet.photo().resize((500, 375), Image.BICUBIC)  # ImageNet-sized, landscape
  got = T.resize_and_centre_crop(photo).astype(int)
  full = np.asarray(photo.resize((341, 256), Image.BILINEAR))  # round(500 * 256 / 375) = 341
  want = full[:, 42:298].astype(int)  # (341 - 256) // 2 = 42
  assert np.abs(got - want).max() <= 1 and np.abs(got - want).mean() < 0.01
