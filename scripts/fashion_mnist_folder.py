"""Writes Fashion-MNIST's idx files as a folder of class subfolders of PNG files, to try the
image-folder path (configs/image_folder.py) on real images offline:

    python -m scripts.fashion_mnist_folder --out=/tmp/fashion_folder
    python launch.py --config=configs/image_folder.py --workdir=runs/folder \
        --config.data.folder=/tmp/fashion_folder --config.data.num_classes=10

Layout: <out>/train/<class>/<index>.png and <out>/test/<class>/<index>.png, from the first
directory holding the idx files (--manual_dir, Debian's dataset-fashion-mnist, or the subset
embedded in data/fashion_mnist).
"""

import argparse
import pathlib

from alexnet_jax.data import builders, sources


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', required=True)
  parser.add_argument('--manual_dir', default=str(sources.EMBEDDED_FASHION_MNIST))
  args = parser.parse_args()
  from PIL import Image
  source = sources.find_fashion_mnist_files(args.manual_dir)
  out = pathlib.Path(args.out)
  names = [n.replace('/', '-').replace(' ', '_') for n in builders.FASHION_MNIST_CLASSES]
  for split, (images, labels) in builders.FASHION_MNIST_FILES.items():
    images, labels = builders.read_idx(source / images), builders.read_idx(source / labels)
    for name in names:
      (out / split / name).mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(images, labels)):
      Image.fromarray(image, mode='L').save(out / split / names[label] / f'{i:05d}.png')
    print(f'{split}: {len(labels)} images into {out / split}')


if __name__ == '__main__':
  main()
