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
import os
import pathlib
import struct

import numpy as np

from alexnet_jax.errors import BadDataError, ConfigError, DatasetNotFoundError

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


IMAGENET_TARS = ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')


def _iter_tar(path):
  """(name, file object) of each member of a tar, without TensorFlow (tfds's
  `dl_manager.iter_archive` opens paths with tf.io.gfile)."""
  import tensorflow_datasets as tfds
  with open(path, 'rb') as f:
    yield from tfds.download.iter_archive(f, tfds.download.ExtractMethod.TAR_STREAM)


def _imagenet_builder_class():
  """tfds's own imagenet2012 builder with its three TensorFlow calls replaced.

  tfds 4.9.10's `imagenet2012` builder cannot prepare without TensorFlow: it checks the tars
  with `tf.io.gfile.exists`, reads the validation labels and the val tar's names through
  `tf.io.gfile.GFile`, opens the archives through `dl_manager.iter_archive` (tf.io.gfile
  again), and re-encodes its 22 CMYK JPEGs and 1 PNG with `tf.image`. This subclass keeps
  everything else (features, label names, validation labels, `_generate_examples`, version
  5.1.0) and writes to the same `<data_dir>/imagenet2012/5.1.0`, so `tfds.builder(
  'imagenet2012', data_dir=...)` reads the result as prepared."""
  import io
  import tarfile

  from etils import epath
  import tensorflow_datasets as tfds
  from tensorflow_datasets.datasets.imagenet2012 import imagenet2012_dataset_builder as official
  from tensorflow_datasets.datasets.imagenet2012 import imagenet_common

  class Imagenet2012NoTF(official.Builder, skip_registration=True):
    name = 'imagenet2012'
    pkg_dir_path = epath.Path(official.__file__).parent  # metadata of the official builder

    def _split_generators(self, dl_manager):
      train, val = (os.path.join(dl_manager.manual_dir, n) for n in IMAGENET_TARS)
      labels_path = tfds.core.tfds_path(imagenet_common._VALIDATION_LABELS_FNAME)  # pylint: disable=protected-access
      labels = labels_path.read_text().strip().splitlines()
      with tarfile.open(val) as tar:  # labels are listed in the order of the sorted names
        val_labels = dict(zip(sorted(tar.getnames()), labels))
      return [
          tfds.core.SplitGenerator(name=tfds.Split.TRAIN,
                                   gen_kwargs={'archive': _iter_tar(train)}),
          tfds.core.SplitGenerator(name=tfds.Split.VALIDATION,
                                   gen_kwargs={'archive': _iter_tar(val),
                                               'validation_labels': val_labels}),
      ]

    def _fix_image(self, image_fname, image):
      """The official fix (CMYK and PNG files to RGB JPEG, quality 100) with Pillow."""
      if image_fname not in official.CMYK_IMAGES and image_fname not in official.PNG_IMAGES:
        return image
      from PIL import Image
      out = io.BytesIO()
      Image.open(image).convert('RGB').save(out, 'JPEG', quality=100)
      out.seek(0)
      return out

  return Imagenet2012NoTF


def prepare_imagenet2012(data_dir: str | None, manual_dir: str | None):
  """The prepared tfds imagenet2012 (train and validation, array_record) in `data_dir`,
  built without TensorFlow from ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in
  `manual_dir` if it is not prepared yet. The JPEGs are stored as they are in the tars."""
  import tensorflow_datasets as tfds

  official = tfds.builder('imagenet2012', data_dir=data_dir)
  if official.is_prepared():
    return official
  where = pathlib.Path(manual_dir).expanduser() if manual_dir else None
  if where is None or not all((where / n).is_file() for n in IMAGENET_TARS):
    raise DatasetNotFoundError(
        f'ImageNet not found: put {IMAGENET_TARS[0]} and {IMAGENET_TARS[1]} (from '
        f'image-net.org) in data.manual_dir ({where or "not set"}), or a prepared tfds '
        f'imagenet2012 in data.data_dir ({official.data_dir}).')
  builder = _imagenet_builder_class()(data_dir=data_dir, file_format='array_record')
  logging.info('Building tfds imagenet2012 from %s into %s', where, builder.data_dir)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(where)))
  return tfds.builder('imagenet2012', data_dir=data_dir)


IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.ppm', '.webp', '.tif', '.tiff')


