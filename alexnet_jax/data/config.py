"""The data fields of a config, checked before anything is read: the pipeline, the
paper's preprocessing switches, storage, decoding and the paths the user gave."""

from __future__ import annotations

import os

from alexnet_jax.data import decoders
from alexnet_jax.data import device_decode
from alexnet_jax.data import geometry
from alexnet_jax.data import input_pipeline
from alexnet_jax.data import reading
from alexnet_jax.data import stream
from alexnet_jax.data import transforms
from alexnet_jax.errors import one_of
from alexnet_jax.errors import require


def validate(config, paths: bool = True) -> None:
  """Fails in one sentence on a data field that cannot work (nothing is read); `paths=False`
  for a command that reads no data (predictions)."""
  if paths:
    _validate_paths(config)
  d = config.data
  require(d.max_bad_records >= -1,
          f'data.max_bad_records={d.max_bad_records} must be -1 (any) or more.')
  if config.dataset == 'synthetic':
    for name in ('synthetic_train_examples', 'synthetic_eval_examples'):
      require(d[name] >= 1, f'data.{name}={d[name]} must be at least 1.')
  one_of('data.pipeline', d.pipeline, input_pipeline.PIPELINES)
  one_of('data.mean', d.mean, transforms.MEAN_MODES)
  one_of('data.std', d.std, transforms.STD_MODES)
  for mode, name in ((d.mean, 'mean_values'), (d.std, 'std_values')):
    values = tuple(d[name])
    require(mode != 'given' or (len(values) == d.channels and (
        name == 'mean_values' or min(values) > 0)),
            f'data.{name}={values} must give {d.channels} values (positive for the std) '
            f'with data.{name.split("_")[0]}=given.')
  for name in ('crop_pad', 'prefetch', 'prepared_size', 'crop_size', 'statistics_examples'):
    require(d[name] >= 0, f'data.{name}={d[name]} must not be negative.')
  for name in ('threads', 'processes', 'prepare_processes'):
    require(d[name] >= reading.AUTO, f'data.{name}={d[name]} must be -1 (from the usable '
            'cores) or a count, 0 or more.')
  require(d.pca_sigma >= 0, f'data.pca_sigma={d.pca_sigma} must not be negative.')
  if d.pipeline == 'memory':
    unsupported = {k: d[k] for k in ('prepared_size', 'crop_size', 'pca_sigma') if d[k]}
    fields = ', '.join(f'data.{k}={v}' for k, v in unsupported.items())
    require(not unsupported, f'{fields}: the memory pipeline uses images as they are stored '
            '(crops of the padded image, data.crop_pad); set them to 0 or '
            'data.pipeline=stream.')
    return
  require(config.dataset != 'synthetic',
          'dataset=synthetic is generated in memory; set data.pipeline=memory.')
  require(not d.crop_pad, f'data.crop_pad={d.crop_pad} is for data.pipeline=memory; the '
          'stream pipeline crops data.crop_size windows of the prepared image.')
  one_of('data.pca', d.pca, stream.PCA_SOURCES)
  require(not d.pca_sigma or d.channels == 3,
          'data.pca_sigma needs RGB images; set it to 0 for grey images.')
  size = d.crop_size or d.prepared_size or d.image_size
  require(size == d.image_size, f'The network input data.image_size={d.image_size} must '
          f'equal the view size {size} (data.crop_size, else data.prepared_size).')
  require(not d.prepared_size or d.crop_size <= d.prepared_size,
          f'data.crop_size={d.crop_size} is larger than data.prepared_size={d.prepared_size}.')
  one_of('data.storage', d.storage, ('jpeg', 'raw'))
  one_of('data.decode_on', d.decode_on, ('auto', *device_decode.PLACES))
  one_of('data.prepared_geometry', d.prepared_geometry, geometry.GEOMETRIES)
  require(d.prepared_geometry == 'centre_crop' or (d.prepare_once and d.prepared_size),
          'data.prepared_geometry=warp stores the warped images once; set '
          'data.prepare_once=True and data.prepared_size.')
  if d.decode_on == 'device':
    one_of('data.decoder', d.decoder, device_decode.DEVICE_DECODERS)
    require(d.prepare_once and d.prepared_size and d.crop_size and d.storage == 'jpeg'
            and d.processes in (0, reading.AUTO),
            'data.decode_on=device decodes the JPEGs stored once at data.prepared_size and '
            'cuts data.crop_size views in the step; set data.prepare_once=True, '
            'data.prepared_size, data.crop_size, data.storage=jpeg and data.processes=0.')
    require(device_decode.unavailable(d.decoder) is None,
            device_decode.unavailable(d.decoder) or '')
  else:
    one_of('data.decoder', d.decoder, decoders.DECODERS[:2])
  require(d.storage == 'jpeg' or (d.prepare_once and d.prepared_size),
          'data.storage=raw stores the images prepared once at data.prepared_size; set '
          'data.prepare_once=True and data.prepared_size.')
  require(1 <= d.storage_quality <= 100,
          f'data.storage_quality={d.storage_quality} must be a JPEG quality, 1 to 100.')
  require(decoders.unavailable(d.decoder) is None, decoders.unavailable(d.decoder) or '')
  require(not reading.needs_statistics(d) or d.prepared_size or d.statistics,
          f'data.mean={d.mean!r}, data.std={d.std!r} or data.pca=statistics needs images of '
          'one size: set data.prepared_size, or data.mean=none and data.std=none with '
          'data.pca=imagenet.')


