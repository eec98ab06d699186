"""The ImageNet preparation's rate on 1, 2, ... N processes, against tfds's serial path.

Run from the repository root, on a quiet machine (it prints the load and the other
processes that ran):

    python -m benchmarks.imagenet_prep                      # 4,000 images, 1..cores processes
    python -m benchmarks.imagenet_prep --train_images=20000 --processes=1,2,4,8,16

It writes ILSVRC-2012-shaped tars into a temporary directory (`scripts.make_imagenet_tars`:
the official names, class tars inside the train tar, val names of tfds's label list, JPEGs
of about 110 kB and 500x330-400), then runs `imagenet_prep.store` (index, shards,
statistics, metadata) into a fresh data_dir for each process count, and prints:

  phases     indexing, shards and the rest (statistics, metadata, rename), seconds
  img/s      images (train + validation) over the shard phase, and over the whole run
  per proc   img/s per process in the shard phase
  vs 1       the shard phase's rate against 1 process (the issue asks >= 1.7x at 2 here)
  peak disk  the most that data_dir held during the run (the store and its shards in
             progress; the tars not counted), against the final store
  1.28 M     ILSVRC-2012 (1,281,167 + 50,000 images) at 16 processes, projected from the
             1-process shard rate times 16 times the efficiency measured at the most
             processes run here (`vs 1` / N), plus the indexing at its measured rate

and, unless --no_baseline, the serial path this replaces (tfds's imagenet2012 copy, then the
256x256 store by one loop; data.keep_originals's way, less the parallel store) on the same
tars, for the ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time

IMAGENET = {'train': 1_281_167, 'validation': 50_000}
PROJECT_PROCESSES = 16


class PeakDisk:
  """The most bytes a directory tree held, sampled every `every` seconds in a thread."""

  def __init__(self, path: str, every: float = 0.2):
    self.path, self.every, self.peak = path, every, 0
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)

  def size(self) -> int:
    total = 0
    for root, _, files in os.walk(self.path):
      for f in files:
        try:
          total += os.path.getsize(os.path.join(root, f))
        except OSError:
          pass  # renamed or removed meanwhile
    return total

  def _run(self):
    while not self._stop.wait(self.every):
      self.peak = max(self.peak, self.size())

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self.peak = max(self.peak, self.size())


class PhaseClock:
  """Wall-clock time of the preparation's phases, from its progress lines."""

  def __init__(self):
    self.marks: dict[str, float] = {}

  def __call__(self, record) -> bool:
    message = record.getMessage()
    for phase in ('indexing the class tars', 'train', 'validation', 'statistics'):
      if f', {phase}: ' in message and message.endswith('to do.'):
        self.marks.setdefault(phase, time.perf_counter())
    return record.levelno >= 30  # warnings are shown, the progress lines only timed


def prepare(tars: str, data_dir: str, processes: int, shard_images: int) -> dict:
  import logging

  from alexnet_jax.data.prepare import imagenet_prep
  from alexnet_jax.data.prepare import shard_writer
  settings = shard_writer.Settings(256, 95, 'centre_crop', 1000, decoder='turbo')
  clock = PhaseClock()
  logging.getLogger().setLevel(logging.INFO)
  logging.getLogger().addFilter(clock)
  start = time.perf_counter()
  try:
    with PeakDisk(data_dir) as disk:
      store = imagenet_prep.store(data_dir, tars, settings, processes=processes,
                                  shard_images=shard_images)
  finally:
    logging.getLogger().removeFilter(clock)
  end = time.perf_counter()
  marks = clock.marks
  shards_start = marks.get('train', start)
  return {'total': end - start, 'index': shards_start - start,
          'shards': marks.get('statistics', end) - shards_start,
          'rest': end - marks.get('statistics', end), 'peak': disk.peak,
          'store': PeakDisk(os.fspath(store.data_dir)).size(),
          'images': sum(s.num_examples for s in store.info.splits.values())}


