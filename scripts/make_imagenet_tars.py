"""ILSVRC-2012-shaped tars for trying the ImageNet path without ImageNet: the benchmark's
input (`benchmarks.imagenet_prep`), and a preparation past tfds's 1 GB buffer.

    python -m scripts.make_imagenet_tars --out=/data/fake_imagenet --train_images=10000 \
        --val_images=500 --classes=100

writes, in the official layout (reference card, "ILSVRC-2012 as distributed"):

  ILSVRC2012_img_train.tar  one tar per class, <wnid>.tar, holding <wnid>_<n>.JPEG
  ILSVRC2012_img_val.tar    ILSVRC2012_val_00000001.JPEG ... flat, not in sorted order

The classes are `--classes` of tfds's 1,000 wnids, spread over its list, each with an equal
share of the training images; a class of tfds's CMYK and PNG lists that is chosen gets that
file, as CMYK JPEG or PNG, under its official name. Validation images take their labels from
tfds's list, so they belong to any of the 1,000 classes. Each image is a distinct crop of a
real photograph (matplotlib's grace_hopper.jpg) with fine grain, 500 pixels wide and 330-400
high, JPEG quality 96: about 110 kB, ImageNet's mean, which takes as long to decode.
"""

from __future__ import annotations

import argparse
import io
import os
import tarfile
import time

import numpy as np

WIDTH, HEIGHTS, QUALITY, GRAIN = 500, (330, 401), 96, 6.0


class Images:
  """Distinct ImageNet-sized JPEGs, drawn from one generator."""

  def __init__(self, seed: int = 0):
    import matplotlib.cbook
    from PIL import Image
    self.photo = np.asarray(Image.open(
        matplotlib.cbook.get_sample_data('grace_hopper.jpg')).convert('RGB'), np.int16)
    self.rng = np.random.default_rng(seed)
    # Grain drawn once, cut at random places: drawing it per image would take 3x the encode.
    self.grain = self.rng.normal(0, GRAIN, (2 * HEIGHTS[1], 2 * WIDTH, 3)).astype(np.int16)

  def array(self) -> np.ndarray:
    h = int(self.rng.integers(*HEIGHTS))
    y = int(self.rng.integers(0, self.photo.shape[0] - h + 1))
    x = int(self.rng.integers(0, self.photo.shape[1] - WIDTH + 1))
    gy, gx = (int(self.rng.integers(0, n - m + 1)) for n, m in zip(self.grain.shape, (h, WIDTH)))
    image = self.photo[y:y + h, x:x + WIDTH] + self.grain[gy:gy + h, gx:gx + WIDTH]
    return np.clip(image[:, ::-1] if self.rng.random() < 0.5 else image, 0, 255).astype(
        np.uint8)

  def encoded(self, fmt: str = 'JPEG') -> bytes:
    from PIL import Image
    image, out = Image.fromarray(self.array()), io.BytesIO()
    if fmt == 'CMYK':
      image.convert('CMYK').save(out, 'JPEG', quality=QUALITY)
    else:
      image.save(out, fmt, **({'quality': QUALITY} if fmt == 'JPEG' else {}))
    return out.getvalue()


def _add(tar, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size, info.mtime = len(data), 1_300_000_000  # fixed: the same tars for the same flags
  tar.addfile(info, io.BytesIO(data))


def chosen_classes(n: int) -> list[str]:
  """`n` of tfds's 1,000 wnids, spread evenly over its list."""
  from alexnet_jax.data.prepare import imagenet_plan
  names = imagenet_plan.class_names()
  return [names[i] for i in np.linspace(0, len(names) - 1, n).round().astype(int)]


def make_tars(out: str, train_images: int, val_images: int, classes: int,
              seed: int = 0) -> dict:
  """Writes the two tars into `out` (module docstring); returns their sizes and counts."""
  from tensorflow_datasets.datasets.imagenet2012 import imagenet2012_dataset_builder as official
  special = {n.split('_')[0]: (n, 'CMYK') for n in official.CMYK_IMAGES}
  special.update({n.split('_')[0]: (n, 'PNG') for n in official.PNG_IMAGES})
  os.makedirs(out, exist_ok=True)
  images = Images(seed)
  wnids = chosen_classes(classes)
  shares = np.diff(np.linspace(0, train_images, len(wnids) + 1).round().astype(int))
  train = os.path.join(out, 'ILSVRC2012_img_train.tar')
  with tarfile.open(train, 'w') as outer:
    for wnid, count in zip(wnids, shares.tolist()):
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode='w') as tar:
        for i in range(count):
          name, fmt = (special[wnid] if i == 0 and wnid in special
                       else (f'{wnid}_{i + 1}.JPEG', 'JPEG'))
          _add(tar, name, images.encoded(fmt))
      _add(outer, f'{wnid}.tar', inner.getvalue())
  val = os.path.join(out, 'ILSVRC2012_img_val.tar')
  with tarfile.open(val, 'w') as tar:
    for i in reversed(range(val_images)):  # not in sorted order, as in the real tar
      _add(tar, f'ILSVRC2012_val_{i + 1:08d}.JPEG', images.encoded())
  return {'train_bytes': os.path.getsize(train), 'val_bytes': os.path.getsize(val),
          'train_images': int(shares.sum()), 'val_images': val_images, 'classes': len(wnids)}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--out', required=True, help='directory for the two tars')
  parser.add_argument('--train_images', type=int, default=10_000)
  parser.add_argument('--val_images', type=int, default=500)
  parser.add_argument('--classes', type=int, default=100, help='of the 1,000 (1 to 1000)')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  if not 1 <= args.classes <= 1000 or args.train_images < args.classes or not (
      1 <= args.val_images <= 50_000):
    parser.error('--classes must be 1 to 1000, --train_images at least --classes, '
                 '--val_images 1 to 50000.')
  start = time.perf_counter()
  made = make_tars(args.out, args.train_images, args.val_images, args.classes, args.seed)
  each = made['train_bytes'] / made['train_images'] / 1e3
  print(f'{made["train_images"]:,} training images in {made["classes"]} classes '
        f'({made["train_bytes"] / 1e9:.2f} GB, {each:.0f} kB an image) and {made["val_images"]:,} validation images '
        f'({made["val_bytes"] / 1e9:.3f} GB) in {args.out} ({time.perf_counter() - start:.0f} s)')


if __name__ == '__main__':
  main()
