"""Writes Fashion-MNIST's idx files as a folder of class subfolders of PNG files, to try the
image-folder path (configs/image_folder.py) on real images offline:

    python -m scripts.fashion_mnist_folder --out=/tmp/fashion_folder
    python launch.py --config=configs/image_folder.py --workdir=runs/folder \
        --config.data.folder=/tmp/fashion_folder --config.data.num_classes=10

    # A small folder like a user's: 140 training and 60 test images per class, 32x32.
    python -m scripts.fashion_mnist_folder --out=/tmp/fashion_small --train_per_class=140 \
        --test_per_class=60 --size=32

Layout: <out>/train/<class>/<index>.png and <out>/test/<class>/<index>.png, from the first
directory holding the idx files (--manual_dir, Debian's dataset-fashion-mnist, or the subset
embedded in data/fashion_mnist). --offset picks a different slice of each class, --classes
some of the classes (scripts/fine_tuning_table.py: 0-4 to pretrain, 5-9 to fine-tune).
"""

import argparse
import pathlib

import numpy as np

from alexnet_jax.data import sources
from alexnet_jax.data.prepare import builders


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', required=True)
  parser.add_argument('--manual_dir', default=str(sources.EMBEDDED_FASHION_MNIST))
  parser.add_argument('--train_per_class', type=int, default=0, help='0: all')
  parser.add_argument('--test_per_class', type=int, default=0, help='0: all')
  parser.add_argument('--offset', type=int, default=0, help='skip this many per class first')
  parser.add_argument('--size', type=int, default=0, help='resize to size x size; 0: 28x28')
  parser.add_argument('--classes', default='', help="e.g. '0-4' or '5,7': only these; '': all")
  args = parser.parse_args()
  from PIL import Image
  source = sources.find_fashion_mnist_files(args.manual_dir)
  out = pathlib.Path(args.out)
  names = [n.replace('/', '-').replace(' ', '_') for n in builders.FASHION_MNIST_CLASSES]
  per_class = {'train': args.train_per_class, 'test': args.test_per_class}
  classes = parse_classes(args.classes, len(names))
  for split, (images, labels) in builders.FASHION_MNIST_FILES.items():
    images, labels = builders.read_idx(source / images), builders.read_idx(source / labels)
    stop = args.offset + per_class[split] if per_class[split] else None
    keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[args.offset:stop]
                                   for c in classes]))
    for c in classes:
      (out / split / names[c]).mkdir(parents=True, exist_ok=True)
    for i in keep:
      image = Image.fromarray(images[i], mode='L')
      if args.size:
        image = image.resize((args.size, args.size), Image.BICUBIC)
      image.save(out / split / names[labels[i]] / f'{i:05d}.png')
    print(f'{split}: {len(keep)} images into {out / split}')


def parse_classes(text: str, count: int) -> list[int]:
  """'0-4' or '5,7,9' (or '' for all) -> class indices."""
  if not text:
    return list(range(count))
  classes = []
  for part in text.split(','):
    lo, _, hi = part.partition('-')
    classes += range(int(lo), int(hi or lo) + 1)
  if not classes or min(classes) < 0 or max(classes) >= count:
    raise SystemExit(f'--classes={text}: classes are 0-{count - 1}.')
  return classes


if __name__ == '__main__':
  main()
