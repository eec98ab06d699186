"""Where the images come from: tensorflow-datasets builders and their sources.

`fashion_mnist` resolves, in order, to
  1. a prepared tfds `fashion_mnist` in `data_dir` (e.g. made by `tfds build`),
  2. tfds's idx files (`train-images-idx3-ubyte.gz`, ...) in the first of
     `manual_dir`, Debian's `/usr/share/datasets/fashion-mnist`
     (package dataset-fashion-mnist: the full 70,000 images) and the subset
     embedded in this repository (`data/fashion_mnist`, 12,000 images),
     built once into `data_dir` by the tfds builder `FashionMnistIdx` below.
Debian re-gzips the idx files, so their hashes differ from the ones tfds's own
`fashion_mnist` builder records and that builder cannot use them offline;
`FashionMnistIdx` reads the same files with numpy and stores the same features.

Datasets are read through tfds data sources (array_record, random access), so
training needs neither TensorFlow nor the network.
"""

from __future__ import annotations

import gzip
import logging
import pathlib
import struct

import numpy as np

from alexnet_jax.errors import ConfigError, DatasetNotFoundError

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
EMBEDDED_FASHION_MNIST = REPO_ROOT / 'data' / 'fashion_mnist'
DEBIAN_FASHION_MNIST = pathlib.Path('/usr/share/datasets/fashion-mnist')
FASHION_MNIST_FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}
FASHION_MNIST_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal',
                         'Shirt', 'Sneaker', 'Bag', 'Ankle boot')


def read_idx(path: pathlib.Path) -> np.ndarray:
  """Reads a (gzipped) idx file: big-endian header, then uint8 data."""
  opener = gzip.open if str(path).endswith('.gz') else open
  with opener(path, 'rb') as f:
    zero, dtype_code, ndim = struct.unpack('>HBB', f.read(4))
    if zero != 0 or dtype_code != 0x08:
      raise ValueError(f'{path} is not a uint8 idx file.')
    dims = struct.unpack('>' + 'I' * ndim, f.read(4 * ndim))
    return np.frombuffer(f.read(), np.uint8).reshape(dims)


def idx_counts(directory: pathlib.Path) -> dict[str, int]:
  """Number of examples of each split, read from the label files' headers."""
  counts = {}
  for split, (_, labels) in FASHION_MNIST_FILES.items():
    with gzip.open(directory / labels, 'rb') as f:
      counts[split] = struct.unpack('>II', f.read(8))[1]
  return counts


def find_fashion_mnist_files(manual_dir: str | None) -> pathlib.Path:
  """The first directory holding the four idx files, or one sentence saying where to put them."""
  candidates = [pathlib.Path(manual_dir).expanduser()] if manual_dir else []
  candidates += [DEBIAN_FASHION_MNIST, EMBEDDED_FASHION_MNIST]
  names = [n for pair in FASHION_MNIST_FILES.values() for n in pair]
  for d in candidates:
    if all((d / n).is_file() for n in names):
      return d
  raise DatasetNotFoundError(
      f'Fashion-MNIST not found: put {", ".join(names)} in data.manual_dir '
      f'(or install the Debian package dataset-fashion-mnist); looked in '
      f'{", ".join(str(c) for c in candidates)}.')


