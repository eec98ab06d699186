"""The tfds builders this project adds, none of which needs TensorFlow to prepare or read.

  FashionMnistIdx    Fashion-MNIST from its idx files (Debian re-gzips them, so tfds's own
                     builder, which checks their hashes, cannot use them offline)
  Imagenet2012NoTF   tfds's own imagenet2012 builder with its TensorFlow calls replaced
  ImageFolderNoTF    <root>/<split>/<class>/<image> (tfds's ImageFolder lists files with
                     tf.io.gfile and reads only through tf.data)
  PreparedImages     another prepared dataset's images stored once at a fixed size, as the
                     paper stored ImageNet (shorter side 256, central 256x256, JPEG)

Each stores array_record, which `builder.as_data_source` reads with random access. Importing
this module imports tfds; `alexnet_jax.data.sources` imports it only when a dataset is built.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import pathlib
import struct
import tarfile

from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds
from tensorflow_datasets.datasets.imagenet2012 import imagenet2012_dataset_builder as official
from tensorflow_datasets.datasets.imagenet2012 import imagenet_common

from alexnet_jax.data import geometry
from alexnet_jax.data import transforms
from alexnet_jax.data.prepare import progress
from alexnet_jax.data.prepare import shard_writer
from alexnet_jax.data.prepare import storage
from alexnet_jax.errors import BadDataError

FASHION_MNIST_FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}
FASHION_MNIST_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal',
                         'Shirt', 'Sneaker', 'Bag', 'Ankle boot')
IMAGENET_TARS = ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')
# ILSVRC-2012 as distributed (reference card): the tars' sizes and their images.
IMAGENET_TAR_BYTES = dict(zip(IMAGENET_TARS, (147_897_477_120, 6_744_924_160)))
IMAGENET_IMAGES = {'train': 1_281_167, 'validation': 50_000}
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.ppm', '.webp', '.tif', '.tiff')


def read_idx(path) -> np.ndarray:
  """Reads a (gzipped) idx file: big-endian header, then uint8 data."""
  opener = gzip.open if str(path).endswith('.gz') else open
  with opener(path, 'rb') as f:
    zero, dtype_code, ndim = struct.unpack('>HBB', f.read(4))
    if zero != 0 or dtype_code != 0x08:
      raise ValueError(f'{path} is not a uint8 idx file.')
    dims = struct.unpack('>' + 'I' * ndim, f.read(4 * ndim))
    return np.frombuffer(f.read(), np.uint8).reshape(dims)


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
    return {split: self._generate_examples(d / images, d / labels, split)
            for split, (images, labels) in FASHION_MNIST_FILES.items()}

  def _generate_examples(self, images_path, labels_path, split):
    images, labels = read_idx(images_path), read_idx(labels_path)
    for i, (image, label) in progress.counted(enumerate(zip(images, labels)), 'Fashion-MNIST',
                                              split, len(labels)):
      # PIL images are PNG-encoded by tfds without TensorFlow.
      yield i, {'image': Image.fromarray(image, mode='L'), 'label': int(label)}


def _iter_tar(path):
  """(name, file object) of each member of a tar, without TensorFlow (tfds's
  `dl_manager.iter_archive` opens paths with tf.io.gfile)."""
  with open(path, 'rb') as f:
    yield from tfds.download.iter_archive(f, tfds.download.ExtractMethod.TAR_STREAM)


class Imagenet2012NoTF(official.Builder, skip_registration=True):
  """tfds's own imagenet2012 builder with its three TensorFlow calls replaced.

  tfds 4.9.10's `imagenet2012` builder cannot prepare without TensorFlow: it checks the tars
  with `tf.io.gfile.exists`, reads the validation labels and the val tar's names through
  `tf.io.gfile.GFile`, opens the archives through `dl_manager.iter_archive` (tf.io.gfile
  again), and re-encodes its 22 CMYK JPEGs and 1 PNG with `tf.image`. This subclass keeps
  everything else (features, label names, validation labels, `_generate_examples`, version
  5.1.0) and writes to the same `<data_dir>/imagenet2012/5.1.0`, so `tfds.builder(
  'imagenet2012', data_dir=...)` reads the result as prepared."""

  name = 'imagenet2012'
  pkg_dir_path = epath.Path(official.__file__).parent  # metadata of the official builder

  def _split_generators(self, dl_manager):
    train, val = (os.path.join(dl_manager.manual_dir, n) for n in IMAGENET_TARS)
    labels_path = tfds.core.tfds_path(imagenet_common._VALIDATION_LABELS_FNAME)  # pylint: disable=protected-access
    labels = labels_path.read_text().strip().splitlines()
    with tarfile.open(val) as tar:  # labels are listed in the order of the sorted names
      val_labels = dict(zip(sorted(tar.getnames()), labels))
    totals = imagenet_counts(train, val)
    return [
        tfds.core.SplitGenerator(name=tfds.Split.TRAIN,
                                 gen_kwargs={'archive': _iter_tar(train),
                                             'total': totals['train']}),
        tfds.core.SplitGenerator(name=tfds.Split.VALIDATION,
                                 gen_kwargs={'archive': _iter_tar(val),
                                             'validation_labels': val_labels,
                                             'total': totals['validation']}),
    ]

  def _fix_image(self, image_fname, image):
    """The official fix (CMYK and PNG files to RGB JPEG, quality 100) with Pillow."""
    if image_fname not in official.CMYK_IMAGES and image_fname not in official.PNG_IMAGES:
      return image
    return io.BytesIO(shard_writer.official_fix(image_fname, image.read()))

  def _generate_examples(self, archive, validation_labels=None, total=0):
    """The official examples, with a progress line every few seconds."""
    split = 'validation' if validation_labels else 'train'
    yield from progress.counted(super()._generate_examples(archive, validation_labels),
                                'imagenet2012 (full size)', split, total)


def imagenet_counts(train_tar: str, val_tar: str) -> dict[str, int]:
  """The images of each split: known for ILSVRC-2012 as distributed (its tars' sizes),
  else counted from the tars' headers."""
  from alexnet_jax.data.prepare import tar_index
  if all(os.path.getsize(p) == IMAGENET_TAR_BYTES[os.path.basename(p)]
         for p in (train_tar, val_tar)):
    return dict(IMAGENET_IMAGES)
  return {'train': sum(len(tar_index.members(train_tar, c.offset, c.size))
                       for c in tar_index.class_tars(train_tar)),
          'validation': len(tar_index.members(val_tar))}


def folder_files(split_dir: pathlib.Path) -> dict[str, list[pathlib.Path]]:
  """{class: sorted image files} of one split folder."""
  return {c.name: sorted(f for f in c.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
          for c in sorted(split_dir.iterdir()) if c.is_dir()}


class ImageFolderNoTF(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Images in class subfolders of split folders, stored as they are (no re-encoding)."""

  name = 'image_folder'
  VERSION = tfds.core.Version('1.0.0')

  def __init__(self, *, root: str, **kwargs):
    self.root = pathlib.Path(root).expanduser().resolve()
    split_dirs = [d for d in sorted(self.root.iterdir()) if d.is_dir()] if (
        self.root.is_dir()) else []
    splits = {d.name: folder_files(d) for d in split_dirs}
    self.splits = {k: v for k, v in splits.items() if any(v.values())}
    self._classes = sorted({c for files in self.splits.values() for c in files})
    # The config names the folder and its listing: a changed folder is a new dataset.
    listing = '\n'.join(f'{s}/{c}/{f.name}' for s, files in self.splits.items()
                        for c, fs in files.items() for f in fs)
    digest = hashlib.sha256(f'{self.root}\n{listing}'.encode()).hexdigest()[:12]
    super().__init__(config=tfds.core.BuilderConfig(name=f'{self.root.name}_{digest}'),
                     **kwargs)
    # tfds pickles a builder (e.g. its data source, for grain's worker processes) as its
    # __init__ arguments: ours, not the config made from them.
    self._original_state = dict(kwargs, root=root)

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=f'Images in class subfolders of {self.root}.',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(),
            'label': tfds.features.ClassLabel(names=self._classes),
            'file_name': tfds.features.Text(),
        }),
        supervised_keys=('image', 'label'),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split, files)
            for split, files in self.splits.items()}

  def _generate_examples(self, split, files):
    paths = [(label, path) for label, paths in files.items() for path in paths]
    for label, path in progress.counted(paths, f'the image folder {self.root}', split,
                                        len(paths)):
      name = f'{label}/{path.name}'
      yield name, {'image': path.read_bytes(), 'label': label, 'file_name': name}


class PreparedImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Images of a source dataset, resized and centre-cropped once
  (`transforms.resize_and_centre_crop`) and stored as JPEG of `quality`, or with quality 0
  as raw uint8 arrays (data.storage=raw: `decoders.to_raw`, read with no decoding). Undecodable records of the
  training split are left out (up to `max_bad_records`); any in another split is an error."""

  name = 'prepared_images'
  # 1.1.0: photos with an EXIF orientation stored upright; images over
  # transforms.MAX_IMAGE_PIXELS left out as undecodable.
  VERSION = tfds.core.Version('1.1.0')

  def __init__(self, *, source, size: int, quality: int, max_bad_records: int = 100,
               train_split: str = 'train', geometry: str = 'centre_crop', **kwargs):
    self._source, self._size, self._quality = source, size, quality
    self._raw, self._geometry = not quality, geometry
    self._max_bad, self._bad, self._train_split = max_bad_records, 0, train_split
    warp = '_warp' if geometry == 'warp' else ''  # centre_crop: the name stores had before
    config = tfds.core.BuilderConfig(
        name=f'{source.name}_{source.builder_config.name + "_" if source.builder_config else ""}'
             f'{source.version}_{size}_{f"q{quality}" if quality else "raw"}{warp}'.replace(
                 '.', '_'))
    super().__init__(config=config, **kwargs)
    self._original_state = dict(kwargs, source=source, size=size, quality=quality,
                                max_bad_records=max_bad_records, train_split=train_split,
                                geometry=geometry)

  def _info(self):
    features = self._source.info.features
    shape = 'warped to' if self._geometry == 'warp' else (
        f'shorter side {self._size}, central')
    return tfds.core.DatasetInfo(
        builder=self,
        description=(f'{self._source.name} {self._source.version}: {shape} '
                     f'{self._size}x{self._size}, ' +
                     ('raw uint8.' if self._raw else f'JPEG quality {self._quality}, 4:4:4.')),
        features=shard_writer.stored_features(self._size, features['image'].shape[-1] or 3,
                                              self._raw, names=features['label'].names),
        supervised_keys=('image', 'label'),
        disable_shuffling=True)  # keep the source's order

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in self._source.info.splits}

  def _generate_examples(self, split):
    source = storage.ReadableSource(self._source.as_data_source(
        split, decoders={'image': tfds.decode.SkipDecoding()}), self._source.data_dir)
    channels = self._source.info.features['image'].shape[-1] or 3
    for i in progress.counted(range(len(source)), f'{self._source.name} at '
                              f'{self._size}x{self._size}', split, len(source)):
      example = source[i]
      try:
        array = geometry.prepare(example['image'], self._size, channels, self._geometry)
      except transforms.DECODE_ERRORS as e:
        name = transforms.record_name(example)
        if split != self._train_split:
          raise BadDataError(f'{split} record {i}{name} of {self._source.name} failed to '
                             f'decode ({e}); the evaluation split must be readable in '
                             'full.') from e
        self._bad += 1
        logging.warning('Not storing %s record %d%s, which fails to decode (%d so far): %s',
                        split, i, name, self._bad, e)
        if self._bad > self._max_bad >= 0:
          raise BadDataError(f'{self._bad} records of {self._source.name} failed to decode, '
                             f'more than data.max_bad_records={self._max_bad}; the last: '
                             f'{split} record {i}{name}: {e}.') from e
        continue
      yield i, {'image': shard_writer.encode(array, self._quality),
                'label': int(example['label'])}
