"""The paper's design choices, measured: a named set of variants of one config, each over
several seeds, as ordinary `launch.py` runs in their own workdirs.

    python -m scripts.ablations --out=runs/ablations                 # every variant, 3 seeds
    python -m scripts.ablations --out=runs/ablations --variants=baseline,no_lrn --seeds=5
    python -m scripts.ablations --out=/tmp/quick --quick             # 1 seed, 12 steps
    python -m scripts.ablations --out=runs/abl8 -- --config.mesh.data=4 --config.mesh.model=2

Each run is `launch.py --config=<config> --workdir=<out>/<variant>/seed<k> --config.seed=<k>
<variant's overrides> <everything after -->`, so it resumes where it stopped when the
command is run again, and has its own metrics.jsonl, TensorBoard events and figures. After
training, `--mode=eval` gives centre and 10-crop top-1 and top-5 (kept in the workdir as
ablation_eval.json). The script then writes <out>/ablations.md (mean +- std of the errors
per variant over the seeds, the difference from the baseline with a 95% Welch interval,
wall time) and <out>/ablations.png (eval top-1 error against step, mean and band over seeds).

Variants are config overrides (section 3 of the paper): no LRN (3.3), non-overlapping 2/2
pooling (3.4), one tower of half the width (the paper's comparison, 3.2) and one of full
width, no dropout (4.2), no PCA lighting (4.1, where the pipeline has it) and no reflections
(4.1). A variant that sets the towers to 1 also sets mesh.model=1 after the pass-through
flags (one tower cannot be split).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
METRICS = ('centre/top1', 'centre/top5', 'ten_crop/top1', 'ten_crop/top5')


def variants(config) -> dict[str, list[str]]:
  """name -> config overrides, for `config` (a loaded ConfigDict): the one-tower variants
  take its per-tower widths, and PCA only where its pipeline has it."""
  m = config.model
  wide = ','.join(str(2 * f) for f in m.conv_features)
  out = {
      'baseline': [],
      'no_lrn': ['--config.model.lrn=False'],
      'pool_2x2': ['--config.model.pool_window=2', '--config.model.pool_stride=2'],
      'one_tower_half_width': ['--config.model.num_towers=1', '--config.mesh.model=1'],
      'one_tower_full_width': ['--config.model.num_towers=1', '--config.mesh.model=1',
                               f'--config.model.conv_features=({wide})',
                               f'--config.model.fc_features={2 * m.fc_features}'],
      'no_dropout': ['--config.model.dropout_rate=0.0'],
      'no_reflections': ['--config.data.flip=False'],
  }
  if config.data.pca_sigma > 0:
    out['no_pca_lighting'] = ['--config.data.pca_sigma=0.0']
  return out


def run(args: list[str], log: pathlib.Path) -> subprocess.CompletedProcess:
  with open(log, 'a', encoding='utf-8') as f:
    f.write(f'\n$ {" ".join(args)}\n')
    f.flush()
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=f, text=True, check=False)
    f.write(proc.stdout)
  return proc


def train_and_eval(config_path, workdir: pathlib.Path, flags: list[str]) -> dict:
  """One run, resumed if it was cut short; its evaluation, cached in the workdir."""
  workdir.mkdir(parents=True, exist_ok=True)
  cached = workdir / 'ablation_eval.json'
  if cached.exists():
    return json.loads(cached.read_text())
  log = workdir / 'ablation.log'
  common = ['launch.py', f'--config={config_path}', f'--workdir={workdir}', *flags]
  logged = len(records(workdir))
  t0 = time.time()
  proc = run(common, log)
  seconds = time.time() - t0
  if proc.returncode != 0:
    sys.exit(f'error: {workdir} failed (exit {proc.returncode}); see {log}.')
  clock = workdir / 'ablation_seconds.json'  # summed over interrupted attempts
  if clock.exists() or len(records(workdir)) > logged:
    total = seconds + (json.loads(clock.read_text())['seconds'] if clock.exists() else 0.0)
    clock.write_text(json.dumps({'seconds': total}))
  else:  # trained by launch.py before this script saw it: the run's own record
    total = recorded_seconds(workdir)
  proc = run([*common, '--mode=eval'], log)
  lines = [l for l in proc.stdout.splitlines() if l.startswith('eval: ')]
  if proc.returncode != 0 or not lines:
    sys.exit(f'error: evaluating {workdir} failed; see {log}.')
  result = {k: v for k, v in json.loads(lines[-1][len('eval: '):]).items() if k in METRICS}
  result['seconds'] = total
  cached.write_text(json.dumps(result))
  return result


def records(workdir: pathlib.Path) -> list[dict]:
  """metrics.jsonl's records (none before the first), read as the figures are."""
  from alexnet_jax.outputs import figures
  path = workdir / 'metrics.jsonl'
  return figures.read_metrics(str(path)) if path.exists() else []


def recorded_seconds(workdir: pathlib.Path) -> float:
  """Wall time of a run trained outside this script, from its records: run.json's start
  (of its last attempt, if it was resumed) to the last line of metrics.jsonl."""
  import datetime
  start = json.loads((workdir / 'run.json').read_text())['time']
  end = records(workdir)[-1]['time']
  return end - datetime.datetime.fromisoformat(start).timestamp()


def curve(workdir: pathlib.Path) -> dict[int, float]:
  """Eval top-1 error by step, from metrics.jsonl."""
  return {r['step']: 1.0 - r['eval/top1'] for r in records(workdir) if 'eval/top1' in r}


