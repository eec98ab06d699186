"""The GPU check: one command that returns every figure the project needs from one GPU.

    python -m benchmarks.gpu_check --out=DIR                 # on the GPU (docs/gpu.md)
    python -m benchmarks.gpu_check --out=/tmp/gc --dry_run   # every stage on CPU, tiny shapes

Stages, in order of what matters most if the time runs out (each writes DIR/report.md and
DIR/report.json as it ends, with its elapsed time; `--stages` picks some for a rerun):

  environment  installs what the image lacks from the wheels in .whl/ (scripts/gpu_wheels.sh),
               then records the versions it runs with and the device
  tests        `pytest -m gpu` (tests/test_gpu.py: the model against float64 in float32 and
               bfloat16, every mesh on one device, a checkpoint saved and restored)
  train_step   the 224x224 train step at batch 128, 512 and 2048, JAX bfloat16 and float32,
               against PyTorch AMP + channels_last eager, torch.compile and torchvision's
               alexnet (benchmarks/train_step.py's variants): img/s, step ms, MFU against
               the data-sheet peak, memory, compile time
  switches     each implementation switch at the best batch in bfloat16 (benchmarks.switches)
  roofline     the per-layer bound at the best batch (benchmarks.roofline) and the measured
               step as a fraction of it
  layers       each layer's measured forward+backward at the best batch against its bound
  input        the stream loader with 16 worker processes (and 16 threads) against the step
  train_run    `launch.py --config=configs/synthetic.py` at 224x224: a short run, its metrics

Time: the whole run must fit in 8 minutes on one H200 with its compiles (`--budget_s`);
a stage or a (batch, dtype) group whose estimated cost does not fit what is left is skipped
and says so. JAX's persistent compilation cache (with XLA's per-fusion autotune cache in it)
lives in `--cache_dir`, so a rerun on a warm machine loads instead of compiling.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys

os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')  # torch shares the GPU

from alexnet_jax import xla_cpu  # noqa: E402  (stdlib only: before JAX starts)

xla_cpu.configure()

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from benchmarks import gpu_stages  # noqa: E402
from benchmarks import report as report_lib  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ('environment', 'tests', 'train_step', 'switches', 'roofline', 'layers', 'input',
          'train_run')
# Modules the GPU image lacks (docs/gpu.md), carried as wheels; the distributions whose
# versions the report records.
MISSING_ON_IMAGE = ('tensorflow_datasets', 'grain', 'ml_collections', 'tensorboardX',
                    'array_record')
VERSIONS = ('jax', 'jaxlib', 'jax-cuda13-plugin', 'jax-cuda12-plugin', 'flax', 'optax',
            'orbax-checkpoint', 'numpy', 'tensorflow-datasets', 'grain', 'ml-collections',
            'tensorboardX', 'array-record', 'torch', 'torchvision', 'pillow', 'protobuf')
# Estimated seconds on an H200 (from CPU compile counts; the first GPU run replaces them).
# The train step's (batch, dtype) groups take what the later stages' estimates leave.
ESTIMATE_S = {'environment': 15, 'tests': 45, 'switches': 60, 'roofline': 30, 'layers': 30,
              'input': 60, 'train_run': 45}

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line's flags (only when run as a script)."""
  flags.DEFINE_string('out', None, 'Folder for report.md, report.json and the run\'s files.',
                      required=True)
  flags.DEFINE_bool('dry_run', False, 'Every stage on CPU with tiny shapes (CI runs this).')
  flags.DEFINE_list('stages', list(STAGES), f'Stages to run, of {", ".join(STAGES)}.')
  flags.DEFINE_float('budget_s', 450.0, 'Seconds the whole run may take; later stages and '
                     'groups that would not fit are skipped.')
  flags.DEFINE_string('cache_dir', None, 'JAX persistent compilation cache; default OUT/cache.')
  flags.DEFINE_string('wheels', os.path.join(ROOT, '.whl'), 'Wheels for what the image lacks.')
  flags.DEFINE_list('groups', None, 'Train-step groups as BATCH:DTYPE (default: the plan\'s, '
                    'most informative first), e.g. 2048:float32,128:bfloat16 for a rerun.')


