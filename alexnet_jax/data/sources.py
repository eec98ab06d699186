"""Where the images come from: prepared tfds builders by dataset name, and their splits.

`builder_for(name, ...)` returns a prepared tfds builder, building it on first use:

  fashion_mnist  a prepared tfds `fashion_mnist` in data_dir, else its idx files
                 (train-images-idx3-ubyte.gz, ...) in the first of data.manual_dir, Debian's
                 /usr/share/datasets/fashion-mnist (package dataset-fashion-mnist: the full
                 70,000 images) and the subset embedded in this repository (data/fashion_mnist,
                 12,000 images), built into data_dir (`builders.FashionMnistIdx`)
  imagenet2012   the manual download (ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar) in
                 manual_dir, prepared by tfds's own builder without TensorFlow
  image_folder   data.folder, laid out as <split>/<class>/<image>
  any other      a tfds dataset already prepared in data_dir as array_record

Splits are read through tfds data sources (array_record, random access): training needs
neither TensorFlow nor the network. tfds is imported only when a function here needs it.
"""

from __future__ import annotations

import gzip
import logging
import os
import pathlib
import re
import struct

import numpy as np

from alexnet_jax.data.prepare import storage
from alexnet_jax.errors import BadDataError
from alexnet_jax.errors import ConfigError
from alexnet_jax.errors import DatasetNotFoundError

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
EMBEDDED_FASHION_MNIST = REPO_ROOT / 'data' / 'fashion_mnist'
DEBIAN_FASHION_MNIST = pathlib.Path('/usr/share/datasets/fashion-mnist')
FASHION_MNIST_IDX = ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz',
                     't10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')
IMAGENET_TARS = ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')


def _construct(make, *args, **kwargs):
  """`make(*args, **kwargs)`: a tfds builder, constructed with its temp files in a directory
  removed afterwards.

  tfds 4.9 constructs a builder whose dataset is not prepared in its data_dir by copying its
  GCS metadata into `tempfile.mkdtemp()` (`DatasetInfo.initialize_from_bucket`), which it
  never removes: one empty /tmp/tmp*tfds per builder and run, thousands on a cluster's
  shared /tmp. Builders are constructed on the main thread during setup, before any loader
  thread starts, so swapping the process's temp dir for that moment is safe."""
  import shutil
  import tempfile
  saved = tempfile.tempdir
  own = tempfile.mkdtemp(prefix='alexnet_jax_tfds_')
  tempfile.tempdir = own
  try:
    return make(*args, **kwargs)
  finally:
    tempfile.tempdir = saved
    shutil.rmtree(own, ignore_errors=True)


def idx_counts(directory: pathlib.Path) -> dict[str, int]:
  """Number of examples of each split, read from the label files' headers."""
  counts = {}
  for split, labels in (('train', FASHION_MNIST_IDX[1]), ('test', FASHION_MNIST_IDX[3])):
    with gzip.open(directory / labels, 'rb') as f:
      counts[split] = struct.unpack('>II', f.read(8))[1]
  return counts


def find_fashion_mnist_files(manual_dir: str | None) -> pathlib.Path:
  """The directory holding the four idx files: `manual_dir` where the user gives one (never
  another in its place), else the first of Debian's and the embedded subset; or one sentence
  saying where to put them."""
  candidates = ([pathlib.Path(manual_dir).expanduser()] if manual_dir
                else [DEBIAN_FASHION_MNIST, EMBEDDED_FASHION_MNIST])
  for d in candidates:
    if all((d / n).is_file() for n in FASHION_MNIST_IDX):
      return d
  raise DatasetNotFoundError(
      f'Fashion-MNIST not found: put {", ".join(FASHION_MNIST_IDX)} in data.manual_dir '
      f'(or install the Debian package dataset-fashion-mnist); looked in '
      f'{", ".join(str(c) for c in candidates)}.')


def fashion_mnist_builder(data_dir: str | None, manual_dir: str | None,
                          allow_no_locks: bool = False):
  """A prepared tfds builder for Fashion-MNIST, building it from idx files if needed."""
  import tensorflow_datasets as tfds

  official = _construct(tfds.builder, 'fashion_mnist', data_dir=data_dir)
  if official.is_prepared():
    storage.check(official)
    return official
  from alexnet_jax.data.prepare import builders
  source = find_fashion_mnist_files(manual_dir)
  counts = idx_counts(source)
  name = 'full' if counts == {'train': 60_000, 'test': 10_000} else (
      f'subset{counts["train"]}x{counts["test"]}')
  make = lambda: _construct(builders.FashionMnistIdx, data_dir=data_dir,
                            config=tfds.core.BuilderConfig(name=name), file_format='array_record')
  return storage.ready(make, f'Fashion-MNIST from {source}', allow_no_locks,
                       download_config=tfds.download.DownloadConfig(manual_dir=str(source)),
                       estimate=sum(counts.values()) * 1024)  # a PNG of 28x28 is under 1 kB