def _folder_files(split_dir: pathlib.Path) -> dict[str, list[pathlib.Path]]:
  return {c.name: sorted(f for f in c.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
          for c in sorted(split_dir.iterdir()) if c.is_dir()}


def _folder_builder_class():
  """A tfds builder for <root>/<split>/<class>/<image>: tfds.folder_dataset.ImageFolder's
  layout, built into array_record without TensorFlow (ImageFolder itself lists the folder
  with tf.io.gfile and reads only through tf.data). The files are stored as they are."""
  import tensorflow_datasets as tfds

  class ImageFolderNoTF(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Images in class subfolders of split folders."""

    name = 'image_folder'
    VERSION = tfds.core.Version('1.0.0')

    def __init__(self, *, root: str, **kwargs):
      self._root = pathlib.Path(root).expanduser().resolve()
      split_dirs = [d for d in sorted(self._root.iterdir()) if d.is_dir()] if (
          self._root.is_dir()) else []
      self._splits = {d.name: _folder_files(d) for d in split_dirs}
      self._splits = {k: v for k, v in self._splits.items() if any(v.values())}
      self._classes = sorted({c for files in self._splits.values() for c in files})
      import hashlib
      # The config names the folder and its listing: a changed folder is a new dataset.
      listing = '\n'.join(f'{s}/{c}/{f.name}' for s, files in self._splits.items()
                          for c, fs in files.items() for f in fs)
      digest = hashlib.sha256(f'{self._root}\n{listing}'.encode()).hexdigest()[:12]
      super().__init__(config=tfds.core.BuilderConfig(name=f'{self._root.name}_{digest}'),
                       **kwargs)
      # tfds pickles a builder (e.g. its data source, for grain's worker processes) as its
      # __init__ arguments: ours, not the config made from them.
      self._original_state = dict(kwargs, root=root)

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          description=f'Images in class subfolders of {self._root}.',
          features=tfds.features.FeaturesDict({
              'image': tfds.features.Image(),
              'label': tfds.features.ClassLabel(names=self._classes),
              'file_name': tfds.features.Text(),
          }),
          supervised_keys=('image', 'label'),
          disable_shuffling=True)

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples(files) for split, files in self._splits.items()}

    def _generate_examples(self, files):
      for label, paths in files.items():
        for path in paths:
          name = f'{label}/{path.name}'
          yield name, {'image': path.read_bytes(), 'label': label, 'file_name': name}

  return ImageFolderNoTF


def image_folder_builder(root: str, data_dir: str | None):
  """The prepared tfds dataset of a folder <root>/<split>/<class>/<image> (splits such as
  train/ and test/), built into `data_dir` on first use."""
  path = pathlib.Path(root).expanduser()
  cls = _folder_builder_class()
  if not path.is_dir():
    raise DatasetNotFoundError(
        f'Image folder {path} not found: put the images in {path}/<split>/<class>/ '
        '(e.g. train/cat/1.jpg, test/cat/2.jpg) and set data.folder to it.')
  builder = cls(root=str(path), data_dir=data_dir, file_format='array_record')
  if not builder._splits:  # pylint: disable=protected-access
    raise DatasetNotFoundError(
        f'No images in {path}/<split>/<class>/: put them in folders such as '
        f'{path}/train/<class>/ and {path}/test/<class>/ ({", ".join(IMAGE_SUFFIXES)}).')
  if not builder.is_prepared():
    logging.info('Building tfds dataset from %s into %s', path, builder.data_dir)
    builder.download_and_prepare()
  return builder


def record_name(record) -> str:
  """' (<file name>)' of a record that has one (image folders), else ''."""
  name = record.get('file_name', b'') if isinstance(record, dict) else b''
  name = name.decode() if isinstance(name, bytes) else str(name)
  return f' ({name})' if name else ''


def _prepared_builder_class():
  """A tfds builder that stores another prepared dataset's images as the paper did: shorter
  side to `size`, central size x size crop (`transforms.resize_and_centre_crop`), JPEG."""
  import io

  import tensorflow_datasets as tfds

  from alexnet_jax import transforms

  class PreparedImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Images of a source dataset, resized and centre-cropped once."""

    name = 'prepared_images'
    VERSION = tfds.core.Version('1.0.0')

    def __init__(self, *, source, size: int, quality: int, max_bad_records: int = 100,
                 **kwargs):
      self._source, self._size, self._quality = source, size, quality
      self._max_bad, self._bad = max_bad_records, 0
      config = tfds.core.BuilderConfig(
          name=f'{source.name}_{source.builder_config.name + "_" if source.builder_config else ""}'
               f'{source.version}_{size}_q{quality}'.replace('.', '_'))
      super().__init__(config=config, **kwargs)
      self._original_state = dict(kwargs, source=source, size=size, quality=quality,
                                  max_bad_records=max_bad_records)

    def _info(self):
      features = self._source.info.features
      return tfds.core.DatasetInfo(
          builder=self,
          description=(f'{self._source.name} {self._source.version}: shorter side '
                       f'{self._size}, central {self._size}x{self._size}, JPEG quality '
                       f'{self._quality}, 4:4:4.'),
          features=tfds.features.FeaturesDict({
              'image': tfds.features.Image(
                  shape=(self._size, self._size, features['image'].shape[-1] or 3),
                  encoding_format='jpeg'),
              'label': tfds.features.ClassLabel(names=features['label'].names),
          }),
          supervised_keys=('image', 'label'),
          disable_shuffling=True)  # keep the source's order

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples(split) for split in self._source.info.splits}

    def _generate_examples(self, split):
      from PIL import Image
      source = self._source.as_data_source(
          split, decoders={'image': tfds.decode.SkipDecoding()})
      channels = self._source.info.features['image'].shape[-1] or 3
      for i in range(len(source)):
        example = source[i]
        image = example['image']
        try:
          pil = Image.open(io.BytesIO(image)) if isinstance(image, bytes) else image
          array = transforms.resize_and_centre_crop(pil, self._size, channels)
        except transforms.DECODE_ERRORS as e:
          self._bad += 1
          name = record_name(example)
          logging.warning('Not storing %s record %d%s, which fails to decode (%d so far): %s',
                          split, i, name, self._bad, e)
          if self._bad > self._max_bad >= 0:
            raise BadDataError(f'{self._bad} records of {self._source.name} failed to decode, '
                               f'more than data.max_bad_records={self._max_bad}; the last: '
                               f'{split} record {i}{name}: {e}.') from e
          continue
        out = io.BytesIO()
        Image.fromarray(array[..., 0] if channels == 1 else array).save(
            out, 'JPEG', quality=self._quality, subsampling=0)  # 4:4:4: full-resolution colour
        yield i, {'image': out.getvalue(), 'label': int(example['label'])}

  return PreparedImages


def prepare_resized(source_builder, data_dir: str | None, size: int = 256,
                    quality: int = 95, max_bad_records: int = 100):
  """The paper's stored images ("optionally prepared once and stored"): every split of the
  prepared `source_builder` with images resized so that the shorter side is `size` and
  centre-cropped to size x size, JPEG-encoded, as a tfds array_record dataset in
  `data_dir`, built on first use. Training then decodes small images and only crops.
  Records that fail to decode are left out with a warning, up to `max_bad_records` (-1: any),
  past which the preparation stops."""
  cls = _prepared_builder_class()
  builder = cls(source=source_builder, size=size, quality=quality, data_dir=data_dir,
                file_format='array_record', max_bad_records=max_bad_records)
  if not builder.is_prepared():
    logging.info('Storing %s at %dx%d into %s', source_builder.name, size, size,
                 builder.data_dir)
    builder.download_and_prepare()
  return builder


def process_zero_first(make):
  """`make()` (which may build a dataset into data_dir) on process 0 first, then, after a
  barrier, on the other processes, which then find it prepared where data_dir is shared
  (on hosts with their own disks, each builds its own copy after the barrier)."""
  import jax
  if jax.process_count() == 1:
    return make()
  from jax.experimental import multihost_utils
  result = make() if jax.process_index() == 0 else None
  multihost_utils.sync_global_devices('alexnet_jax: dataset prepared on process 0')
  return result if jax.process_index() == 0 else make()


def builder_for(name: str, data_dir: str | None, manual_dir: str | None,
                folder: str | None = None):
  """The prepared tfds builder of a dataset name: fashion_mnist and imagenet2012 are built
  from their files on first use, image_folder from `folder`; any other tfds name must be
  prepared in `data_dir` already."""
  import tensorflow_datasets as tfds

  if name == 'fashion_mnist':
    return fashion_mnist_builder(data_dir, manual_dir)
  if name == 'imagenet2012':
    return prepare_imagenet2012(data_dir, manual_dir)
  if name == 'image_folder':
    if not folder:
      raise ConfigError('dataset=image_folder needs data.folder, a folder of '
                        '<split>/<class>/<image> files.')
    return image_folder_builder(folder, data_dir)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # unknown name: tfds lists close matches
    raise DatasetNotFoundError(f'dataset={name!r} is not a tfds dataset: {e}') from None
  if not builder.is_prepared():
    instructions = getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None)
    where = (f'put its manual-download files in data.manual_dir ({manual_dir or "not set"})'
             if instructions else f'prepare it with `tfds build {name} --data_dir=...`')
    raise DatasetNotFoundError(f'Dataset {name} is not prepared in {builder.data_dir}: {where}.')
  return builder


def load_arrays(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
  """All images (N, H, W, C uint8) and labels of a small split, decoded once.

  Reads the array_record data source without TensorFlow when the dataset was
  stored as array_record, else through tf.data (TensorFlow installed).
  """
  shape = builder.info.features['image'].shape
  if None in shape:
    raise ConfigError(
        f'{builder.name} has images of varying size, which data.pipeline=memory cannot batch; '
        'use data.pipeline=stream (images resized to data.prepared_size).')
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

