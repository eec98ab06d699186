"""Input pipeline throughput: raw JPEG decode against the paper's full training pipeline.

Run from the repository root:

    python -m benchmarks.input_pipeline                  # 256 images; threads 2; processes 1,2
    python -m benchmarks.input_pipeline --num_images=1024 --threads=2,4,8 --processes=4,8

The images: `--num_images` ImageNet-sized JPEGs (about 500x375, quality 90) cut from a
real photograph that a dependency ships (matplotlib's sample `grace_hopper.jpg`, 512x600):
random windows rescaled to 440-520 x 330-400, so no two files are the same.

Rows: in this process (one core), `--threads` decode threads (`data.threads`), and
`--processes` grain worker processes of one thread each (`data.processes`). Columns:
  (a) raw decode: Pillow `Image.open(...).convert('RGB')` of every file, on as many cores
      as the row uses (in process, or a process pool of that size), returning the shape;
  (b) full pipeline from the original JPEGs (`data.prepare_once=False`):
      `stream.StreamLoader.host_batches` (decode, shorter side to 256 + central
      crop, random 224 crop, the reflection and PCA draws: uint8 batches of `--batch`
      with each view's window and PCA shift);
  (c) the same pipeline on the images prepared once and stored as the paper did (shorter
      side 256, central 256x256, JPEG quality 95; `data.prepare_once=True`, the default):
      per epoch only the small decode and the crop remain. Its ratio is to (a), the
      decode of the originals;
  (d) the device half (reflection, per-pixel mean, PCA shift: `pixels.normalize`,
      jitted) alone on this machine's default device, for the record: on a GPU it is part
      of the train step.
Raw decode: the best of `--repeats` passes over the files, after the pool has started.
Pipelines: `--steps` batches in steady state after warm-up (start-up is not counted).
"Per core" divides by the cores the row uses (threads or processes, at most the CPUs).
The goal of issue 4 is the training pipeline at 80% or more of (a) per core.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import os
import time

import numpy as np

from alexnet_jax import pixels
from alexnet_jax.data import stream, transforms


def make_jpegs(n: int, seed: int = 0) -> list[bytes]:
  from PIL import Image
  import matplotlib.cbook
  photo = Image.open(matplotlib.cbook.get_sample_data('grace_hopper.jpg')).convert('RGB')
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    w, h = int(rng.integers(300, 512)), int(rng.integers(250, 450))
    x, y = int(rng.integers(0, 512 - w + 1)), int(rng.integers(0, 600 - h + 1))
    size = (int(rng.integers(440, 521)), int(rng.integers(330, 401)))
    image = photo.crop((x, y, x + w, y + h)).resize(size, Image.BICUBIC)
    if rng.random() < 0.5:
      image = image.transpose(Image.FLIP_LEFT_RIGHT)
    buf = io.BytesIO()
    image.save(buf, 'JPEG', quality=90)
    out.append(buf.getvalue())
  return out


def _decode_shape(data: bytes):
  from PIL import Image
  return Image.open(io.BytesIO(data)).convert('RGB').size


def raw_decode(jpegs: list[bytes], workers: int, repeats: int) -> float:
  """Images/s decoding every file, best of `repeats` passes (the pool is started and
  warmed up first)."""
  best = float('inf')
  if workers <= 0:
    for _ in range(repeats):
      start = time.perf_counter()
      for data in jpegs:
        _decode_shape(data)
      best = min(best, time.perf_counter() - start)
    return len(jpegs) / best
  with concurrent.futures.ProcessPoolExecutor(workers) as pool:
    list(pool.map(_decode_shape, jpegs[:16 * workers], chunksize=4))
    for _ in range(repeats):
      start = time.perf_counter()
      list(pool.map(_decode_shape, jpegs, chunksize=8))
      best = min(best, time.perf_counter() - start)
  return len(jpegs) / best


def prepare(jpegs: list[bytes]) -> list[bytes]:
  """The paper's stored images: shorter side 256, central 256x256, JPEG quality 95."""
  from PIL import Image
  out = []
  for data in jpegs:
    buf = io.BytesIO()
    Image.fromarray(transforms.decode(data, 256)).save(buf, 'JPEG', quality=95)
    out.append(buf.getvalue())
  return out


