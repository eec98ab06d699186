"""The GPU check: one command that returns every figure the project needs from one GPU (an H100
or an H200), in at most three files, whatever fails on the way (docs/gpu.md).

    python -m benchmarks.gpu_check --out=DIR                            # on the GPU
    python -m benchmarks.gpu_check --out=/tmp/gc --dry_run --budget_s=150   # on CPU, tiny

Stages, most valuable first (benchmarks/gpu_plan.py; `--stages` picks some for a rerun), each
in its own process with its own time limit (benchmarks/gpu_runner.py):

  environment     versions (read before anything is imported), the carried wheels installed
                  if the image lacks a module, each import tried alone, the CUDA and cuDNN JAX
                  loaded, nvidia-smi
  device          the matmul rate (bf16, TF32, float32) and copy bandwidth, measured, against
                  the device's data sheet
  tests           `pytest -m gpu` on the accelerator (JAX_PLATFORMS set, the backend each test
                  saw recorded, a test on the wrong backend fails)
  train_step      the 224x224 step, JAX against PyTorch (cudnn.benchmark, AMP + channels_last,
                  torch.compile, torchvision's alexnet), at several (batch, dtype) groups that
                  fit what the later stages leave: img/s, MFU by sheet and by measurement,
                  XLA's memory estimate and the measured peak, clocks and power
  switches        each implementation switch at the best batch, repeated; a winner only beyond
                  3 spreads
  roofline        per-layer bounds at the best batch by this device's sheet and measurements
  layers          each layer's forward+backward against its bounds
  input           the stream loader against the step; JPEG decoding on the device
  train_run       `launch.py --config=configs/synthetic.py`, a short run
  torch_autotune  torch.compile 'max-autotune-no-cudagraphs' against 'default', if time is left

--out receives report.json, report.md and logs.txt only (rewritten as each stage goes: a kill
at any moment leaves every finished stage's figures); the rest (stage logs, the compilation
cache, the installed wheels, the training run's workdir) goes to --scratch. Stage estimates
come from benchmarks/gpu_calibration.json for this device kind, else from guesses; each
report carries its real times for the next (`python -m benchmarks.gpu_calibration REPORT`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

from absl import app
from absl import flags

from benchmarks import gpu_calibration
from benchmarks import gpu_plan
from benchmarks import gpu_runner
from benchmarks import provenance
from benchmarks import report as report_lib

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line's flags (only when run as a script)."""
  flags.DEFINE_string('out', None, 'Folder for report.json, report.md and logs.txt only.',
                      required=True)
  flags.DEFINE_string('scratch', None, 'Folder for everything else (stage logs, compilation '
                      'cache, wheels installed, train run); default a new temporary folder, '
                      'removed at the end.')
  flags.DEFINE_bool('dry_run', False, 'Every stage on CPU with tiny shapes (CI runs parts).')
  flags.DEFINE_list('stages', list(gpu_plan.NAMES), f'Stages to run, of '
                    f'{", ".join(gpu_plan.NAMES)}.')
  flags.DEFINE_float('budget_s', 450.0, 'Seconds the whole command may take; a stage that '
                     'would not fit is skipped, one that overruns its limit is cut.')
  flags.DEFINE_float('limit_factor', gpu_runner.CUT_FACTOR, 'A stage is cut at this many times '
                     f'its estimate (and at least {gpu_runner.CUT_MIN_EXTRA_S:.0f} s over it).')
  flags.DEFINE_string('platform', None, 'JAX_PLATFORMS for every stage; default cuda, cpu in '
                      'the dry run.')
  flags.DEFINE_bool('tf32', False, 'float32 rows with TF32 on in JAX and PyTorch alike '
                    '(default: off in both).')
  flags.DEFINE_string('cache_dir', None, 'JAX persistent compilation cache (with XLA\'s '
                      'autotune results); default SCRATCH/cache.')
  flags.DEFINE_string('wheels', os.path.join(gpu_runner.ROOT, '.whl'), 'Wheels for what the '
                      'image lacks (scripts/gpu_wheels.sh).')
  flags.DEFINE_list('groups', None, 'Train-step groups as BATCH:DTYPE (default: the plan\'s, '
                    'most informative first), e.g. 2048:float32,128:bfloat16 for a rerun.')


def device_kind_before_jax(dry_run: bool) -> str | None:
  """The calibration's key before JAX has said: nvidia-smi's name for GPU 0 (the same string
  as JAX's device_kind on NVIDIA GPUs)."""
  if dry_run:
    return gpu_calibration.DRY_RUN_KIND
  try:
    name = subprocess.run(['nvidia-smi', '--query-gpu=name', '--format=csv,noheader', '--id=0'],
                          capture_output=True, text=True, timeout=20, check=False).stdout
  except (OSError, subprocess.TimeoutExpired):
    return None
  return name.strip() or None


