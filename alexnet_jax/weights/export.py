"""`launch.py --mode=export`: a checkpoint's network written in another format, then run in
that format's runtime and checked against the JAX logits before it is put in place.

    onnx         onnx_export.py         onnxruntime, CPU
    torchvision  torchvision_export.py  torchvision.models.alexnet, strict load
    stablehlo    stablehlo_export.py    jax.export.deserialize
    safetensors  safetensors_export.py  safetensors.numpy, read back by name

Every request is checked before anything is read or written (the format, the path, whether
the format can express the config's network, the checkpoint and its config); the files are
written into a temporary folder beside the path, checked there, and only then renamed into
place, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from alexnet_jax.checkpoint import checkpointing
from alexnet_jax.checkpoint import compat
from alexnet_jax.checkpoint import params as checkpoint_params
from alexnet_jax.checkpoint import workdir as workdir_lib
from alexnet_jax.errors import UserError
from alexnet_jax.model import config as model_config
from alexnet_jax.weights import exportable
from alexnet_jax.weights import onnx_export
from alexnet_jax.weights import safetensors_export
from alexnet_jax.weights import stablehlo_export
from alexnet_jax.weights import torchvision_export

FORMATS = {'onnx': onnx_export, 'torchvision': torchvision_export,
           'stablehlo': stablehlo_export, 'safetensors': safetensors_export}
# Beside the file, the formats that cannot carry their own description write <path>.json.
SIDECARS = {'torchvision': '.json', 'stablehlo': '.json'}
# Fields that change what the network computes at inference (the other model fields: how it
# is trained or which form of a layer runs). `compat.check` compares only the shapes, which
# a changed LRN, padding or input size (224 and 227 both give 55x55 maps) can keep.
FORWARD_FIELDS = ('image_size', 'num_towers', 'conv_features', 'conv_kernels', 'conv1_stride',
                  'conv1_padding', 'fc_features', 'lrn', 'lrn_k', 'lrn_n', 'lrn_alpha',
                  'lrn_beta', 'lrn_across_towers', 'pool_window', 'pool_stride')


# Largest relative logit error of a written file that is put in place: float32 sums in
# another order differ by about 1e-6 of the largest logit (measured up to 1.5e-6, full size).
CHECK_TOLERANCE = 1e-4


class ExportError(UserError):
  """An export that cannot be made as asked."""


class ExportMismatch(RuntimeError):
  """A written file computes other logits than the project: a bug, reported with its
  traceback; the file is not put in place."""


def targets(fmt: str, path: str) -> list[str]:
  """The files an export to `path` writes."""
  return [path] + ([path + SIDECARS[fmt]] if fmt in SIDECARS else [])


def check_request(fmt: str | None, path: str | None, overwrite: bool) -> None:
  """The flags, before anything is read: a known format and a path that may be written."""
  if not fmt:
    raise ExportError(f'--mode=export needs --export_format, one of {", ".join(FORMATS)}.')
  if fmt not in FORMATS:
    raise ExportError(f'--export_format={fmt!r} is not a format this project exports; choose '
                      f'one of {", ".join(FORMATS)}.')
  if path is None or not path.strip():
    raise ExportError('--mode=export needs --export_path, the file to write (e.g. '
                      f'--export_path=alexnet.{fmt}).')
  for target in targets(fmt, path):
    if os.path.isdir(target):
      raise ExportError(f'--export_path: {target} is a directory; name a file to write.')
    if os.path.exists(target) and not overwrite:
      raise ExportError(f'{target} already exists; pass --overwrite to replace it, or name '
                        'another --export_path.')


def check_config(spec, meta: dict, path: str) -> None:
  """The network exported is the config's `spec`: it must compute what the checkpoint's
  computed (`compat.check` has compared the shapes; a changed LRN or padding keeps them)."""
  saved = compat.saved_spec(meta, path)  # the defaults for fields older checkpoints lack
  changed = [f'{"data" if k == "image_size" else "model"}.{k}={getattr(spec, k)!r} (the '
             f'checkpoint has {getattr(saved, k)!r})' for k in FORWARD_FIELDS
             if getattr(spec, k) != getattr(saved, k)]
  if changed:
    raise ExportError(f'The config changes what the network computes ({", ".join(changed)}) '
                      f'from the checkpoint {path}; export with the config it was trained '
                      'with.')


def restore(config, workdir: str, step: int | None) -> exportable.Network:
  """The network of the workdir's latest (or `step`'s) checkpoint, with its normalisation."""
  workdir_lib.check(workdir, writable=False)
  params, meta, inputs = checkpoint_params.restore_params(config, workdir, step,
                                                         reads_data=False)
  source = os.path.join(os.path.abspath(workdir), checkpointing.CHECKPOINT_DIR,
                        str(meta['step']))
  check_config(model_config.model_spec(config), meta, source)
  mean, scale = checkpointing.normalisation(meta, inputs)
  net = exportable.Network.of(params, model_config.model_spec(config), mean=mean, scale=scale,
                              class_names=meta.get('class_names'),
                              config=compat.config_dict(config), step=int(meta['step']),
                              source=source)
  if mean.ndim == 3 and min(mean.shape[:2]) < net.spec.image_size:
    raise ExportError(f'{source} holds a {mean.shape[0]}x{mean.shape[1]} mean image, smaller '
                      f'than the network\'s {net.spec.image_size}x{net.spec.image_size} input.')
  return net


def write_checked(fmt: str, net: exportable.Network, path: str) -> dict:
  """Writes `net` in `fmt` beside `path`, checks it there, then renames it into place."""
  module = FORMATS[fmt]
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  scratch = tempfile.mkdtemp(prefix='.export-', dir=folder)
  try:
    staged = os.path.join(scratch, os.path.basename(path))
    written = module.write(net, staged)
    result = module.check(net, staged)
    error = result['max_relative_error']
    if error is not None and not error <= CHECK_TOLERANCE:  # a bug here, not the user's input
      raise ExportMismatch(f'{fmt}: the written file\'s logits differ from the JAX logits by '
                           f'{error:.3g} (relative), more than {CHECK_TOLERANCE}')
    mode = 0o666 & ~_umask()  # as an ordinary file (safetensors writes 0600)
    for file, target in zip(written, targets(fmt, path)):
      os.chmod(file, mode)
      os.replace(file, target)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  return {'format': fmt, 'files': targets(fmt, path), 'step': net.step, 'source': net.source,
          'images': exportable.CHECK_IMAGES, **result}


def _umask() -> int:
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def export_checkpoint(config, workdir: str, step: int | None, fmt: str | None,
                      path: str | None, overwrite: bool = False) -> dict:
  """`launch.py --mode=export`: what was written and how it was checked."""
  check_request(fmt, path, overwrite)
  model_config.validate(config)
  refused = FORMATS[fmt].refusal(model_config.model_spec(config))
  if refused:
    raise ExportError(refused)
  net = restore(config, workdir, step)
  return write_checked(fmt, net, path)
