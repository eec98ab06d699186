"""The GPU check's benchmark stages, each `fn(out, context)` in its own process
(benchmarks/gpu_stage.py): the train step against PyTorch, the implementation switches, the
roofline, the layers against their bounds, the input pipeline against the step, and
torch.compile's max-autotune. Each writes its results through `out` as it measures them.
"""

from __future__ import annotations

import statistics
import time
import traceback

EXIT_S = 5.0  # kept free at the end of the train step's limit: the process's exit


def _jax_peak_bytes() -> int | None:
  import jax
  return (jax.devices()[0].memory_stats() or {}).get('peak_bytes_in_use')


def _mib(n) -> float | None:
  return None if n is None else n / 2**20


def _peaks(context: dict, dtype: str) -> tuple[float | None, float | None]:
  """(data-sheet, measured) FLOP/s of this device for the dtype as the rows run it."""
  from benchmarks import peaks
  key = 'bfloat16' if dtype == 'bfloat16' else peaks.float32_key(context['tf32'])
  return (context.get('sheet') or {}).get(key), (context.get('measured') or {}).get(key)


def precision(context: dict, dtype: str) -> str:
  """jax_default_matmul_precision of the JAX rows: float32 as PyTorch runs it (TF32 off, or
  on with --tf32); bfloat16 operands are bfloat16 at any precision."""
  if dtype == 'bfloat16':
    return 'default'
  return 'tensorfloat32' if context['tf32'] else 'float32'


def _row(v, times: list[float], flops: float | None, flops_source: str, context: dict) -> dict:
  from benchmarks import peaks
  from benchmarks import switches
  step_s = statistics.median(times)
  sheet, measured = _peaks(context, v.dtype)
  return {'framework': v.framework, 'variant': v.variant, 'batch': v.batch, 'dtype': v.dtype,
          'images_per_s': v.batch / step_s, 'step_ms': 1e3 * step_s,
          'step_ms_all': [1e3 * t for t in times],
          'spread_ms': 1e3 * switches.spread(times), 'flops_per_step': flops,
          'flops_source': flops_source, 'mfu_sheet': peaks.mfu(flops, step_s, sheet),
          'mfu_measured': peaks.mfu(flops, step_s, measured), 'compile_s': v.compile_s,
          'settings': v.settings}


def train_step_table(rows: list[dict]) -> str:
  f = lambda x, spec: '-' if x is None else format(x, spec)
  lines = ['| framework | variant | batch | dtype | img/s | step ms (spread) | MFU sheet | '
           'MFU measured | XLA estimate MiB | measured peak MiB | compile s | JAX / best torch |',
           '|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|']
  for r in rows:
    lines.append(
        f"| {r['framework']} | {r['variant']} | {r['batch']} | {r['dtype']} | "
        f"{r['images_per_s']:,.0f} | {r['step_ms']:.1f} ({r['spread_ms']:.2f}) | "
        f"{f(r['mfu_sheet'], '.1%')} | {f(r['mfu_measured'], '.1%')} | "
        f"{f(r.get('xla_estimate_mib'), '.0f')} | {f(r.get('measured_peak_mib'), '.0f')}"
        f"{r.get('peak_note', '')} | {f(r['compile_s'], '.1f')} | "
        f"{f(r.get('vs_best_torch'), '.2f')} |")
  settings = {}
  for r in rows:
    settings.setdefault(f"{r['framework']} {r['variant']} {r['dtype']}", r['settings'])
  lines += ['', 'Settings of each row (as run):', '']
  lines += [f'- **{k}**: {v}' for k, v in settings.items()]
  lines += ['', 'MFU: FLOPs per step (XLA\'s count of the JAX step; the same for the two-tower '
            'PyTorch rows; none for torchvision\'s one-tower net) / step time / peak, by the data '
            'sheet and by the matmul measured in the device stage. Spread: median absolute '
            'deviation of the repeats. Measured peak: JAX\'s device peak after the group (≤: '
            'set by an earlier group), torch.cuda.max_memory_allocated for PyTorch.']
  return '\n'.join(lines)