def full_pipeline(jpegs: list[bytes], threads: int, processes: int, batch: int,
                  steps: int) -> float:
  """Images/s of the loader in steady state: `steps` batches timed after warm-up (worker
  start-up is not counted); epochs repeat over the files."""
  source = [{'image': data, 'label': i % 1000} for i, data in enumerate(jpegs)]
  loader = stream.StreamLoader(source, batch, 0, stream.Augment(), threads=threads,
                                       processes=processes)
  warm = 2 * max(threads, processes, 1)
  batches = loader.host_batches(0, warm + steps)
  for _ in range(warm):
    next(batches)
  start = time.perf_counter()
  count = sum(len(y) for _, y in batches)
  assert count == steps * batch
  return count / (time.perf_counter() - start)


def device_normalize(batch: int, repeats: int = 20) -> float:
  """Images/s of the device half (mean image and PCA shift) on the default device."""
  import jax
  rng = np.random.default_rng(0)
  images = pixels.pixel_batch(
      rng.integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8),
      np.c_[rng.integers(0, 33, (batch, 2)), rng.integers(0, 2, batch)].astype(np.int32),
      rng.normal(0, 10, (batch, 3)).astype(np.float32))
  images = jax.device_put(images)
  mean = jax.device_put(rng.uniform(0, 255, (256, 256, 3)).astype(np.float32))
  fn = jax.jit(pixels.normalize)
  fn(images, mean).block_until_ready()
  start = time.perf_counter()
  for _ in range(repeats):
    out = fn(images, mean)
  out.block_until_ready()
  return repeats * batch / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--num_images', type=int, default=256)
  parser.add_argument('--threads', default='2', help='comma-separated thread counts')
  parser.add_argument('--processes', default='1,2', help='comma-separated process counts')
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--repeats', type=int, default=2, help='raw decode passes')
  parser.add_argument('--steps', type=int, default=16, help='timed pipeline batches')
  args = parser.parse_args()
  from absl import flags
  flags.FLAGS.mark_as_parsed()
  jpegs = make_jpegs(args.num_images)
  sizes = np.array([transforms.decode(d, 0).shape[:2] for d in jpegs[:32]])
  cpus = os.cpu_count()
  print(f'{len(jpegs)} JPEGs, mean {sizes[:, 1].mean():.0f}x{sizes[:, 0].mean():.0f}, '
        f'{np.mean([len(d) for d in jpegs]) / 1024:.0f} KiB each; {cpus} CPUs')
  prepared = prepare(jpegs)
  rows = [('in process', 0, 0)]
  rows += [(f'{t} threads', t, 0) for t in (int(x) for x in args.threads.split(',') if x)]
  rows += [(f'{p} process{"es" if p > 1 else ""}', 1, p)
           for p in (int(x) for x in args.processes.split(',') if x)]
  print('| decoding | cores | (a) raw decode img/s | per core | (b) from originals img/s | '
        '(b)/(a) | (c) from prepared 256 img/s | (c)/(a) |')
  print('|---|---:|---:|---:|---:|---:|---:|---:|')
  for name, threads, processes in rows:
    cores = min(max(threads, processes, 1), cpus)
    raw = raw_decode(jpegs, 0 if cores == 1 else cores, args.repeats)
    full = full_pipeline(jpegs, threads, processes, args.batch, args.steps)
    stored = full_pipeline(prepared, threads, processes, args.batch, args.steps)
    print(f'| {name} | {cores} | {raw:.0f} | {raw / cores:.0f} | {full:.0f} | '
          f'{full / raw:.2f} | {stored:.0f} | {stored / raw:.2f} |', flush=True)
  print(f'(d) device half (reflection, mean image, PCA shift; jitted) on '
        f'{__import__("jax").devices()[0].platform}: {device_normalize(args.batch):.0f} img/s')


if __name__ == '__main__':
  main()
