"""The paper's host-side transforms (alexnet_jax/data/transforms.py) against hand-computed
values and the step-by-step reference of tests/reference.py."""

import io

import numpy as np
import pytest

from alexnet_jax.data import transforms as T
from tests import helpers
from tests import reference

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


def test_resampling_only_the_kept_window_matches_resize_then_crop():
  from PIL import Image
  photo = helpers.photo().resize((500, 375), Image.BICUBIC)  # ImageNet-sized, landscape
  got = T.resize_and_centre_crop(photo).astype(int)
  full = np.asarray(photo.resize((341, 256), Image.BILINEAR))  # round(500 * 256 / 375) = 341
  want = full[:, 42:298].astype(int)  # (341 - 256) // 2 = 42
  assert np.abs(got - want).max() <= 1 and np.abs(got - want).mean() < 0.01


def test_decode_prepares_bytes_pil_images_and_arrays_alike():
  image = helpers.photo().crop((0, 0, 90, 60))
  data = helpers.encode(image, 'PNG')
  want = T.resize_and_centre_crop(image, 32)
  np.testing.assert_array_equal(T.decode(data, 32), want)
  np.testing.assert_array_equal(T.decode(np.asarray(image), 32), want)
  assert T.decode(data, 16, channels=1).shape == (16, 16, 1)
  assert T.decode(data, 0).shape == (60, 90, 3)  # only the colour mode
  with pytest.raises(T.DECODE_ERRORS):
    T.decode(data[:60], 32)  # truncated
  with pytest.raises(T.DECODE_ERRORS):
    T.decode(b'not an image', 32)


# ---- training views ----------------------------------------------------------------------


def test_random_crops_cover_every_allowed_position_and_nothing_else():
  image = np.arange(6 * 7, dtype=np.int32).reshape(6, 7, 1)  # pixel value = 7 * row + col
  draws = T.train_draws(np.random.default_rng(0), 600, channels=1, pca_sigma=0)
  seen = set()
  for top, left, _ in draws.windows(image.shape, 4):
    out = T.crop(image, int(top), int(left), 4)
    top, left = divmod(int(out[0, 0, 0]), 7)
    np.testing.assert_array_equal(out, image[top:top + 4, left:left + 4])
    seen.add((top, left))
  # 6 - 4 + 1 = 3 rows and 7 - 4 + 1 = 4 columns of positions.
  assert seen == {(t, l) for t in range(3) for l in range(4)}


def test_224_crops_of_256_range_over_0_to_32_equally():
  offsets = T.crop_windows((256, 256, 3), np.random.default_rng(1).random((4000, 2)), 224)
  for axis in (0, 1):
    counts = np.bincount(offsets[:, axis], minlength=33)
    assert len(counts) == 33 and counts.min() > 60  # all of 0..32, about 121 each
  # The place's edges: [0, 1/33) is position 0, [32/33, 1) position 32.
  edges = np.array([[0.0, 1 / 33 - 1e-12], [1 / 33, 32 / 33 - 1e-12], [32 / 33, 1 - 2**-53]])
  np.testing.assert_array_equal(T.crop_windows((256, 256, 3), edges, 224),
                                [[0, 0], [1, 31], [32, 32]])
  with pytest.raises(ValueError):
    T.crop_windows((200, 256, 3), edges, 224)


def test_crop_works_on_batches():
  batch = np.arange(2 * 5 * 5).reshape(2, 5, 5, 1)
  np.testing.assert_array_equal(T.crop(batch, 1, 2, 3), batch[:, 1:4, 2:5])
  with pytest.raises(ValueError, match='does not fit'):
    T.crop(batch, 3, 0, 3)