# The dry run compiles without LLVM's optimisations: the same programs in a quarter of the
# CPU time (the train step of its narrow network: 6.5 s against 25 s).
DRY_RUN_XLA_FLAGS = '--xla_backend_optimization_level=0'


def stage_env(platform: str, scratch: str, cache: str, site: str, dry_run: bool) -> dict:
  """The environment of every stage's process."""
  path = os.pathsep.join(p for p in (site, os.environ.get('PYTHONPATH')) if p)
  xla_flags = os.environ.get('XLA_FLAGS', '')
  if dry_run and 'xla_backend_optimization_level' not in xla_flags:
    xla_flags = f'{DRY_RUN_XLA_FLAGS} {xla_flags}'.strip()
  return dict(os.environ, XLA_FLAGS=xla_flags, JAX_PLATFORMS=platform,
              JAX_COMPILATION_CACHE_DIR=cache,
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0', PYTHONUNBUFFERED='1',
              PYTHONPATH=path, TMPDIR=os.path.join(scratch, 'tmp'),
              XLA_PYTHON_CLIENT_PREALLOCATE='false')  # torch shares the GPU


def run_check(out: str, scratch: str, stages: list, *, dry_run: bool, budget_s: float,
              platform: str, tf32: bool, cache: str, wheels: str, groups,
              limit_factor: float = gpu_runner.CUT_FACTOR,
              limit_extra_s: float = gpu_runner.CUT_MIN_EXTRA_S) -> report_lib.Report:
  """Runs `stages` (gpu_runner.Stage) into a report in `out`, everything else in `scratch`."""
  os.makedirs(os.path.join(scratch, 'tmp'), exist_ok=True)
  kind = device_kind_before_jax(dry_run)
  info = provenance.provenance()
  rep = report_lib.Report(out, 'GPU check' + (' (dry run on CPU)' if dry_run else ''), {
      'provenance': info, 'provenance_line': provenance.line(info), 'device_kind': kind,
      'budget_s': budget_s, 'scratch': scratch, 'platform': platform, 'tf32': tf32})
  print(f'# {provenance.line(info)}\n# report: {os.path.join(out, "report.md")}', flush=True)
  site = os.path.join(scratch, 'site')
  calibration = gpu_calibration.load()
  env = stage_env(platform, scratch, cache, site, dry_run)
  runner = gpu_runner.Runner(rep, scratch, env, budget_s, kind, calibration, limit_factor,
                             limit_extra_s)
  context = {'dry_run': dry_run, 'platform': platform, 'tf32': tf32, 'wheels': wheels,
             'site': site, 'groups': groups, 'device_kind': kind}
  runner.run(stages, context)
  rep.calibration = dict(zip(('device_kind', 'measured'), gpu_calibration.from_report(
      {'stages': rep.stages, 'device_kind': runner.kind, 'provenance': info,
       'started': rep.head['started']})))
  rep.write()
  return rep


def main(argv):
  del argv
  try:
    groups = gpu_plan.parse_groups(FLAGS.groups or [])
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  unknown = set(FLAGS.stages) - set(gpu_plan.NAMES)
  if unknown:
    raise app.UsageError(f'Unknown stages {sorted(unknown)}: choose from '
                         f'{", ".join(gpu_plan.NAMES)}.')
  out = os.path.abspath(FLAGS.out)
  own_scratch = FLAGS.scratch is None
  scratch = os.path.abspath(FLAGS.scratch or tempfile.mkdtemp(prefix='gpu_check_'))
  if os.path.commonpath([out, scratch]) == out:
    raise app.UsageError('--scratch must lie outside --out: only the reports go back.')
  stages = [s for s in gpu_plan.STAGES if s.name in FLAGS.stages]
  try:
    rep = run_check(out, scratch, stages, dry_run=FLAGS.dry_run, budget_s=FLAGS.budget_s,
                    platform=FLAGS.platform or ('cpu' if FLAGS.dry_run else 'cuda'),
                    tf32=FLAGS.tf32, cache=os.path.abspath(FLAGS.cache_dir or os.path.join(
                        scratch, 'cache')), wheels=FLAGS.wheels, groups=groups or None,
                    limit_factor=FLAGS.limit_factor)
  finally:
    if own_scratch:
      shutil.rmtree(scratch, ignore_errors=True)
  failed = [s['name'] for s in rep.stages if s['status'] in ('failed', 'cut')]
  print(f'# report: {os.path.join(out, "report.md")}; in {rep.elapsed():.0f} s; failed or '
        f'cut: {failed or "none"}', flush=True)
  return 1 if failed else 0


if __name__ == '__main__':
  define_flags()
  app.run(main)
