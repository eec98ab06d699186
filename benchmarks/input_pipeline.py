"""The stream loader's throughput for each storage and decoder, threads and processes.

Run from the repository root (a quiet machine: it prints the load and the matmul peak):

    python -m benchmarks.input_pipeline                       # every storage; t1,t2,p1,p2
    python -m benchmarks.input_pipeline --workers=t1,t16,p16 --storages=q95-turbo,raw
    python -m benchmarks.input_pipeline --workers=t1,t16,p2x8,p4x4,p8x2,p16  # data.processes

The images: `--num_images` ImageNet-sized JPEGs (about 480x365, quality 90) cut from a real
photograph that a dependency ships (matplotlib's sample `grace_hopper.jpg`, 512x600), then
stored as the loader stores them (`data.prepare_once`): shorter side 256, central 256x256,
JPEG 4:4:4 at quality 95 or 90 (`data.storage_quality`), or raw uint8 (`data.storage=raw`).
Each row is `stream.StreamLoader.host_batches` in steady state (decode, the random 224 crop,
the reflection and PCA draws: uint8 batches of `--batch` with each view's window and shift)
with `data.decoder` pillow or turbo (libjpeg-turbo through simplejpeg), `tN` N decode threads
in this process, `pN` N grain worker processes, or `pNxT` N worker processes of T threads
(the rule of `data.threads=-1`, `data.processes=-1`: alexnet_jax/data/reading.py): the
median and spread ((max - min) / median) of `--repeats` runs of `--steps` batches after
warm-up, per core, against one thread, and per core times `--project` cores (a projection
that assumes the per-core rate holds).
The last line is the device half (reflection, mean image, PCA shift; jitted) on this
machine's default device, for the record: on a GPU it is part of the train step.
"""

from __future__ import annotations

import argparse
import io
import os
import time

import numpy as np

from alexnet_jax.data import decoders
from alexnet_jax.data import stream
from alexnet_jax.data import transforms
from alexnet_jax.model import pixels


def make_jpegs(n: int, seed: int = 0) -> list[bytes]:
  import matplotlib.cbook
  from PIL import Image
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


def prepare(jpegs: list[bytes], quality: int = 95) -> list[bytes]:
  """The paper's stored images: shorter side 256, central 256x256, JPEG of `quality` (4:4:4,
  as `builders.PreparedImages` stores them); quality 0: raw uint8 records."""
  from PIL import Image
  out = []
  for data in jpegs:
    array = transforms.decode(data, 256)
    if not quality:
      out.append(decoders.to_raw(array))
      continue
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, 'JPEG', quality=quality, subsampling=0)
    out.append(buf.getvalue())
  return out


def full_pipeline(jpegs: list[bytes], threads: int, processes: int, batch: int,
                  steps: int, decoder: str = 'pillow') -> float:
  """Images/s of the loader in steady state: `steps` batches timed after warm-up (worker
  start-up is not counted); epochs repeat over the files."""
  source = [{'image': data, 'label': i % 1000} for i, data in enumerate(jpegs)]
  loader = stream.StreamLoader(source, batch, 0, stream.Augment(decoder=decoder),
                               threads=threads, processes=processes)
  warm = 2 * max(threads, processes, 1)
  batches = loader.host_batches(0, warm + steps)
  for _ in range(warm):
    next(batches)
  start = time.perf_counter()
  count = sum(len(next(batches)[1]) for _ in range(steps))
  elapsed = time.perf_counter() - start  # to the last batch: the workers' shutdown is not timed
  batches.close()
  assert count == steps * batch
  return count / elapsed