def test_train_draws_place_reflection_and_pca_in_order():
  image = np.arange(10 * 10 * 3, dtype=np.uint8).reshape(10, 10, 3)
  draws = T.train_draws(np.random.default_rng([7, 3]), 1000)
  windows = draws.windows(image.shape, 6)
  place, reflected, alpha = reference.batch_draws(7, 3, 1000)
  for j in range(1000):
    top, left = reference.crop_offset(place[j], 10, 10, 6)
    assert tuple(windows[j]) == (top, left, reflected[j])
    np.testing.assert_allclose(draws.shift[j], reference.pca_shift(alpha[j]), rtol=1e-5)
  assert 440 < windows[:, 2].sum() < 560  # half the time: 500 +- 16 (1 sd)
  # Switches: no crop, no reflection, no PCA; the places and coins are drawn all the same.
  plain = T.train_draws(np.random.default_rng([7, 3]), 1000, pca_sigma=0)
  np.testing.assert_array_equal(plain.place, draws.place)
  np.testing.assert_array_equal(plain.windows(image.shape, None, flip=False), 0)
  np.testing.assert_array_equal(plain.shift, 0)
  with pytest.raises(ValueError, match='RGB'):
    T.train_draws(np.random.default_rng(0), 4, channels=1)


# ---- PCA colour augmentation -----------------------------------------------------------


def test_pca_shift_by_hand():
  # alpha = (0.1, -0.2, 0.05); alpha * eigval = (0.02175, -0.00376, 0.000225).
  # Red: 255 * (-0.5675 * 0.02175 + 0.7192 * -0.00376 + 0.4009 * 0.000225) = -3.81406
  # Green: 255 * (-0.5808 * 0.02175 - 0.0045 * -0.00376 - 0.8140 * 0.000225) = -3.26365
  # Blue: 255 * (-0.5836 * 0.02175 - 0.6948 * -0.00376 + 0.4203 * 0.000225) = -2.54650
  shift = T.pca_shift(np.array([0.1, -0.2, 0.05]))
  np.testing.assert_allclose(shift, [-3.81406, -3.26365, -2.54650], atol=1e-4)


def test_pca_noise_has_the_configured_covariance():
  rng = np.random.default_rng(3)
  n = 40_000
  shifts = T.pca_shift(rng.normal(0, 0.1, (n, 3))).astype(np.float64)
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
  sigma2 = T.train_draws(rng, n, pca_sigma=0.2).shift
  np.testing.assert_allclose((sigma2 @ T.IMAGENET_EIGVEC).std(axis=0), 2 * std, rtol=0.02)


def test_pixel_statistics_recover_a_known_mean_and_covariance():
  # Pixels 128 +- 51 u +- 25.5 v (rounded), u = (1, 2, 2) / 3, v = (2, 1, -2) / 3, all four
  # signs equally often: covariance about (51/255)^2 u u^T + (25.5/255)^2 v v^T.
  u, v = np.array([1, 2, 2]) / 3, np.array([2, 1, -2]) / 3
  values = [np.round(128 + a * 51 * u + b * 25.5 * v) for a in (-1, 1) for b in (-1, 1)]
  images = np.array([np.broadcast_to(x, (2, 3, 3)) for x in values], np.uint8)
  stats = T.PixelStatistics()
  stats.add(images[:3])  # in two groups: the result must not depend on the grouping
  stats.add(images[3])
  assert stats.count == 4
  np.testing.assert_allclose(stats.mean(), images.mean(axis=0, dtype=np.float64), rtol=1e-15)
  eigval, eigvec = stats.pca()
  x = images.reshape(-1, 3) / 255.0  # population covariance (over n) in float64
  np.testing.assert_allclose(eigval, np.linalg.eigvalsh(np.cov(x.T, bias=True))[::-1],
                             atol=1e-12)
  np.testing.assert_allclose(eigval[:2], [0.04, 0.01], rtol=0.02)  # up to the rounding
  np.testing.assert_allclose(abs(eigvec[:, 0] @ u), 1, atol=1e-3)
  np.testing.assert_allclose(abs(eigvec[:, 1] @ v), 1, atol=1e-3)
  assert eigvec[0, 0] < 0 and eigvec[0, 1] < 0  # the card's sign: first entry negative
  np.testing.assert_allclose(eigvec.T @ eigvec, np.eye(3), atol=1e-12)
  saved = stats.as_dict()
  assert saved['mean'].dtype == np.float32 and saved['count'] == 4


