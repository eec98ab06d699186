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
embedded in data/fashion_mnist). --offset picks a different slice of each class.
"""

import argparse
import pathlib

import numpy as np

from alexnet_jax.data import builders, sources


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', required=True)
  parser.add_argument('--manual_dir', default=str(sources.EMBEDDED_FASHION_MNIST))
  parser.add_argument('--train_per_class', type=int, default=0, help='0: all')
  parser.add_argument('--test_per_class', type=int, default=0, help='0: all')
  parser.add_argument('--offset', type=int, default=0, help='skip this many per class first')
  parser.add_argument('--size', type=int, default=0, help='resize to size x size; 0: 28x28')
  args = parser.parse_args()
  from PIL import Image
  source = sources.find_fashion_mnist_files(args.manual_dir)
  out = pathlib.Path(args.out)
  names = [n.replace('/', '-').replace(' ', '_') for n in builders.FASHION_MNIST_CLASSES]
  per_class = {'train': args.train_per_class, 'test': args.test_per_class}
  for split, (images, labels) in builders.FASHION_MNIST_FILES.items():
    images, labels = builders.read_idx(source / images), builders.read_idx(source / labels)
    keep = np.arange(len(labels))
    if per_class[split]:
      keep = np.concatenate([np.flatnonzero(labels == c)[args.offset:args.offset + per_class[split]]
                             for c in range(len(names))])
    for name in names:
      (out / split / name).mkdir(parents=True, exist_ok=True)
    for i in keep:
      image = Image.fromarray(images[i], mode='L')
      if args.size:
        image = image.resize((args.size, args.size), Image.BICUBIC)
      image.save(out / split / names[labels[i]] / f'{i:05d}.png')
    print(f'{split}: {len(keep)} images into {out / split}')


if __name__ == '__main__':
  main()