def prepare_imagenet2012(data_dir: str | None, manual_dir: str | None,
                         allow_no_locks: bool = False):
  """The prepared tfds imagenet2012 (train and validation, array_record) in `data_dir`,
  built without TensorFlow from ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in
  `manual_dir` if it is not prepared yet (or is damaged). The JPEGs are stored as they are
  in the tars."""
  import tensorflow_datasets as tfds

  official = _construct(tfds.builder, 'imagenet2012', data_dir=data_dir)
  where = pathlib.Path(manual_dir).expanduser() if manual_dir else None
  tars = where is not None and all((where / n).is_file() for n in IMAGENET_TARS)
  if official.is_prepared() and not tars:
    storage.check(official)  # nothing to rebuild it from
    return official
  if not tars:
    raise DatasetNotFoundError(
        f'ImageNet not found: put {IMAGENET_TARS[0]} and {IMAGENET_TARS[1]} (from '
        f'image-net.org) in data.manual_dir ({where or "not set"}), or a prepared tfds '
        f'imagenet2012 in data.data_dir ({official.data_dir}).')
  from alexnet_jax.data.prepare import builders
  make = lambda: _construct(builders.Imagenet2012NoTF, data_dir=data_dir,
                            file_format='array_record')
  storage.ready(make, f'imagenet2012 from {where}', allow_no_locks,
                download_config=tfds.download.DownloadConfig(manual_dir=str(where)),
                estimate=sum(os.path.getsize(where / n) for n in IMAGENET_TARS))
  return _construct(tfds.builder, 'imagenet2012', data_dir=data_dir)


def image_folder_builder(root: str, data_dir: str | None, splits: tuple[str, ...] = (),
                         allow_no_locks: bool = False):
  """The prepared tfds dataset of a folder <root>/<split>/<class>/<image> (splits such as
  train/ and test/), built into `data_dir` on first use. `splits` (train first) must be
  there; a class with images in another split but none in the first is warned about."""
  path = pathlib.Path(root).expanduser()
  if not path.is_dir():
    raise DatasetNotFoundError(
        f'Image folder {path} not found: put the images in {path}/<split>/<class>/ '
        '(e.g. train/cat/1.jpg, test/cat/2.jpg) and set data.folder to it.')
  from alexnet_jax.data.prepare import builders
  make = lambda: _construct(builders.ImageFolderNoTF, root=str(path), data_dir=data_dir,
                            file_format='array_record')
  builder = make()
  missing = [s for s in splits if s not in builder.splits]
  if not builder.splits or missing:
    raise DatasetNotFoundError(
        f'No images in {path}/{missing[0] if missing else "<split>"}/<class>/: put them in '
        f'folders such as {path}/{splits[0] if splits else "train"}/<class>/ and '
        f'{path}/{splits[-1] if splits else "test"}/<class>/ '
        f'({", ".join(builders.IMAGE_SUFFIXES)}; data.train_split, data.eval_split).')
  if splits:
    trained = {c for c, files in builder.splits[splits[0]].items() if files}
    for split in splits[1:]:
      for cls in sorted(c for c, files in builder.splits[split].items()
                        if files and c not in trained):
        logging.warning('Class %r has images in %s/%s/ but none in %s/%s/: the network '
                        'cannot learn it.', cls, path, split, path, splits[0])
  files = [f for split in builder.splits.values() for fs in split.values() for f in fs]
  return storage.ready(make, f'the image folder {path}', allow_no_locks,
                       estimate=sum(f.stat().st_size + 256 for f in files))


def prepare_resized(source_builder, data_dir: str | None, size: int = 256,
                    quality: int = 95, max_bad_records: int = 100,
                    train_split: str = 'train', allow_no_locks: bool = False,
                    geometry: str = 'centre_crop'):
  """The paper's stored images ("optionally prepared once and stored"): every split of the
  prepared `source_builder` with images brought to size x size by `geometry` (the paper's
  shorter side to `size` and central crop, or Caffe's warp: `geometry`), JPEG-encoded at
  `quality` (0: stored raw, undecoded uint8 arrays, `decoders.from_raw`), as a tfds
  array_record dataset in `data_dir`, built on first use. Training then decodes small images
  and only crops.
  Records of `train_split` that fail to decode are left out with a warning, up to
  `max_bad_records` (-1: any), past which the preparation stops; one in any other split
  stops it at once, naming the file: leaving it out would change what evaluation reports."""
  from alexnet_jax.data.prepare import builders
  make = lambda: _construct(builders.PreparedImages, source=source_builder, size=size,
                            quality=quality, data_dir=data_dir, file_format='array_record',
                            max_bad_records=max_bad_records, train_split=train_split,
                            geometry=geometry)
  what = f'{source_builder.name} at {size}x{size}'
  if make().is_prepared():
    builder = storage.ready(make, what, allow_no_locks)
  else:
    builder = storage.ready(make, what, allow_no_locks, estimate=_stored_bytes(
        source_builder, size, quality, geometry, train_split))
  for split, info in source_builder.info.splits.items():
    stored = builder.info.splits[split].num_examples if split in builder.info.splits else 0
    if split != train_split and stored != info.num_examples:
      raise BadDataError(f'{builder.data_dir} holds {stored} of the {info.num_examples} '
                         f'images of the {split} split (stored by an earlier version that left '
                         'out images that failed to decode); delete it to store it again.')
  return builder


