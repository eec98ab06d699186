"""Writes the embedded Fashion-MNIST subset in data/fashion_mnist/ (run once; committed).

Takes the first N training and first M test images of the full idx files (e.g.
Debian's dataset-fashion-mnist package) and writes them in the same gzipped idx
format, so the same tfds builder reads the subset and the full data.

  python -m scripts.make_fashion_mnist_subset /usr/share/datasets/fashion-mnist data/fashion_mnist
"""

import gzip
import pathlib
import struct
import sys

import numpy as np

N_TRAIN, N_TEST = 10_000, 2_000


def read_idx(path):
  with gzip.open(path, 'rb') as f:
    magic, n = struct.unpack('>II', f.read(8))
    dims = struct.unpack('>' + 'I' * ((magic & 0xFF) - 1), f.read(4 * ((magic & 0xFF) - 1)))
    return magic, np.frombuffer(f.read(), np.uint8).reshape(n, *dims)


def write_idx(path, magic, array):
  with gzip.GzipFile(path, 'wb', mtime=0) as f:
    f.write(struct.pack('>II', magic, array.shape[0]))
    f.write(struct.pack('>' + 'I' * (array.ndim - 1), *array.shape[1:]))
    f.write(array.tobytes())


def main(src, dst):
  src, dst = pathlib.Path(src), pathlib.Path(dst)
  dst.mkdir(parents=True, exist_ok=True)
  for prefix, n in (('train', N_TRAIN), ('t10k', N_TEST)):
    for kind in ('images-idx3', 'labels-idx1'):
      name = f'{prefix}-{kind}-ubyte.gz'
      magic, array = read_idx(src / name)
      write_idx(dst / name, magic, array[:n])
      print(name, array[:n].shape, np.bincount(array[:n].ravel()) if kind.startswith('labels') else '')


if __name__ == '__main__':
  main(*sys.argv[1:3])
