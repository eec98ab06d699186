"""Helpers the tests share: running launch.py as a user does, reading what a run wrote, and
small real images (crops of matplotlib's sample photograph) laid out as datasets."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pathlib
import struct
import subprocess
import sys
import tarfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
# A narrow two-tower network on 32x32 images: every layer, join and augmentation, fast.
SPEC_KWARGS = dict(num_classes=10, image_size=32, in_channels=3, conv_features=(8, 16, 24, 24, 16),
                   conv_kernels=(3, 3, 3, 3, 3), conv1_stride=1, conv1_padding='same',
                   fc_features=32, init_std=0.05)
SMALL_MODEL = ['--config.data.image_size=32', '--config.data.num_classes=10',
               '--config.model.conv_features=(8,16,24,24,16)',
               '--config.model.conv_kernels=(3,3,3,3,3)', '--config.model.conv1_stride=1',
               '--config.model.conv1_padding=same', '--config.model.fc_features=32',
               '--config.data.synthetic_train_examples=64',
               '--config.data.synthetic_eval_examples=32', '--config.batch_size=16',
               '--config.eval_batch_size=16']


# ---- running launch.py ---------------------------------------------------------------------

# A persistent XLA cache that every launch of the session shares unless it names its own
# (conftest.py sets it): the same small networks compile once for all the test modules.
SHARED_XLA_CACHE = 'ALEXNET_JAX_TEST_XLA_CACHE'


def launch(workdir, *overrides, config='configs/synthetic.py', devices=1, faults='',
           xla_cache=None, background=False, timeout=600, env=None):
  """launch.py in a subprocess on `devices` CPU devices; with `faults`, through
  tests/faults.py, which injects them (e.g. 'kill_after_step=3'). A shared `xla_cache` makes
  reruns load their executables instead of compiling again. `env`: more variables."""
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             JAX_PLATFORMS='cpu', **(env or {}))
  xla_cache = xla_cache or os.environ.get(SHARED_XLA_CACHE)
  if xla_cache is not None:
    env.update(JAX_COMPILATION_CACHE_DIR=str(xla_cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  entry = ['-m', 'tests.faults', f'--faults={faults}'] if faults else ['launch.py']
  args = [sys.executable, *entry, f'--config={config}', f'--workdir={workdir}', *overrides]
  proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  return proc if background else finish(proc, timeout)


def launch_config(*args):
  """The config launch.py would run with `args` (`--config=...`, `--config.<field>=...`),
  parsed by launch.py's own flags on a copy, and its model and data fields checked (the
  paths it names are not looked at): nothing is read or run."""
  from absl import flags

  from alexnet_jax.data import config as data_config
  from alexnet_jax.model import config as model_config
  import launch as entry
  fv = flags.FlagValues()
  argv = ['launch.py', *args]
  entry.define_flags(fv, argv)
  fv(argv)
  config = fv.config
  model_config.validate(config)
  data_config.validate(config, paths=False)
  return config


def run_script(module: str, *args, timeout=600, env=None) -> subprocess.CompletedProcess:
  """`python -m module args` from the repository root on one CPU device."""
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1',
             JAX_PLATFORMS='cpu', **(env or {}))
  return subprocess.run([sys.executable, '-m', module, *map(str, args)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout, check=False)


def free_port() -> int:
  import socket
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def launch_processes(workdir, *overrides, num_processes=2, **kwargs):
  """`num_processes` processes of one run (gloo on 127.0.0.1), one CPU device each, started
  in the background: the towers split across the processes."""
  port = free_port()
  return [launch(workdir, *overrides, f'--config.distributed.coordinator_address=127.0.0.1:{port}',
                 f'--config.distributed.num_processes={num_processes}',
                 f'--config.distributed.process_id={i}', background=True, devices=1, **kwargs)
          for i in range(num_processes)]


def finish(proc, timeout=600):
  try:
    stdout, stderr = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    stdout, stderr = proc.communicate()
    raise AssertionError(f'{proc.args} ran past {timeout} s:\n{stderr[-3000:]}') from None
  return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def one_error_line(result) -> str:
  """The single `error:` line of a run that failed as a user error must (exit 1, no
  traceback)."""
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert result.returncode == 1 and len(errors) == 1, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  return errors[0]


# ---- what a run wrote -------------------------------------------------------------------


def metrics(workdir) -> list[dict]:
  lines = (pathlib.Path(workdir) / 'metrics.jsonl').read_text().splitlines()
  return [json.loads(l) for l in lines if l]


def records(workdir, key) -> list[dict]:
  return [r for r in metrics(workdir) if key in r]


def steps_on_disk(workdir) -> list[int]:
  d = pathlib.Path(workdir) / 'checkpoints'
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit())


def load_state(workdir, step):
  """The arrays of a checkpoint as numpy, whatever mesh or processes wrote them."""
  import jax
  import orbax.checkpoint as ocp
  path = pathlib.Path(workdir).absolute() / 'checkpoints' / str(step) / 'state'
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(path).item_metadata.tree
  one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  args = jax.tree.map(lambda m: ocp.ArrayRestoreArgs(sharding=one_device, global_shape=m.shape,
                                                     dtype=m.dtype), tree)
  state = checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))
  return jax.tree.map(np.asarray, state)


def assert_bitwise_equal(a, b):
  import jax
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert jax.tree.structure(a) == jax.tree.structure(b) and len(la) > 10
  for x, y in zip(la, lb):
    assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


def snapshot(path):
  """Every file and folder under `path` with its bytes and mtime."""
  path = pathlib.Path(path)
  if not path.exists():
    return None
  if path.is_file():
    return hashlib.sha256(path.read_bytes()).hexdigest()
  return {str(p.relative_to(path)): (None if p.is_dir() else
                                     (hashlib.sha256(p.read_bytes()).hexdigest(),
                                      p.stat().st_mtime_ns))
          for p in sorted(path.rglob('*'))}


# ---- real images -----------------------------------------------------------------------------


def photo():
  """matplotlib's sample photograph (grace_hopper.jpg, 512 x 600) as an RGB PIL image."""
  import matplotlib.cbook
  from PIL import Image
  return Image.open(matplotlib.cbook.get_sample_data('grace_hopper.jpg')).convert('RGB')


