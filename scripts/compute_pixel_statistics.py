"""The training set's per-pixel mean and RGB PCA (eigenvalues, eigenvectors) for the
paper's mean subtraction and PCA colour augmentation, written to an .npz file.

    python scripts/compute_pixel_statistics.py --dataset=imagenet2012 \
        --data_dir=~/tensorflow_datasets --limit=50000 --out=imagenet_stats.npz
    python scripts/compute_pixel_statistics.py --folder=/data/my_images --out=stats.npz

Reads the prepared tfds dataset's train split through its data source (no TensorFlow);
images are prepared as in training (shorter side 256, central 256x256). Keys: mean
(256x256x3, 0-255), eigval and eigvec (0-1 scale, eigenvectors in columns, as the
reference card's constants), count, bad.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from alexnet_jax import datasets, streaming  # pylint: disable=wrong-import-position


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--dataset', default='imagenet2012')
  parser.add_argument('--folder', default=None, help='<folder>/<split>/<class>/<image>')
  parser.add_argument('--data_dir', default=None)
  parser.add_argument('--split', default='train')
  parser.add_argument('--prepared_size', type=int, default=256)
  parser.add_argument('--limit', type=int, default=None, help='a random sample of records')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--out', required=True)
  args = parser.parse_args()
  import tensorflow_datasets as tfds
  if args.folder:
    builder = datasets.image_folder_builder(args.folder, args.data_dir)
  else:
    builder = datasets.builder_for(args.dataset, args.data_dir, None)
  source = builder.as_data_source(args.split, decoders={'image': tfds.decode.SkipDecoding()})
  stats = streaming.pixel_statistics(source, args.prepared_size, args.limit, args.seed)
  np.savez(args.out, **stats)
  print(f'{stats["count"]} images ({stats["bad"]} unreadable); mean RGB '
        f'{stats["mean"].reshape(-1, 3).mean(axis=0).round(1).tolist()}; eigenvalues '
        f'{stats["eigval"].round(4).tolist()}; written to {args.out}')


if __name__ == '__main__':
  main()
