"""Does fine-tuning work? Pretrain on Fashion-MNIST classes 0-4, fine-tune on classes 5-9 with
a few training images per class, and compare with training from scratch on the same images.

    python -m scripts.fine_tuning_table --out=runs/fine_tuning      # 10/30/100 per class, 3 seeds

Every run is an ordinary `launch.py` run in its own workdir under --out (a rerun of the command
resumes or skips what is done):
* pretrain: configs/image_folder.py on all of classes 0-4's training images;
* per seed k and size n: a folder of n training images per class of classes 5-9 (seed k picks
  the k-th slice of each class) and the same --test_per_class test images of 5-9 for all;
* frozen: configs/image_folder_finetune.py from the pretrained workdir (new fc8, conv1-conv5
  frozen, the source's input normalisation); all: the same with no layer frozen; scratch:
  configs/image_folder.py with the same images, steps and seed.
It writes <out>/fine_tuning.md: centre-crop top-1 error on the test images, mean +- std over
the seeds, and each run's figure.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run(*args, log: pathlib.Path):
  """A command from the repository root, its output in `log`; stops the table on failure."""
  with open(log, 'w') as f:
    done = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, stdout=f,
                          stderr=subprocess.STDOUT)
  if done.returncode:
    raise SystemExit(f'{" ".join(map(str, args))} failed (exit {done.returncode}); see {log}.')


def folder(out: pathlib.Path, classes: str, train: int, test: int, offset: int, manual_dir):
  if not (out / 'train').is_dir():
    run('-m', 'scripts.fashion_mnist_folder', f'--out={out}', f'--classes={classes}',
        f'--train_per_class={train}', f'--test_per_class={test}', f'--offset={offset}',
        f'--manual_dir={manual_dir}', log=out.with_suffix('.log'))
  return out


def train(config: str, workdir: pathlib.Path, data: pathlib.Path, overrides: list[str]) -> float:
  """Trains (or resumes) and returns the final evaluation's top-1 error."""
  args = ['launch.py', f'--config={config}', f'--workdir={workdir}',
          f'--config.data.folder={data}', '--config.data.num_classes=5', *overrides]
  workdir.mkdir(parents=True, exist_ok=True)
  run(*args, log=workdir / 'stdout.log')
  evals = [json.loads(l) for l in open(workdir / 'metrics.jsonl') if '"eval/top1"' in l]
  return 1.0 - evals[-1]['eval/top1']


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', required=True)
  parser.add_argument('--sizes', default='10,30,100', help='training images per class')
  parser.add_argument('--seeds', type=int, default=3)
  parser.add_argument('--test_per_class', type=int, default=500)
  parser.add_argument('--pretrain_steps', type=int, default=2000)
  parser.add_argument('--tune_steps', type=int, default=500, help='each tuned and scratch run')
  parser.add_argument('--manual_dir', default='/usr/share/datasets/fashion-mnist',
                      help="the full Fashion-MNIST's idx files (Debian's dataset-fashion-mnist)")
  args = parser.parse_args()
  out = pathlib.Path(args.out).resolve()
  (out / 'folders').mkdir(parents=True, exist_ok=True)
  data_dir = f'--config.data.data_dir={out / "tfds"}'
  start = time.time()

  pre_data = folder(out / 'folders' / 'classes0-4', '0-4', 0, args.test_per_class, 0,
                    args.manual_dir)
  pretrained = out / 'pretrain'
  pre_error = train('configs/image_folder.py', pretrained, pre_data,
                    [data_dir, f'--config.num_train_steps={args.pretrain_steps}'])
  print(f'pretrained on classes 0-4: top-1 error {pre_error:.2%} on their test images',
        flush=True)

  sizes = [int(n) for n in args.sizes.split(',')]
  kinds = {'frozen': ('configs/image_folder_finetune.py', [f'--config.init_from={pretrained}']),
           'all': ('configs/image_folder_finetune.py', [f'--config.init_from={pretrained}',
                                                        '--config.freeze=()']),
           'scratch': ('configs/image_folder.py', [])}
  errors = {(kind, n): [] for kind in kinds for n in sizes}
  for n in sizes:
    for seed in range(args.seeds):
      data = folder(out / 'folders' / f'classes5-9_{n}_seed{seed}', '5-9', n,
                    args.test_per_class, seed * n, args.manual_dir)
      batch = min(64, 5 * n)
      common = [data_dir, f'--config.seed={seed}', f'--config.batch_size={batch}',
                f'--config.num_train_steps={args.tune_steps}',
                f'--config.eval_every_steps={args.tune_steps // 5}']
      for kind, (config, extra) in kinds.items():
        errors[kind, n].append(train(config, out / f'{kind}_{n}' / f'seed{seed}', data,
                                     [*common, *extra]))
      print(f'{n} per class, seed {seed}: ' + ', '.join(
          f'{kind} {errors[kind, n][-1]:.2%}' for kind in kinds), flush=True)

  fmt = lambda e: (f'{100 * statistics.mean(e):.1f} ± {100 * statistics.stdev(e):.1f}'
                   if len(e) > 1 else f'{100 * e[0]:.1f}')
  names = {'frozen': 'fine-tuned, convs frozen', 'all': 'fine-tuned, all layers',
           'scratch': 'from scratch'}
  lines = ['| training images per class (classes 5-9) | '
           + ' | '.join(f'{names[k]}: top-1 error %' for k in kinds) + ' | seeds: '
           + ' / '.join(kinds) + ' |', '|---|' + '---|' * (len(kinds) + 1)]
  for n in sizes:
    lines.append(f'| {n} | ' + ' | '.join(fmt(errors[k, n]) for k in kinds) + ' | ' + '; '.join(
        ' / '.join(f'{100 * e:.1f}' for e in errors[k, n]) for k in kinds) + ' |')
  table = '\n'.join(lines)
  note = (f'Pretrained on all of classes 0-4 ({args.pretrain_steps} steps): top-1 error '
          f'{100 * pre_error:.1f}% on their test images. Test: {args.test_per_class} images '
          f'per class of 5-9 (chance: 80% error). {time.time() - start:.0f} s in all.')
  (out / 'fine_tuning.md').write_text(f'{table}\n\n{note}\n')
  print(f'{table}\n\n{note}')


if __name__ == '__main__':
  main()