def _build_group(out, plan, batch: int, dtype: str, names: list[str], context: dict,
                 torch_device) -> list:
  from benchmarks import train_step as ts
  builders = [('jax', lambda: ts.JaxVariant(plan.spec, 'towers', batch, dtype,
                                            precision(context, dtype)))]
  builders += [(n, lambda n=n: ts.TorchVariant(plan.spec, n, batch, dtype, torch_device,
                                               context['tf32'], plan.compile_backend))
               for n in names]
  variants = []
  for name, build in builders:
    try:
      variants.append(build())
    except Exception:  # pylint: disable=broad-except  (out of memory, a compiler's error)
      out.add(f'failed {batch} {dtype} {name}', traceback.format_exc()[-2000:],
              f'{name} at batch {batch} {dtype} failed to build: '
              f'`{traceback.format_exc().strip().splitlines()[-1][:300]}`')
  return variants


def _run_group(out, plan, batch: int, dtype: str, names: list[str], context: dict,
               torch_device) -> tuple[list[dict], dict]:
  """The rows of one (batch, dtype) group, and the clocks while it was timed."""
  from benchmarks import gpu_clocks
  from benchmarks import train_step as ts
  peak_before = _jax_peak_bytes()
  variants = _build_group(out, plan, batch, dtype, names, context, torch_device)
  with gpu_clocks.Sampler() as sampler:
    times = ts.measure(variants, plan.steps, plan.warmup, plan.repeats)
  peak_after = _jax_peak_bytes()
  jax_flops = next((v.flops for v in variants if v.framework == 'jax'), None)
  rows = []
  for v, t in zip(variants, times):
    if v.framework == 'jax':
      row = _row(v, t, v.flops, v.flops_source, context)
      row['xla_estimate_mib'] = _mib(v.memory_bytes)
      row['measured_peak_mib'] = _mib(peak_after)
      row['peak_note'] = '' if peak_after is None or peak_before is None or (
          peak_after > peak_before) else ' ≤'
    elif v.variant.startswith('torchvision'):
      row = _row(v, t, None, 'none (another network)', context)
      row['measured_peak_mib'] = _mib(v.memory_bytes)
    else:
      row = _row(v, t, jax_flops, 'the JAX step\'s (XLA)', context)
      row['measured_peak_mib'] = _mib(v.memory_bytes)
    rows.append(row)
  return rows, sampler.summary()


def train_step(out, context: dict) -> None:
  """Each (batch, dtype) group of the plan that fits the stage's limit: the JAX step and the
  PyTorch baselines, interleaved, with the clocks sampled while they are timed."""
  import gc

  import jax

  from benchmarks import gpu_calibration
  from benchmarks import gpu_clocks
  from benchmarks import gpu_plan
  from benchmarks import peaks
  from benchmarks import train_step as ts
  plan = gpu_plan.Plan(context['dry_run'], context.get('groups'))
  on_gpu = jax.default_backend() == 'gpu'
  if context.get('sheet') is None:  # the device stage did not run (a rerun of some stages)
    context['sheet'] = peaks.sheet(jax.devices()[0].device_kind)
  torch_device = None if ts.torch is None else ts.torch.device('cuda' if on_gpu else 'cpu')
  calibration = gpu_calibration.load()
  rows, group_s, clocks = [], {}, {}
  for batch, dtype in plan.groups:
    key = f'{batch} {dtype}'
    names = ts.torch_variant_names(on_gpu, dtype, dry_run=plan.dry_run,
                                   use_compile=dtype == 'bfloat16')
    if plan.dry_run:  # each path once: AMP and torch.compile in bfloat16, torchvision's
      # full-width net in float32 (seconds a step on CPU in bfloat16)
      names = [n for n in names if n.startswith('torchvision') == (dtype == 'float32')]
    guess = gpu_plan.GROUP_S['jax'] + sum(gpu_plan.GROUP_S[n] for n in names)
    cost, source = gpu_calibration.estimate(calibration, context.get('device_kind'), key,
                                            'groups', guess)
    left = context['deadline'] - time.time() - EXIT_S
    if left < cost:
      out.add(f'skipped {key}', f'needs ~{cost:.0f} s ({source}), {left:.0f} s left',
              f'Skipped batch {batch} {dtype}: ~{cost:.0f} s needed ({source}), {left:.0f} s '
              'left.')
      continue
    t0 = time.monotonic()
    try:
      group_rows, clocks[key] = _run_group(out, plan, batch, dtype, names, context,
                                           torch_device)
    except Exception:  # pylint: disable=broad-except  (out of memory in one group's steps)
      out.add(f'failed {key}', traceback.format_exc()[-2000:],
              f'Batch {batch} {dtype} failed while timed: '
              f'`{traceback.format_exc().strip().splitlines()[-1][:300]}`')
      group_rows = []
    rows += group_rows
    best_torch = max((r['images_per_s'] for r in rows if r['framework'] == 'torch'
                      and (r['batch'], r['dtype']) == (batch, dtype)), default=None)
    for r in rows:
      if r['framework'] == 'jax' and (r['batch'], r['dtype']) == (batch, dtype) and best_torch:
        r['vs_best_torch'] = r['images_per_s'] / best_torch
    group_s[key] = round(time.monotonic() - t0, 1)
    out.add('group_s', group_s)
    out.add('clocks', clocks, 'Clocks while timed: ' + '; '.join(
        f'{k}: {gpu_clocks.text(c)}' for k, c in clocks.items()))
    out.add('rows', rows, train_step_table(rows))
    best = max((r for r in rows if r['framework'] == 'jax' and r['dtype'] == 'bfloat16'),
               key=lambda r: r['images_per_s'], default=None)
    if best:
      out.export('best_batch', best['batch'])
      out.export('best_rate', best['images_per_s'])
    gc.collect()  # the group's variants, before the next group's
    if on_gpu and ts.torch is not None:
      ts.torch.cuda.empty_cache()