def test_mean_to_subtract_per_pixel_and_per_channel():
  mean = np.array([[[10.0], [20.0]], [[30.0], [40.0]]])
  np.testing.assert_array_equal(T.mean_to_subtract(mean, 'pixel'), mean)
  np.testing.assert_array_equal(T.mean_to_subtract(mean, 'channel'), [25.0])
  np.testing.assert_array_equal(T.mean_to_subtract(mean, 'none'), [0.0])


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
  batch = np.stack([image, image + 100])  # a batch: the views on axis -4
  np.testing.assert_array_equal(T.ten_crop(batch, 3)[1], reference.ten_crop(image + 100, 3))
  unreflected = T.ten_crop_unreflected(image, 3)
  np.testing.assert_array_equal(unreflected[5:], unreflected[:5])
  np.testing.assert_array_equal(T.ten_crop_windows(image.shape, 3),
                                [[0, 0, 0], [0, 2, 0], [2, 0, 0], [2, 2, 0], [1, 1, 0],
                                 [0, 0, 1], [0, 2, 1], [2, 0, 1], [2, 2, 1], [1, 1, 1]])


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


def test_centre_view_is_the_centre_crop_of_the_prepared_image():
  image = np.random.default_rng(3).integers(0, 256, (40, 50, 3), dtype=np.uint8)
  view, window = T.centre_view(image, 40, 32)
  np.testing.assert_array_equal(view, image[4:36, 9:41])  # 50 -> central 40, then centre 32
  np.testing.assert_array_equal(window, [4, 4, 0])
  view, window = T.centre_view(image[:40, :40], 40)
  np.testing.assert_array_equal(view, image[:40, :40])
  np.testing.assert_array_equal(window, [0, 0, 0])


# ---- hostile images ----------------------------------------------------------------------------


def test_a_decompression_bomb_fails_at_its_header_in_bounded_memory():
  """A PNG of a few hundred kilobytes that decodes to 40000 x 40000 (1.6 G pixels) and one
  of 12000 x 12000 (8 bits, under Pillow's own limit): one of DECODE_ERRORS, saying why,
  from a process whose memory stays that of Python and Pillow."""
  import subprocess
  import sys
  script = ('from tests import helpers; from alexnet_jax.data import transforms\n'
            'for size, bits in ((40000, 1), (12000, 8)):\n'
            '  try:\n'
            '    transforms.decode(helpers.bomb_png(size, size, bits), 256)\n'
            '  except transforms.DECODE_ERRORS as e:\n'
            '    print(type(e).__name__, e)\n'
            # The peak of this process's own memory (ru_maxrss counts the forking parent's)
            "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")
  result = subprocess.run([sys.executable, '-c', script], cwd=helpers.ROOT, capture_output=True,
                          text=True, timeout=120, check=True)
  lines = result.stdout.splitlines()
  assert lines[0] == ('ImageTooLargeError it is 1,600,000,000 pixels, more than the 67,108,864 '
                      'that are decoded; resize it first'), lines
  assert lines[1].startswith('ImageTooLargeError it is 12000x12000 pixels'), lines
  assert int(lines[2]) < 100 * 1024, lines  # KiB: 40 here; decoding the second one takes 176
  assert 'DecompressionBombWarning' not in result.stderr


def test_a_photo_with_an_exif_orientation_is_read_upright():
  from PIL import Image
  upright = Image.new('RGB', (60, 40), (200, 30, 30))
  upright.paste((30, 30, 200), (0, 0, 30, 40))  # blue on the left
  stored = helpers.rotated_jpeg(upright)
  assert Image.open(io.BytesIO(stored)).size == (40, 60)  # the sensor's pixels, on their side
  got = T.decode(stored, 0).astype(int)
  assert got.shape == (40, 60, 3)
  want = np.asarray(upright, int)
  assert np.abs(got - want)[:, list(range(0, 25)) + list(range(35, 60))].max() <= 12
  prepared = T.decode(stored, 36)  # shorter side 36: the centre of the upright photo
  assert prepared.shape == (36, 36, 3) and prepared[18, 2, 2] > 150 and prepared[18, 33, 0] > 150