def baseline(tars: str, data_dir: str) -> float:
  """Seconds of the serial path: tfds's imagenet2012 copy, then the store by one loop."""
  import logging

  from alexnet_jax.data import sources
  quiet = lambda record: record.levelno >= 30
  logging.getLogger().addFilter(quiet)
  start = time.perf_counter()
  try:
    official = sources.prepare_imagenet2012(data_dir, tars)
    sources.prepare_resized(official, data_dir)
  finally:
    logging.getLogger().removeFilter(quiet)
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--train_images', type=int, default=4000)
  parser.add_argument('--val_images', type=int, default=200)
  parser.add_argument('--classes', type=int, default=100)
  parser.add_argument('--processes', default='', help='e.g. 1,2,4 (default: 1 to the cores)')
  parser.add_argument('--shard_images', type=int, default=0,
                      help='images a shard (default: enough shards for 8 a process, 50-1000)')
  parser.add_argument('--no_baseline', action='store_true')
  parser.add_argument('--keep', default='', help='build the tars here and keep them')
  args = parser.parse_args()
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)  # tfds's INFO lines (the baseline)

  from alexnet_jax.data.prepare import imagenet_prep
  from benchmarks import machine
  from scripts import make_imagenet_tars
  cores = imagenet_prep.usable_cores()
  counts = ([int(n) for n in args.processes.split(',')] if args.processes
            else list(range(1, cores + 1)))
  shard_images = args.shard_images or max(50, min(1000, args.train_images // (8 * max(counts))))
  work = tempfile.mkdtemp(prefix='imagenet_prep_bench_')
  tars = args.keep or os.path.join(work, 'tars')
  try:
    quiet = machine.Quiet()
    start = time.perf_counter()
    made = make_imagenet_tars.make_tars(tars, args.train_images, args.val_images,
                                        args.classes)
    images = made['train_images'] + made['val_images']
    print(f'{made["train_images"]:,} + {made["val_images"]:,} images in {made["classes"]} '
          f'classes, {(made["train_bytes"] + made["val_bytes"]) / images / 1e3:.0f} kB each '
          f'({time.perf_counter() - start:.0f} s to write); {shard_images} images a shard; '
          f'{cores} usable cores; load {quiet.load_before:.2f}')
    quiet.start()
    print('| processes | index s | shards s | rest s | img/s (shards) | img/s (all) | per proc '
          '| vs 1 | peak disk | store |')
    print('|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|')
    one = None
    rows = {}
    for n in counts:
      data_dir = os.path.join(work, f'tfds_{n}')
      r = prepare(tars, data_dir, n, shard_images)
      rate = r['images'] / r['shards']
      one = rate if n == 1 else one
      rows[n] = (r, rate)
      print(f'| {n} | {r["index"]:.1f} | {r["shards"]:.1f} | {r["rest"]:.1f} | {rate:,.0f} | '
            f'{r["images"] / r["total"]:,.0f} | {rate / n:,.0f} | '
            f'{"-" if one is None else format(rate / one, ".2f")} | '
            f'{r["peak"] / 1e9:.2f} GB | {r["store"] / 1e9:.2f} GB |', flush=True)
      shutil.rmtree(data_dir)
    if not args.no_baseline:
      seconds = baseline(tars, os.path.join(work, 'tfds_serial'))
      fastest = max(rate for _, rate in rows.values())
      print(f'serial path (tfds copy + store loop): {seconds:.1f} s, {images / seconds:,.0f} '
            f'img/s; the parallel shards at their fastest: {fastest / (images / seconds):.2f}x')
    quiet.stop()
    if one is not None:
      most = max(counts)
      efficiency = rows[most][1] / one / most
      r1 = rows[1][0]
      index_rate = made['train_images'] / max(r1['index'], 1e-9)  # images indexed a second
      total = sum(IMAGENET.values())
      for label, eff in (('linear', 1.0), (f'at the efficiency of {most} processes', efficiency)):
        seconds = total / (one * PROJECT_PROCESSES * eff) + IMAGENET['train'] / (
            index_rate * min(PROJECT_PROCESSES, 1000) * eff)
        print(f'projected, ILSVRC-2012 (1.33 M images) on {PROJECT_PROCESSES} processes, '
              f'{label}: {seconds / 60:.0f} min; store about '
              f'{r1["store"] / r1["images"] * total / 1e9:.0f} GB')
    print(f'quiet: {quiet.report()}')
  finally:
    shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
  main()
