"""The GPU check's stages that set up and check the machine: the environment (versions, the
carried wheels, each import, the CUDA and cuDNN that JAX loaded), the device's measured peaks,
`pytest -m gpu` on the accelerator, and a short training run. Each is `fn(out, context)`, run
in its own process by benchmarks/gpu_stage.py; module-level imports are the standard
library's only, so that what is recorded before an import fails stays recorded.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys

from benchmarks import gpu_stage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The backend each of JAX_PLATFORMS' names runs as (jax.default_backend()).
BACKEND_OF = {'cuda': 'gpu', 'rocm': 'gpu', 'gpu': 'gpu', 'cpu': 'cpu', 'tpu': 'tpu'}


def run_command(args: list[str], env: dict, log_path: str, timeout: float) -> tuple[int, str]:
  """(exit code, or 124 when cut at `timeout`; the last 4000 characters of its output); the
  whole output in `log_path`."""
  with open(log_path, 'w', encoding='utf-8') as log:
    try:
      code = subprocess.run(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            timeout=max(timeout, 1), check=False,
                            preexec_fn=gpu_stage.die_with_parent).returncode
    except subprocess.TimeoutExpired:
      code = 124
  with open(log_path, encoding='utf-8', errors='replace') as f:
    return code, f.read()[-4000:]


def _seconds_left(context: dict, reserve: float = 5.0) -> float:
  import time
  return context['deadline'] - time.time() - reserve


def versions(names) -> dict:
  out = {}
  for name in names:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


def install_wheels(out, wheels: str, site: str, missing: list[str], timeout: float) -> None:
  found = sorted(f for f in os.listdir(wheels) if f.endswith('.whl')) if os.path.isdir(
      wheels) else []
  if not found:
    out.add('wheels', {'missing': missing, 'installed': []},
            f'{", ".join(missing)} missing and no wheels in {wheels}: run '
            'scripts/gpu_wheels.sh here and carry .whl.')
    return
  code, tail = run_command([sys.executable, '-m', 'pip', 'install', '-q', '--no-index',
                            '--no-deps', '--no-compile', '--no-cache-dir', '--upgrade',
                            '--target', site, *[os.path.join(wheels, f) for f in found]],
                           dict(os.environ), os.path.join(os.path.dirname(site), 'pip.log'),
                           timeout)
  out.add('wheels', {'missing': missing, 'installed': found, 'pip_exit_code': code,
                     'site': site, 'pip_tail': tail[-1500:] if code else None},
          f'Installed {len(found)} wheels into {site} (pip exit {code}).')
  import site as site_module
  site_module.addsitedir(site)
  importlib.invalidate_caches()


def cuda_versions() -> dict:
  """The CUDA, cuDNN, cuBLAS... versions that JAX's CUDA plugin loaded (its `_versions`
  module: the runtime's, not the build's, where both are offered)."""
  for name in ('jax_cuda13_plugin', 'jax_cuda12_plugin', 'jaxlib.cuda'):
    try:
      module = importlib.import_module(f'{name}._versions')
    except ImportError:
      continue
    found = {'plugin': name}
    for attr in sorted(dir(module)):
      if attr.endswith('_version') and callable(getattr(module, attr)):
        try:
          found[attr] = getattr(module, attr)()
        except (RuntimeError, TypeError) as e:  # no device for a *_get_version
          found[attr] = f'error: {e}'
    return found
  return {'plugin': None}


def nvidia_smi() -> str | None:
  try:
    return subprocess.run(['nvidia-smi', '--query-gpu=name,driver_version,memory.total,'
                           'clocks.sm,clocks.max.sm,clocks.mem,power.limit,temperature.gpu',
                           '--format=csv'], capture_output=True, text=True, timeout=20,
                          check=False).stdout.strip() or None
  except (OSError, subprocess.TimeoutExpired):
    return None


def environment(out, context: dict) -> None:
  """Versions first (no import needed), then the wheels if the image lacks a module, then
  each import on its own, then what JAX runs on. Every part is written as it is known."""
  from benchmarks import gpu_plan
  out.add('python', sys.version.split()[0], f'Python {sys.version.split()[0]} ({sys.executable}).')
  found = versions(gpu_plan.VERSIONS)
  out.add('versions', found, 'Versions (distribution metadata): ' + ', '.join(
      f'{k} {v}' for k, v in found.items() if v) + '; not installed: ' + ', '.join(
          k for k, v in found.items() if not v))
  smi = nvidia_smi()
  out.add('nvidia_smi', smi, f'nvidia-smi:\n\n```\n{smi}\n```' if smi else 'No nvidia-smi.')
  missing = [m for m in gpu_plan.MISSING_ON_IMAGE if importlib.util.find_spec(m) is None]
  out.add('missing_before', missing)
  if missing:
    install_wheels(out, context['wheels'], context['site'], missing, _seconds_left(context, 30))
  imports = {}
  for module in gpu_plan.IMPORTS:
    try:
      importlib.import_module(module)
      imports[module] = 'ok'
    except Exception as e:  # pylint: disable=broad-except  (any import error is recorded)
      imports[module] = f'{type(e).__name__}: {e}'[:400]
      out.import_failed(module)
    out.add('imports', imports)
  bad = {m: why for m, why in imports.items() if why != 'ok'}
  out.note('imports', f'Imports: {len(imports) - len(bad)} of {len(imports)} ok' + (
      '; failed: ' + '; '.join(f'`{m}`: {why}' for m, why in bad.items()) if bad else '.'))
  if 'jax' in bad:
    out.fail(f'jax does not import: {bad["jax"]}')
    return
  import jax
  devices = jax.devices()
  info = {'backend': jax.default_backend(), 'device_kind': devices[0].device_kind,
          'devices': len(devices),
          'platform_version': getattr(getattr(devices[0], 'client', None), 'platform_version',
                                      None),
          'bytes_limit': (devices[0].memory_stats() or {}).get('bytes_limit'),
          'cuda': cuda_versions(),
          'environment_info': jax.print_environment_info(return_string=True)[-3000:]}
  if not context['dry_run']:  # the calibration's key: the dry run keeps its own
    out.export('device_kind', info['device_kind'])
  if 'torch' not in bad:
    import torch
    info['torch'] = {'version': torch.__version__, 'cuda': torch.version.cuda,
                     'cuda_available': torch.cuda.is_available(),
                     'cudnn': torch.backends.cudnn.version() if torch.cuda.is_available()
                     else None}
  out.add('jax', info, f"JAX runs on {info['backend']} ({info['devices']} x "
          f"{info['device_kind']}); platform {info['platform_version']!r}; CUDA libraries "
          f"loaded: `{json.dumps(info['cuda'])}`; torch: `{json.dumps(info.get('torch'))}`")
  want = BACKEND_OF.get(context['platform'], context['platform'])
  if info['backend'] != want:
    out.fail(f"JAX runs on {info['backend']}, not {want}: check the CUDA plugin (versions "
             'above)')


def device(out, context: dict) -> None:
  """The device's matmul rates and copy bandwidth, measured, beside its data sheet."""
  import jax

  from benchmarks import peaks
  kind = jax.devices()[0].device_kind
  sheet = peaks.sheet(kind)
  out.add('sheet', sheet)
  measured = peaks.measure(context['dry_run'])
  out.export('measured', measured)
  out.export('sheet', sheet)
  lines = ['| | measured | data sheet | measured / sheet |', '|---|---:|---:|---:|']
  for key, unit, scale in (('bfloat16', 'TFLOP/s', 1e12), ('tf32', 'TFLOP/s', 1e12),
                           ('float32', 'TFLOP/s', 1e12), ('bytes_per_s', 'TB/s', 1e12)):
    s = (sheet or {}).get(key)
    lines.append(f'| {key} {unit} | {measured[key] / scale:.3g} | '
                 f"{'-' if s is None else f'{s / scale:.3g}'} | "
                 f"{'-' if s is None else f'{measured[key] / s:.0%}'} |")
  out.add('measured', measured, f'{kind} ({(sheet or {}).get("name", "no data sheet")}): '
          'matmul of random operands and a copy (read + write)\n\n' + '\n'.join(lines))