class Plan:
  """The shapes of a real run or of the dry run."""

  def __init__(self, dry_run: bool):
    from alexnet_jax.model import network
    self.dry_run = dry_run
    if dry_run:  # the paper's layer geometry at 224, narrow: the same code paths, fast on CPU
      self.spec = network.AlexNetSpec(conv_features=(8, 16, 24, 24, 16), fc_features=32)
      self.groups = [(4, 'bfloat16'), (2, 'bfloat16'), (4, 'float32')]
      self.steps, self.warmup, self.repeats = 1, 1, 2
      self.input = dict(images=32, workers=2, batch=8, steps=4)
      self.train_run = ['--config.batch_size=4', '--config.eval_batch_size=4',
                        '--config.num_train_steps=4', '--config.log_every_steps=2',
                        '--config.eval_every_steps=4', '--config.checkpoint_every_steps=4',
                        '--config.data.synthetic_train_examples=16',
                        '--config.data.synthetic_eval_examples=8',
                        '--config.model.conv_features=(8,16,24,24,16)',
                        '--config.model.fc_features=32']
    else:
      self.spec = network.AlexNetSpec()
      # Most informative first: the budget guard drops the tail. torch.compile (~45 s a
      # shape) only in bfloat16, where the goal is set (1.3x the best PyTorch variant).
      self.groups = [(512, 'bfloat16'), (2048, 'bfloat16'), (2048, 'float32'),
                     (128, 'bfloat16'), (512, 'float32'), (128, 'float32')]
      self.steps, self.warmup, self.repeats = 20, 5, 5
      self.input = dict(images=2048, workers=16, batch=256, steps=32)
      self.train_run = ['--config.batch_size=128', '--config.eval_batch_size=128',
                        '--config.num_train_steps=60', '--config.log_every_steps=20',
                        '--config.eval_every_steps=60', '--config.checkpoint_every_steps=60',
                        '--config.data.synthetic_train_examples=2560',
                        '--config.data.synthetic_eval_examples=512']


def subprocess_env(cache_dir: str) -> dict:
  return dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache_dir,
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0', PYTHONUNBUFFERED='1')


def run_command(args: list[str], env: dict, log_path: str, timeout: float) -> tuple[int, str]:
  """(exit code, last 3000 characters of its output); the whole output in `log_path`."""
  with open(log_path, 'w', encoding='utf-8') as log:
    try:
      proc = subprocess.run(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            timeout=timeout, check=False)
      code = proc.returncode
    except subprocess.TimeoutExpired:
      code = 124
  with open(log_path, encoding='utf-8', errors='replace') as f:
    return code, f.read()[-3000:]


# ---- stages -------------------------------------------------------------------------------


def environment(rep, entry, wheels: str, site: str, dry_run: bool) -> None:
  missing = [m for m in MISSING_ON_IMAGE if importlib.util.find_spec(m) is None]
  rep.add(entry, 'missing_before', missing)
  if missing:
    found = sorted(f for f in os.listdir(wheels) if f.endswith('.whl')) if os.path.isdir(
        wheels) else []
    if not found:
      raise RuntimeError(f'{", ".join(missing)} missing and no wheels in {wheels}: run '
                         'scripts/gpu_wheels.sh here and carry .whl')
    code, out = run_command([sys.executable, '-m', 'pip', 'install', '-q', '--no-index',
                             '--no-deps', '--no-compile', '--no-cache-dir', '--upgrade',
                             '--target', site, *[os.path.join(wheels, f) for f in found]],
                            dict(os.environ), os.path.join(rep.directory, 'pip.log'), 300)
    if code:
      raise RuntimeError(f'pip install of the wheels failed ({code}): {out[-500:]}')
    import site as site_packages
    site_packages.addsitedir(site)  # the wheels just installed: what the image lacks
    os.environ['PYTHONPATH'] = os.pathsep.join(p for p in (site, os.environ.get('PYTHONPATH'))
                                               if p)
    importlib.invalidate_caches()
  versions = {}
  for name in VERSIONS:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  import jax
  for module in MISSING_ON_IMAGE + ('alexnet_jax.train.run_setup', 'alexnet_jax.data.sources'):
    __import__(module)  # an import that fails here would fail every later stage
  devices = jax.devices()
  info = {'python': sys.version.split()[0], 'versions': versions,
          'backend': jax.default_backend(), 'devices': [d.device_kind for d in devices],
          'memory_stats': (devices[0].memory_stats() or {}).get('bytes_limit')}
  if not dry_run and info['backend'] != 'gpu':
    raise RuntimeError(f'JAX runs on {info["backend"]}, not a GPU: check the CUDA plugin '
                       '(versions above)')
  try:
    smi = subprocess.run(['nvidia-smi', '--query-gpu=name,driver_version,memory.total,'
                          'clocks.sm,clocks.max.sm', '--format=csv,noheader'],
                         capture_output=True, text=True, timeout=20, check=False).stdout
  except (OSError, subprocess.TimeoutExpired):
    smi = None
  info['nvidia_smi'] = smi.strip() if smi else None
  rep.add(entry, 'environment', info, '```\n' + json.dumps(info, indent=1) + '\n```')