def _validate_paths(config) -> None:
  """The paths the config names, before anything is read or written: a path the user gave is
  the one used, or the run stops in one sentence (a mistyped data.manual_dir once trained on
  the embedded data without a word). An empty one (an unset shell variable) would mean the
  current directory."""
  d = config.data
  for name in ('data_dir', 'manual_dir', 'folder'):
    value = d[name]
    require(value is None or value.strip() != '',
            f'data.{name} is empty (an unset shell variable?); name a directory, or leave '
            'the field out.')
  if d.manual_dir:
    require(config.dataset not in ('synthetic', 'image_folder'),
            f'data.manual_dir={d.manual_dir} is not read with dataset={config.dataset} '
            f'(data.folder is, for image_folder); leave it out.')
    require(os.path.isdir(os.path.expanduser(d.manual_dir)),
            f'data.manual_dir={d.manual_dir} is not a directory; name the directory that holds '
            'the dataset\'s files.')
  if d.folder:
    require(config.dataset == 'image_folder',
            f'data.folder={d.folder} is read only with dataset=image_folder, not '
            f'dataset={config.dataset}; leave it out, or use configs/image_folder.py.')
    require(os.path.isdir(os.path.expanduser(d.folder)),
            f'data.folder={d.folder} is not a directory; name the folder of '
            '<split>/<class>/<image> files.')
  if d.data_dir:
    path = os.path.abspath(os.path.expanduser(d.data_dir))
    require(not os.path.exists(path) or os.path.isdir(path),
            f'data.data_dir={d.data_dir} is a file, not a directory of datasets.')
    parent = path
    while not os.path.exists(parent):
      parent = os.path.dirname(parent)
    require(parent == path or (os.path.isdir(parent) and os.access(parent, os.W_OK | os.X_OK)),
            f'data.data_dir={d.data_dir} does not exist and cannot be created ({parent} is not '
            'a writable directory); name a directory that exists or can be made.')
  if d.statistics:
    require(d.pipeline == 'stream', f'data.statistics={d.statistics} is read only with '
            'data.pipeline=stream; leave it out.')
    require(os.path.isfile(os.path.expanduser(d.statistics)),
            f'data.statistics={d.statistics} is not a file (write one with '
            '`python -m scripts.compute_pixel_statistics`).')