def device_decode(stored: list[bytes], decoder: str, batch: int, steps: int) -> dict:
  """data.decode_on=device with `decoder` on the default device: the decoded images against
  Pillow's (max |difference|, the fraction of values more than 2 levels apart: JPEG
  decoders agree within about 2), and img/s of the decode alone, timed to the last image
  being ready, in steady state."""
  import jax

  from alexnet_jax.data import device_decode as dd
  dec = dd.make(decoder, 256, 3)
  device = jax.devices()[0]
  got = np.asarray(dec.decode(stored[:batch], device)).astype(np.int16)
  want = np.stack([transforms.decode(d, 256) for d in stored[:batch]]).astype(np.int16)
  diff = np.abs(got - want)
  chunks = [stored[i * batch % len(stored):][:batch] for i in range(steps)]
  chunks = [c for c in chunks if len(c) == batch] or [stored[:batch]]
  dec.decode(chunks[0], device).block_until_ready()
  start = time.perf_counter()
  for c in chunks:
    out = dec.decode(c, device)
  out.block_until_ready()
  return {'max_abs_diff': int(diff.max()), 'frac_over_2': float((diff > 2).mean()),
          'img_per_s': len(chunks) * batch / (time.perf_counter() - start)}


def median_spread(rates: list[float]) -> tuple[float, float]:
  """The median and the spread (max - min) / median of repeated runs."""
  median = float(np.median(rates))
  return median, (max(rates) - min(rates)) / median


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


# data.storage(_quality) and data.decoder of each row.
STORAGES = {'q95-pillow': (95, 'pillow'), 'q95-turbo': (95, 'turbo'),
            'q90-pillow': (90, 'pillow'), 'q90-turbo': (90, 'turbo'), 'raw': (0, 'raw')}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--num_images', type=int, default=1024)
  parser.add_argument('--storages', default=','.join(STORAGES), help=f'of {list(STORAGES)}')
  parser.add_argument('--workers', default='t1,t2,p1,p2',
                      help='tN: N decode threads in process, pN: N worker processes, '
                      'pNxT: N worker processes of T threads each')
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--repeats', type=int, default=5, help='runs of each row: the median')
  parser.add_argument('--steps', type=int, default=32, help='timed batches a run')
  parser.add_argument('--project', type=int, default=16, help='cores to project to')
  args = parser.parse_args()
  from absl import flags
  flags.FLAGS.mark_as_parsed()
  import jax.numpy as jnp

  from benchmarks import machine
  from benchmarks import train_step
  quiet = machine.Quiet()
  jpegs = make_jpegs(args.num_images)
  cpus = os.cpu_count()
  print(f'{len(jpegs)} JPEGs of about 480x365 ({np.mean([len(d) for d in jpegs]) / 1024:.0f} '
        f'KiB), stored at 256x256; {cpus} CPUs; load {quiet.load_before:.2f}; float32 matmul '
        f'peak {train_step.matmul_peak(jnp.float32, 2048):.3g} FLOP/s')
  quiet.start()
  names = args.storages.split(',')
  stored = {q: prepare(jpegs, q) for q in sorted({STORAGES[n][0] for n in names})}
  for q, data in stored.items():
    if q:
      print(f'q{q}: {np.mean([len(d) for d in data]) / 1024:.1f} KiB an image')
  print(f'| storage, decoder | workers | img/s, median of {args.repeats} | spread | per core '
        f'| vs 1 thread | {args.project} cores, projected |')
  print('|---|---|---:|---:|---:|---:|---:|')
  for name in names:
    quality, decoder = STORAGES[name]
    one = None
    for worker in args.workers.split(','):
      n, _, per = worker[1:].partition('x')
      n, per = int(n), int(per or 1)
      threads, processes = (n, 0) if worker[0] == 't' else (per, n)
      rates = [full_pipeline(stored[quality], threads, processes, args.batch, args.steps,
                             decoder) for _ in range(args.repeats)]
      median, spread = median_spread(rates)
      cores = min(n * per, cpus)
      one = median if worker == 't1' else one
      kind = {'t': ('thread', 'threads'), 'p': ('process', 'processes')}[worker[0]][n != 1]
      kind += f' x {per} threads' if per > 1 else ''
      print(f'| {name} | {n} {kind} | {median:,.0f} | {spread:.0%} | '
            f'{median / cores:,.0f} | {"-" if one is None else format(median / one, ".2f")} | '
            f'{median / cores * args.project:,.0f} |', flush=True)
  quiet.stop()
  print(f'quiet: {quiet.report()}')
  print(f'(d) device half (reflection, mean image, PCA shift; jitted) on '
        f'{__import__("jax").devices()[0].platform}: {device_normalize(args.batch):.0f} img/s')


if __name__ == '__main__':
  main()