def _stored_bytes(source_builder, size: int, quality: int, geometry_name: str,
                  train_split: str, sample: int = 16) -> int:
  """About what the store of `source_builder` at `size` takes: every record's bytes as
  measured on `sample` training images spread over the split (raw: known)."""
  from alexnet_jax.data import geometry
  from alexnet_jax.data import transforms
  from alexnet_jax.data.prepare import shard_writer
  count = sum(s.num_examples for s in source_builder.info.splits.values())
  channels = source_builder.info.features['image'].shape[-1] or 3
  if not quality:
    return count * (size * size * channels + 64)
  source = split_source(source_builder, train_split)
  features = shard_writer.stored_features(size, channels, False, num_classes=1)
  sizes = []
  for i in np.linspace(0, len(source) - 1, min(sample, len(source))).astype(int).tolist():
    try:
      image = geometry.prepare(source[i]['image'], size, channels, geometry_name)
    except transforms.DECODE_ERRORS:
      continue
    sizes.append(len(features.serialize_example(
        {'image': shard_writer.encode(image, quality), 'label': 0})))
  return int(count * 1.1 * (np.mean(sizes) if sizes else size * size * channels))


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
                folder: str | None = None, splits: tuple[str, ...] = (),
                allow_no_locks: bool = False):
  """The prepared tfds builder of a dataset name (module docstring); `splits` (train first)
  are checked where that is cheap (image folders). Datasets built here are built by one
  process at a time and checked before use (`storage`)."""
  import tensorflow_datasets as tfds

  if name == 'fashion_mnist':
    return fashion_mnist_builder(data_dir, manual_dir, allow_no_locks)
  if name == 'imagenet2012':
    return prepare_imagenet2012(data_dir, manual_dir, allow_no_locks)
  if name == 'image_folder':
    if not folder:
      raise ConfigError('dataset=image_folder needs data.folder, a folder of '
                        '<split>/<class>/<image> files.')
    return image_folder_builder(folder, data_dir, splits, allow_no_locks)
  try:
    builder = _construct(tfds.builder, name, data_dir=data_dir)
  except tfds.core.DatasetNotFoundError as e:  # an unknown name; tfds names a close match
    hint = re.search(r'Did you mean: \S+ -> (\S+)', str(e))
    raise DatasetNotFoundError(
        f'dataset={name!r} is not a tfds dataset' + (f' (did you mean {hint.group(1)}?)' if hint
                                                       else '')
        + '; name one of tfds.list_builders(), or fashion_mnist, imagenet2012, image_folder, '
        'synthetic.') from None
  except ValueError as e:  # a name tfds cannot parse; any other ValueError is a bug
    if not str(e).startswith('Parsing builder name string'):
      raise
    raise DatasetNotFoundError(f'dataset={name!r} is not a dataset name (name[/config]'
                               '[:version]).') from None
  if not builder.is_prepared():
    instructions = getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None)
    where = (f'put its manual-download files in data.manual_dir ({manual_dir or "not set"})'
             if instructions else f'prepare it with `tfds build {name} --data_dir=...`')
    raise DatasetNotFoundError(f'Dataset {name} is not prepared in {builder.data_dir}: {where}.')
  storage.check(builder)
  return builder


def split_source(builder, split: str, decode_images: bool = False):
  """A split as a random-access tfds data source (array_record, no TensorFlow). Images stay
  encoded bytes unless `decode_images`."""
  import tensorflow_datasets as tfds
  if split not in builder.info.splits:
    raise ConfigError(f'{builder.name} has no split {split!r}; it has '
                      f'{", ".join(sorted(builder.info.splits))} (data.train_split, '
                      'data.eval_split).')
  if builder.info.file_format.value != 'array_record':
    raise ConfigError(f'{builder.name} in {builder.data_dir} is stored as '
                      f'{builder.info.file_format.value}, which needs TensorFlow to read; '
                      f'rebuild it with `tfds build {builder.name} --file_format=array_record`.')
  if decode_images:
    return storage.ReadableSource(builder.as_data_source(split), builder.data_dir)
  return storage.ReadableSource(
      builder.as_data_source(split, decoders={'image': tfds.decode.SkipDecoding()}),
      builder.data_dir)


def load_arrays(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
  """All images (N, H, W, C uint8) and labels of a small split of images of one size,
  decoded once."""
  if None in builder.info.features['image'].shape:
    raise ConfigError(
        f'{builder.name} has images of varying size, which data.pipeline=memory cannot batch; '
        'use data.pipeline=stream (images resized to data.prepared_size).')
  source = split_source(builder, split, decode_images=True)
  examples = source.__getitems__(range(len(source)))
  images = np.stack([ex['image'] for ex in examples])
  labels = np.array([ex['label'] for ex in examples], np.int32)
  return images, labels


def class_names(builder) -> tuple[str, ...]:
  return tuple(builder.info.features['label'].names)