def _batch(context: dict, plan) -> int:
  return context.get('best_batch') or plan.groups[0][0]


def switches(out, context: dict) -> None:
  """Each switch's forms in the bfloat16 step at the best batch, repeated: a form replaces
  'auto' only beyond 3 spreads (benchmarks.switches.decide)."""
  import jax

  from benchmarks import gpu_clocks
  from benchmarks import gpu_plan
  from benchmarks import switches as sw
  plan = gpu_plan.Plan(context['dry_run'], context.get('groups'))
  batch = _batch(context, plan)
  with gpu_clocks.Sampler() as sampler:
    rows = sw.measure(plan.spec, batch, 'bfloat16', max(plan.steps // 2, 1), plan.repeats,
                      only=plan.switches, on_row=lambda built: out.add('built', built))
  chosen = sw.winners(rows, jax.default_backend())
  proposal = {s: c['form'] for s, c in chosen.items()}
  out.add('clocks', sampler.summary())
  out.add('winners', chosen)
  out.add('rows', rows, f'Batch {batch} bfloat16, {plan.repeats} repeats of '
          f'{max(plan.steps // 2, 1)} steps, interleaved. Clocks: '
          f'{gpu_clocks.text(sampler.summary())}\n\n' + sw.markdown(rows) +
          '\n\nVerdicts: ' + ', '.join(f"{s}: {c['verdict']} ({c['form']})"
                                        for s, c in chosen.items()) +
          f"\n\n`AUTO['{jax.default_backend()}']` by this run: `{proposal}`")


def roofline(out, context: dict) -> None:
  """The per-layer bounds at the best batch on this device, by its data sheet and by its
  measured matmul rate and copy bandwidth, and the measured step against each ceiling."""
  import jax

  from benchmarks import gpu_plan
  from benchmarks import roofline as rl
  plan = gpu_plan.Plan(context['dry_run'], context.get('groups'))
  batch, rate = _batch(context, plan), context.get('best_rate')
  from benchmarks import peaks
  kind = jax.devices()[0].device_kind
  sheet, measured = context.get('sheet') or peaks.sheet(kind), context.get('measured')
  devices = {}
  if sheet:
    devices[f"{sheet['name']} sheet"] = rl.device_row(sheet)
  if measured:
    devices[f"{sheet['name'] if sheet else kind} measured"] = rl.device_row(measured)
  if not devices:
    raise RuntimeError(f'no data sheet for {kind!r} and no measured peaks (the device stage '
                       'failed): nothing to bound by')
  result = rl.roofline(plan.spec, batch, 'bfloat16', devices, only=plan.layers)
  out.export('bounds', {r['layer']: {d: r[f'{d}_us'] for d in devices}
                        for r in result['layers']})
  lines = [rl.markdown(result)]
  if rate:
    lines.append('Measured JAX step at batch %d: %s img/s = %s of the sum-of-layer-bounds '
                 'ceiling.' % (batch, f'{rate:,.0f}', ', '.join(
                     f"{rate / result['step'][d]['layers_img_per_s']:.1%} by {d}"
                     for d in devices)))
  out.add('roofline', result, '\n\n'.join(lines))


def layers(out, context: dict) -> None:
  """Each layer's forward+backward in bfloat16 at the best batch, against its bounds."""
  import jax.numpy as jnp

  from benchmarks import gpu_plan
  from benchmarks import layers as layers_lib
  from benchmarks import roofline as rl
  plan = gpu_plan.Plan(context['dry_run'], context.get('groups'))
  batch = _batch(context, plan)
  bounds = context.get('bounds') or {}
  labels = list(next(iter(bounds.values()), {}))
  rows = []
  for name, (fn, params, x) in layers_lib.jax_layers(plan.spec, batch).items():
    if plan.layers is not None and name not in plan.layers:
      continue
    if name not in layers_lib.NO_BACKWARD:
      params, x = rl.cast(params, jnp.bfloat16), rl.cast(x, jnp.bfloat16)
    fwd, both = layers_lib.time_jax(fn, params, x, 0, name in layers_lib.PARAMS_ONLY)
    run = fwd if name in layers_lib.NO_BACKWARD else both
    run()
    times = []
    for _ in range(plan.repeats):
      t0 = time.perf_counter()
      for _ in range(plan.steps):
        run()
      times.append((time.perf_counter() - t0) / plan.steps)
    us = 1e6 * statistics.median(times)
    rows.append({'layer': name, 'train_us': us, 'bounds_us': bounds.get(name, {}),
                 'fraction_of_bound': {d: b / us for d, b in bounds.get(name, {}).items()}})
    out.add('rows', rows)
  table = ['| layer | measured fwd+bwd µs | ' + ' | '.join(f'{d} bound µs (bound / measured)'
                                                         for d in labels) + ' |',
           '|---|---:|' + '---:|' * len(labels)]
  table += [f"| {r['layer']} | {r['train_us']:.0f} | " + ' | '.join(
      f"{r['bounds_us'][d]:.0f} ({r['fraction_of_bound'][d]:.0%})" if d in r['bounds_us']
      else '-' for d in labels) + ' |' for r in rows]
  out.note('table', '\n'.join(table))


def input_stage(out, context: dict) -> None:
  """The stream loader's storages and decoders with `workers` threads and processes, and
  JPEG decoding on the device, against the step's img/s (benchmarks/gpu_input.py)."""
  from benchmarks import gpu_input
  from benchmarks import gpu_plan
  gpu_input.run(out, gpu_plan.Plan(context['dry_run']).input, context.get('best_rate'))


def torch_autotune(out, context: dict) -> None:
  """torch.compile's 'max-autotune-no-cudagraphs' against its 'default' mode at the best batch
  in bfloat16, interleaved: whether the PyTorch baseline had more to give."""
  import jax

  from benchmarks import gpu_plan
  from benchmarks import train_step as ts
  plan = gpu_plan.Plan(context['dry_run'], context.get('groups'))
  batch = _batch(context, plan)
  device = ts.torch.device('cuda' if jax.default_backend() == 'gpu' else 'cpu')
  variants = []
  for name in ('compile', 'compile max-autotune-no-cudagraphs'):
    variants.append(ts.TorchVariant(plan.spec, name, batch, 'bfloat16', device,
                                    context['tf32'], plan.compile_backend))
    out.add('built', [v.variant for v in variants])
  times = ts.measure(variants, plan.steps, plan.warmup, plan.repeats)
  rows = [_row(v, t, None, 'none', context) for v, t in zip(variants, times)]
  for r, v in zip(rows, variants):
    r['measured_peak_mib'] = _mib(v.memory_bytes)
    r['vs_compile_default'] = r['images_per_s'] / rows[0]['images_per_s']
  out.add('rows', rows, train_step_table(rows) + '\n\nmax-autotune-no-cudagraphs / default: '
          f"{rows[1]['vs_compile_default']:.2f}")