def tests(out, context: dict) -> None:
  """`pytest -m gpu` on the backend the check asked for: each test records the backend it
  ran on (tests/conftest.py), and fails if that is not the one asked for."""
  log = os.path.join(context['scratch'], 'backends.jsonl')
  if os.path.exists(log):
    os.remove(log)
  want = BACKEND_OF.get(context['platform'], context['platform'])
  env = dict(os.environ, JAX_PLATFORMS=context['platform'], ALEXNET_JAX_EXPECT_BACKEND=want,
             ALEXNET_JAX_BACKEND_LOG=log)
  args = [sys.executable, '-m', 'pytest', '-q', '-rA', '-m', 'gpu', '-p', 'no:cacheprovider',
          'tests/test_gpu.py']
  if context['dry_run']:  # CI runs them all on CPU; here: the backend record and check
    args += ['-k', 'backend']
  code, tail = run_command(args, env, os.path.join(context['scratch'], 'pytest.log'),
                           _seconds_left(context))
  seen = []
  if os.path.exists(log):
    with open(log, encoding='utf-8') as f:
      seen = [json.loads(line) for line in f if line.strip()]
  summary = ([line for line in tail.splitlines() if line.strip()][-1:] or ['(no output)'])[0]
  backends = sorted({s['backend'] for s in seen})
  table = ['| test | backend | device | outcome |', '|---|---|---|---|'] + [
      f"| {s['test']} | {s['backend']} | {s['device_kind']} | {s['outcome']} |" for s in seen]
  out.add('pytest', {'exit_code': code, 'summary': summary, 'asked_for': want,
                     'tests': seen, 'tail': tail[-2500:]},
          f'`pytest -m gpu` with JAX_PLATFORMS={context["platform"]}: exit {code}, {summary}; '
          f'backends seen: {backends or "none recorded"}\n\n' + '\n'.join(table))
  if code or not seen or backends != [want]:
    out.fail(f'pytest exit {code}; backends seen {backends}, asked for {want}')


def train_run(out, context: dict) -> None:
  """`launch.py --config=configs/synthetic.py` at 224x224, its workdir in the scratch folder."""
  from benchmarks import gpu_plan
  plan = gpu_plan.Plan(context['dry_run'])
  workdir = os.path.join(context['scratch'], 'train_run')
  code, tail = run_command([sys.executable, 'launch.py', '--config=configs/synthetic.py',
                            f'--workdir={workdir}', *plan.train_run], dict(os.environ),
                           os.path.join(context['scratch'], 'train_run.log'),
                           _seconds_left(context))
  lines = []
  path = os.path.join(workdir, 'metrics.jsonl')
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      lines = [json.loads(line) for line in f if line.strip()]
  out.add('train_run', {'exit_code': code, 'metrics': lines[-6:]},
          f'`launch.py --config=configs/synthetic.py` (224x224): exit {code}\n\n```\n' +
          '\n'.join(json.dumps(m) for m in lines[-6:]) + f'\n```\n\n```\n{tail[-800:]}\n```')
  if code:
    out.fail(f'launch.py exit {code}')