# Two-sided 97.5% quantiles of Student's t by degrees of freedom (Welch's df is rounded down).
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def t975(df: float) -> float:
  df = max(1, math.floor(df))
  return T975[max(k for k in T975 if k <= df)] if df < 30 else 1.96


def difference(a: list[float], b: list[float]) -> tuple[float, float] | None:
  """mean(a) - mean(b) and the half-width of its 95% Welch interval (None: one seed)."""
  if len(a) < 2 or len(b) < 2:
    return None
  va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
  se = math.sqrt(va + vb)
  if se == 0:
    return statistics.mean(a) - statistics.mean(b), 0.0
  df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
  return statistics.mean(a) - statistics.mean(b), t975(df) * se


def table(results: dict[str, list[dict]]) -> str:
  """Markdown: errors in % (mean +- std over seeds), the difference from the baseline with
  its 95% interval, wall time per run."""
  head = ('| variant | seeds | centre top-1 err | centre top-5 err | 10-crop top-1 err | '
          '10-crop top-5 err | centre top-1 vs baseline (95% CI) | 10-crop top-1 vs baseline '
          '(95% CI) | minutes per run |')
  rows = [head, '|' + '---|' * 9]
  base = results.get('baseline')
  for name, runs in results.items():
    cells = [name, str(len(runs))]
    for metric in METRICS:
      errs = [100 * (1 - r[metric]) for r in runs]
      std = f' ± {statistics.stdev(errs):.2f}' if len(errs) > 1 else ''
      cells.append(f'{statistics.mean(errs):.2f}{std}')
    for metric in ('centre/top1', 'ten_crop/top1'):
      d = None if base is None or name == 'baseline' else difference(
          [100 * (1 - r[metric]) for r in runs], [100 * (1 - r[metric]) for r in base])
      cells.append('-' if d is None else f'{d[0]:+.2f} ({d[0] - d[1]:+.2f}, {d[0] + d[1]:+.2f})')
    cells.append(f'{statistics.mean(r["seconds"] for r in runs) / 60:.1f}')
    rows.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(rows)


def figure(curves: dict[str, list[dict[int, float]]], path: pathlib.Path) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  import numpy as np
  fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
  for name, runs in curves.items():
    steps = sorted(set.intersection(*(set(c) for c in runs)))
    errs = np.array([[100 * c[s] for s in steps] for c in runs])
    mean = errs.mean(0)
    ax.plot(steps, mean, label=name, lw=1.5 if name == 'baseline' else 1)
    if len(runs) > 1:
      ax.fill_between(steps, errs.min(0), errs.max(0), alpha=0.15)
  ax.set_xlabel('step')
  ax.set_ylabel('eval top-1 error, centre (%)')
  ax.set_title('mean over seeds; band: min to max')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  lows = [100 * min(c.values()) for runs in curves.values() for c in runs]
  ax.set_ylim(max(0, min(lows) - 2), min(100, min(lows) + 25))
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  passthrough = argv[argv.index('--') + 1:] if '--' in argv else []
  argv = argv[:argv.index('--')] if '--' in argv else argv
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', required=True, help='one workdir per variant and seed in here')
  parser.add_argument('--config', default='configs/fashion_mnist.py')
  parser.add_argument('--variants', default='', help='comma-separated; default: all')
  parser.add_argument('--seeds', type=int, default=3)
  parser.add_argument('--quick', action='store_true',
                      help='1 seed, 12 steps on the embedded subset: checks the machinery')
  args = parser.parse_args(argv)
  bad = [a for a in passthrough if not a.startswith('--config.')]
  if bad:
    sys.exit(f'error: after --, only --config.<field>=<value> flags pass through to every run, '
             f'not {bad[0]}.')
  from alexnet_jax import cli
  # As launch.py will load it for every run: a mistyped field is one line now, not a failed
  # run per variant.
  config = cli.load_config(str(ROOT / args.config), passthrough)
  every = variants(config)
  names = [n for n in args.variants.split(',') if n] or list(every)
  unknown = [n for n in names if n not in every]
  if unknown:
    sys.exit(f'error: --variants: {unknown[0]} is not one of {", ".join(every)}.')
  if 'baseline' not in names:
    names.insert(0, 'baseline')
  seeds = 1 if args.quick else args.seeds
  extra = list(passthrough)
  if args.quick:
    extra += ['--config.num_train_steps=12', '--config.eval_every_steps=6',
              '--config.log_every_steps=6']
    if config.dataset == 'fashion_mnist' and not config.data.manual_dir:
      extra.append('--config.data.manual_dir=data/fashion_mnist')  # the embedded subset
  out = pathlib.Path(args.out).resolve()
  results, curves = {}, {}
  for name in names:
    for seed in range(seeds):
      workdir = out / name / f'seed{seed}'
      print(f'{name} seed {seed}: {workdir}', flush=True)
      results.setdefault(name, []).append(train_and_eval(
          args.config, workdir, [f'--config.seed={seed}', *extra, *every[name]]))
      curves.setdefault(name, []).append(curve(workdir))
  text = table(results)
  (out / 'ablations.md').write_text(
      f'Config {args.config}, {seeds} seed(s), pass-through: {" ".join(passthrough) or "none"}'
      f'\n\n{text}\n')
  figure(curves, out / 'ablations.png')
  print(text)
  print(f'wrote {out / "ablations.md"} and {out / "ablations.png"}')


if __name__ == '__main__':
  main()