def encode(image, fmt='JPEG') -> bytes:
  out = io.BytesIO()
  if fmt == 'CMYK':
    image.convert('CMYK').save(out, 'JPEG', quality=90)
  elif fmt == 'PNG':
    image.save(out, 'PNG')
  else:
    image.save(out, 'JPEG', quality=90)
  return out.getvalue()


def bomb_png(width: int = 40000, height: int = 40000, bits: int = 1) -> bytes:
  """A decompression bomb: a PNG of grey zeros (`bits` per pixel), a few hundred kilobytes
  for 40000 x 40000, that decodes to width x height pixels."""
  import zlib

  def chunk(kind, data):
    return (struct.pack('>I', len(data)) + kind + data
            + struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff))

  row = b'\0' * (1 + -(-width * bits // 8))  # filter byte, then the packed pixels
  z, idat = zlib.compressobj(9), []
  for _ in range(height):
    idat.append(z.compress(row))
  idat.append(z.flush())
  header = struct.pack('>IIBBBBB', width, height, bits, 0, 0, 0, 0)
  return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', b''.join(idat))
          + chunk(b'IEND', b''))


def rotated_jpeg(upright) -> bytes:
  """The PIL image `upright` stored as a camera held turned stores it: the sensor's pixels
  (`upright` turned 90 degrees counter-clockwise) and EXIF orientation 6 (turn them 90
  degrees clockwise to view), which every photo viewer shows as `upright`."""
  from PIL import Image
  exif = Image.Exif()
  exif[0x0112] = 6
  out = io.BytesIO()
  upright.transpose(Image.Transpose.ROTATE_90).save(out, 'JPEG', quality=95,
                                                     exif=exif.tobytes())
  return out.getvalue()


def jpeg_records(n: int = 48, sizes=(36, 70), classes: int = 10) -> list[dict]:
  """`n` records {'image': JPEG bytes, 'label'} of various sizes and aspect ratios."""
  source, rng, records = photo(), np.random.default_rng(0), []
  for i in range(n):
    x, y = (int(v) for v in rng.integers(0, 300, 2))
    image = source.crop((x, y, x + 200, y + 200)).resize(
        tuple(int(v) for v in rng.integers(*sizes, 2)))
    records.append({'image': encode(image), 'label': i % classes})
  return records


def make_folder(root) -> dict[str, bytes]:
  """<root>/{train,test}/{cat,dog}/ with PNG and JPEG files (and a stray text file);
  returns {'<split>/<class>/<name>': bytes written}."""
  source = photo()
  written = {}
  for split, n in (('train', 3), ('test', 2)):
    for k, cls in enumerate(('cat', 'dog')):
      (root / split / cls).mkdir(parents=True)
      for i in range(n):
        image = source.crop((40 * i, 50 * k, 40 * i + 120, 50 * k + 90))
        path = root / split / cls / f'{i}.{"png" if i == 0 else "jpg"}'
        image.save(path)
        written[f'{split}/{cls}/{path.name}'] = path.read_bytes()
  (root / 'train' / 'cat' / 'notes.txt').write_text('not an image')
  return written


def make_small_folder(root, train=24, test=8, classes=('left', 'right')):
  """Two classes cut from the two halves of a real photograph, 60x44 JPEGs."""
  source = photo()
  for split, n in (('train', train), ('test', test)):
    for k, cls in enumerate(classes):
      (root / split / cls).mkdir(parents=True)
      for i in range(n):
        x = (0 if k == 0 else source.size[0] // 2) + 7 * i
        image = source.crop((x, 30 + 5 * i, x + 150, 140 + 5 * i)).resize((60, 44))
        image.save(root / split / cls / f'{i}.jpg')


def colour_folder(root, train: int, test: int, size=(64, 48), sigma: float = 40.0,
                  colours=((40, 70, 40), (170, 150, 120)), seed: int = 0):
  """A beginner's folder: one class per colour, each image Gaussian noise (`sigma`) around
  it, `train` and `test` JPEGs per class of `size` (width, height): separable at a glance,
  and of a contrast that the paper's 0-255 inputs turn into huge activations."""
  from PIL import Image
  rng = np.random.default_rng(seed)
  w, h = size
  for split, n in (('train', train), ('test', test)):
    for k, colour in enumerate(colours):
      (root / split / f'class{k}').mkdir(parents=True)
      for i in range(n):
        pixels = np.clip(rng.normal(colour, sigma, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / split / f'class{k}' / f'{i}.jpg')


def write_idx(path, array):
  """A gzipped uint8 idx file (Fashion-MNIST's format)."""
  magic = 0x0800 | array.ndim
  with gzip.open(path, 'wb') as f:
    f.write(struct.pack('>I', magic) + struct.pack('>' + 'I' * array.ndim, *array.shape))
    f.write(array.astype(np.uint8).tobytes())


# ---- a miniature ILSVRC-2012 manual download -------------------------------------------------

IMAGENET_CLASSES = ('n01440764', 'n01443537', 'n01739381', 'n02105855')
# Two train files carry names from tfds's fix lists, as in the real archive: a CMYK JPEG and
# a PNG saved as .JPEG.
IMAGENET_SPECIAL = {'n01739381': ('n01739381_1309.JPEG', 'CMYK'),
                    'n02105855': ('n02105855_2933.JPEG', 'PNG')}


def _add(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def make_mini_imagenet(directory, per_class: int = 2, num_val: int = 4, seed: int = 0) -> dict:
  """ILSVRC2012_img_train.tar (one tar per class of <wnid>_<n>.JPEG) and
  ILSVRC2012_img_val.tar (ILSVRC2012_val_<8 digits>.JPEG, labelled by tfds in the order of
  the sorted names) in the official layout; returns {file name: PIL image written}."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  source = photo()
  rng = np.random.default_rng(seed)
  written = {}

  def sample():
    x, y = int(rng.integers(0, 312)), int(rng.integers(0, 400))
    w, h = int(rng.integers(120, 200)), int(rng.integers(120, 200))
    return source.crop((x, y, x + 200, y + 200)).resize((w, h))

  with tarfile.open(directory / 'ILSVRC2012_img_train.tar', 'w') as train:
    for wnid in IMAGENET_CLASSES:
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode='w') as tar:
        names = [(f'{wnid}_{i + 1}.JPEG', 'JPEG') for i in range(per_class)]
        if wnid in IMAGENET_SPECIAL:
          names[0] = IMAGENET_SPECIAL[wnid]
        for name, fmt in names:
          image = sample()
          _add(tar, name, encode(image, fmt))
          written[name] = image
      _add(train, f'{wnid}.tar', inner.getvalue())
  with tarfile.open(directory / 'ILSVRC2012_img_val.tar', 'w') as val:
    for i in reversed(range(num_val)):  # not in sorted order, as in the real tar
      name = f'ILSVRC2012_val_{i + 1:08d}.JPEG'
      image = sample()
      _add(val, name, encode(image))
      written[name] = image
  return written