def tests(rep, entry, env: dict, dry_run: bool) -> None:
  args = [sys.executable, '-m', 'pytest', '-q', '-m', 'gpu', '-p', 'no:cacheprovider',
          'tests/test_gpu.py']
  if dry_run:  # CI runs these tests anyway; here: that the selection exists and imports
    args.append('--collect-only')
  code, tail = run_command(args, env, os.path.join(rep.directory, 'pytest.log'), 300)
  summary = [line for line in tail.splitlines() if line.strip()][-1:] or ['(no output)']
  rep.add(entry, 'pytest', {'exit_code': code, 'summary': summary[0]},
          f'`pytest -m gpu`: exit {code}, {summary[0]}\n\n```\n{tail[-1500:]}\n```')
  if code:
    entry['status'] = 'failed'


def train_run(rep, entry, plan: Plan, env: dict) -> None:
  workdir = os.path.join(rep.directory, 'train_run')
  code, tail = run_command([sys.executable, 'launch.py', '--config=configs/synthetic.py',
                            f'--workdir={workdir}', *plan.train_run], env,
                           os.path.join(rep.directory, 'train_run.log'), 300)
  lines = []
  path = os.path.join(workdir, 'metrics.jsonl')
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      lines = [json.loads(line) for line in f if line.strip()]
  rep.add(entry, 'train_run', {'exit_code': code, 'metrics': lines[-6:]},
          f'`launch.py --config=configs/synthetic.py` (224x224): exit {code}\n\n```\n' +
          '\n'.join(json.dumps(m) for m in lines[-6:]) + f'\n```\n\n```\n{tail[-800:]}\n```')
  if code:
    entry['status'] = 'failed'


def parse_groups(groups: list[str]) -> list[tuple[int, str]]:
  parsed = []
  for g in groups:
    batch, _, dtype = g.partition(':')
    if not batch.isdigit() or int(batch) < 1 or dtype not in ('bfloat16', 'float32'):
      raise app.UsageError(f'--groups takes BATCH:DTYPE with DTYPE bfloat16 or float32, not '
                           f'{g!r}.')
    parsed.append((int(batch), dtype))
  return parsed


def main(argv):
  del argv
  groups = parse_groups(FLAGS.groups or [])
  unknown = set(FLAGS.stages) - set(STAGES)
  if unknown:
    raise app.UsageError(f'Unknown stages {sorted(unknown)}: choose from {", ".join(STAGES)}.')
  out = os.path.abspath(FLAGS.out)
  cache = os.path.abspath(FLAGS.cache_dir or os.path.join(out, 'cache'))
  rep = report_lib.Report(out, 'GPU check' + (' (dry run on CPU)' if FLAGS.dry_run else ''))
  budget_left = lambda: FLAGS.budget_s - rep.elapsed()
  env = subprocess_env(cache)
  run = [s for s in STAGES if s in FLAGS.stages]
  after_steps = run[run.index('train_step') + 1:] if 'train_step' in run else []
  step_budget_left = lambda: budget_left() - sum(ESTIMATE_S[s] for s in after_steps)

  def fits(name: str) -> bool:
    if budget_left() < ESTIMATE_S.get(name, 0):
      rep.skip(name, f'~{ESTIMATE_S[name]} s needed, {budget_left():.0f} s of the budget left')
      return False
    return True

  if 'environment' in run:
    with rep.stage('environment') as e:
      environment(rep, e, FLAGS.wheels, os.path.join(out, 'site'), FLAGS.dry_run)
    if e['status'] == 'failed':
      return 1
  import jax
  jax.config.update('jax_compilation_cache_dir', cache)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  plan = Plan(FLAGS.dry_run)
  if FLAGS.groups:
    plan.groups = groups
  if 'tests' in run and fits('tests'):
    with rep.stage('tests') as e:
      tests(rep, e, dict(env, PYTHONPATH=os.environ.get('PYTHONPATH', '')), FLAGS.dry_run)
  rows = []
  if 'train_step' in run:
    with rep.stage('train_step') as e:
      rows = gpu_stages.train_step(rep, e, plan, step_budget_left)
  batch, rate = gpu_stages.best_batch(rows, plan)
  bounds = None
  if 'switches' in run and fits('switches'):
    with rep.stage('switches') as e:
      gpu_stages.switches(rep, e, plan, batch)
  if 'roofline' in run and fits('roofline'):
    with rep.stage('roofline') as e:
      bounds = gpu_stages.roofline(rep, e, plan, batch, rate)
  if 'layers' in run and fits('layers'):
    with rep.stage('layers') as e:
      gpu_stages.layers(rep, e, plan, batch, bounds)
  if 'input' in run and fits('input'):
    with rep.stage('input') as e:
      gpu_stages.input_stage(rep, e, plan, rate)
  if 'train_run' in run and fits('train_run'):
    with rep.stage('train_run') as e:
      train_run(rep, e, plan, dict(env, PYTHONPATH=os.environ.get('PYTHONPATH', '')))
  failed = [s['name'] for s in rep.stages if s['status'] == 'failed']
  print(f'# report: {os.path.join(out, "report.md")}; failed stages: {failed or "none"}')
  return 1 if failed else 0


if __name__ == '__main__':
  define_flags()
  app.run(main)