def _builder_class():
  """Defined lazily so that importing this module does not import tfds."""
  import tensorflow_datasets as tfds
  from PIL import Image

  class FashionMnistIdx(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Fashion-MNIST from its idx files in a directory (manual_dir)."""

    VERSION = tfds.core.Version('1.0.0')
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        'Put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, '
        't10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz in manual_dir.')

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          description='Fashion-MNIST (Zalando, MIT licence) read from idx files.',
          features=tfds.features.FeaturesDict({
              'image': tfds.features.Image(shape=(28, 28, 1)),
              'label': tfds.features.ClassLabel(names=FASHION_MNIST_CLASSES),
          }),
          supervised_keys=('image', 'label'),
          disable_shuffling=True,  # keep the files' order: example i is image i
          homepage='https://github.com/zalandoresearch/fashion-mnist')

    def _split_generators(self, dl_manager):
      d = pathlib.Path(dl_manager.manual_dir)
      return {split: self._generate_examples(d / images, d / labels)
              for split, (images, labels) in FASHION_MNIST_FILES.items()}

    def _generate_examples(self, images_path, labels_path):
      images, labels = read_idx(images_path), read_idx(labels_path)
      for i, (image, label) in enumerate(zip(images, labels)):
        # PIL images are PNG-encoded by tfds without TensorFlow.
        yield i, {'image': Image.fromarray(image, mode='L'), 'label': int(label)}

  return FashionMnistIdx


def fashion_mnist_builder(data_dir: str | None, manual_dir: str | None):
  """A prepared tfds builder for Fashion-MNIST, building it from idx files if needed."""
  import tensorflow_datasets as tfds

  official = tfds.builder('fashion_mnist', data_dir=data_dir)
  if official.is_prepared():
    return official
  source = find_fashion_mnist_files(manual_dir)
  counts = idx_counts(source)
  name = 'full' if counts == {'train': 60_000, 'test': 10_000} else (
      f'subset{counts["train"]}x{counts["test"]}')
  cls = _builder_class()
  builder = cls(data_dir=data_dir, config=tfds.core.BuilderConfig(name=name),
                file_format='array_record')
  if not builder.is_prepared():
    logging.info('Building tfds dataset %s from %s into %s', builder.name, source,
                 builder.data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(source)))
  return builder


def builder_for(name: str, data_dir: str | None, manual_dir: str | None):
  """The prepared tfds builder of a dataset name."""
  import tensorflow_datasets as tfds

  if name == 'fashion_mnist':
    return fashion_mnist_builder(data_dir, manual_dir)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # unknown name: tfds lists close matches
    raise DatasetNotFoundError(f'dataset={name!r} is not a tfds dataset: {e}') from None
  if not builder.is_prepared():
    instructions = getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None)
    where = (f'put its manual-download files in data.manual_dir ({manual_dir or "not set"})'
             if instructions else f'prepare it with `tfds build {name} --data_dir=...`')
    hint = ''
    if name == 'imagenet2012':
      hint = (' (ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from '
              'image-net.org)')
    raise DatasetNotFoundError(
        f'Dataset {name} is not prepared in {builder.data_dir}: {where}{hint}.')
  return builder


def load_arrays(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
  """All images (N, H, W, C uint8) and labels of a small split, decoded once.

  Reads the array_record data source without TensorFlow when the dataset was
  stored as array_record, else through tf.data (TensorFlow installed).
  """
  shape = builder.info.features['image'].shape
  if None in shape:
    raise ConfigError(
        f'{builder.name} has images of varying size, which this in-memory loader cannot '
        'batch; it needs fixed-size images (the streaming 256x256 ImageNet pipeline is '
        'not part of this version).')
  if builder.info.file_format.value == 'array_record':
    source = builder.as_data_source(split=split)
    examples = source.__getitems__(range(len(source)))
    images = np.stack([ex['image'] for ex in examples])
    labels = np.array([ex['label'] for ex in examples], np.int32)
  else:
    try:
      import tensorflow_datasets as tfds
      ds = builder.as_dataset(split=split, batch_size=-1)
      data = tfds.as_numpy(ds)
    except ImportError as e:
      raise DatasetNotFoundError(
          f'{builder.name} in {builder.data_dir} is stored as {builder.info.file_format.value}, '
          'which needs TensorFlow to read; rebuild it with --file_format=array_record.') from e
    images, labels = data['image'], data['label'].astype(np.int32)
  return images, labels


def class_names(builder) -> list[str]:
  return list(builder.info.features['label'].names)

