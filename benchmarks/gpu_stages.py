"""The GPU check's benchmark stages (benchmarks/gpu_check.py runs them, in this order): the
train step against PyTorch, the implementation switches, the roofline, the layers against
their bounds, the input pipeline against the step. Each writes its results into the report
as it measures them.
"""

from __future__ import annotations

import time

# Seconds per variant of a (batch, dtype) group on an H200 (estimates, from CPU compile counts).
GROUP_S = {'jax': 20, 'eager': 10, 'compile': 45, 'torchvision alexnet eager': 10}


def train_step(rep, entry, plan, budget_left) -> list[dict]:
  import gc

  import jax
  import jax.numpy as jnp

  from benchmarks import train_step as ts
  on_gpu = jax.default_backend() == 'gpu'
  peaks = {'float32': ts.matmul_peak(jnp.float32, 256 if plan.dry_run else 8192)}
  peaks['bfloat16'] = ts.matmul_peak(jnp.bfloat16, 256 if plan.dry_run else 8192)
  from alexnet_jax.model import flops
  sheet = flops.sheet_peak(jax.devices()[0].device_kind)
  rep.add(entry, 'matmul_peaks', peaks, f'Measured matmul peaks (FLOP/s): {peaks}; '
          f'data sheet: {sheet}')
  rows = []
  torch_device = None
  if ts.torch is not None:
    torch_device = ts.torch.device('cuda' if on_gpu else 'cpu')
  for batch, dtype in plan.groups:
    names = ts.torch_variant_names(on_gpu, dtype, dry_run=plan.dry_run,
                                   use_compile=dtype == 'bfloat16')
    if plan.dry_run and (batch, dtype) != plan.groups[0]:
      names = [n for n in names if n != 'compile']  # once is enough to check the path on CPU
    cost = GROUP_S['jax'] + sum(GROUP_S[n] for n in names)
    if budget_left() < cost:
      rep.add(entry, f'skipped {batch} {dtype}', f'needs ~{cost} s, {budget_left():.0f} s left',
              f'Skipped batch {batch} {dtype}: ~{cost} s needed, {budget_left():.0f} s left.')
      continue
    variants = []
    for build in [lambda: ts.JaxVariant(plan.spec, 'towers', batch, dtype)] + [
        (lambda n=n: ts.TorchVariant(plan.spec, n, batch, dtype, torch_device)) for n in names]:
      try:
        variants.append(build())
      except Exception as e:  # pylint: disable=broad-except  (out of memory, a backend bug)
        rep.add(entry, f'failed variant {batch} {dtype} {len(variants)}', repr(e)[:800],
                f'A variant of batch {batch} {dtype} failed to build: `{repr(e)[:400]}`')
    times = ts.measure(variants, plan.steps, plan.warmup, plan.repeats)
    quiet = {'quiet': True, 'note': 'GPU: ratios from one run' if on_gpu else 'dry run'}
    sheet_peak = (sheet or {}).get(dtype) if sheet else None
    for v, t in zip(variants, times):
      row = ts.make_row(v, t, sheet_peak or peaks[dtype], quiet)
      row['mfu_of'] = 'data sheet' if sheet_peak else 'measured matmul'
      rows.append(row)
    ts.add_ratios(rows)
    best_torch = {}
    for r in rows:
      if r['framework'] == 'torch':
        key = (r['batch'], r['dtype'])
        best_torch[key] = max(best_torch.get(key, 0), r['images_per_s'])
    for r in rows:
      if r['framework'] == 'jax' and (r['batch'], r['dtype']) in best_torch:
        r['vs_best_torch'] = r['images_per_s'] / best_torch[r['batch'], r['dtype']]
    entry['markdown'][:] = [m for m in entry['markdown'] if not m.startswith('| framework')]
    rep.add(entry, 'rows', rows, ts.markdown_table(rows) + '\n\nJAX / best PyTorch: ' + ', '.join(
        f"{r['batch']} {r['dtype']}: {r['vs_best_torch']:.2f}" for r in rows
        if r.get('vs_best_torch')))
    del variants
    gc.collect()
    if on_gpu and ts.torch is not None:
      ts.torch.cuda.empty_cache()
  return rows


def best_batch(rows: list[dict], plan) -> tuple[int, float | None]:
  """The bfloat16 JAX batch with the most img/s, and that rate."""
  jax_rows = [r for r in rows if r['framework'] == 'jax' and r['dtype'] == 'bfloat16']
  if not jax_rows:
    return plan.groups[0][0], None
  best = max(jax_rows, key=lambda r: r['images_per_s'])
  return best['batch'], best['images_per_s']


def switches(rep, entry, plan, batch: int) -> None:
  from benchmarks import switches as sw
  rows = sw.measure(plan.spec, batch, 'bfloat16', max(plan.steps // 2, 1), plan.repeats,
                    on_row=lambda built: rep.add(entry, 'built', built))
  winners = {}
  for r in rows[1:]:
    if r['vs_auto'] > winners.get(r['switch'], ('', 1.0))[1]:
      winners[r['switch']] = (r['form'], r['vs_auto'])
  rep.add(entry, 'rows', rows, sw.markdown(rows) + f'\n\nFaster than auto: {winners or "none"}')


def roofline(rep, entry, plan, batch: int, measured: float | None) -> dict:
  from benchmarks import roofline as rl
  result = rl.roofline(plan.spec, batch, 'bfloat16')
  ceiling = result['step']['H200']['layers_img_per_s']
  fraction = measured / ceiling if measured else None
  rep.add(entry, 'roofline', result, rl.markdown(result) + (
      f'\n\nMeasured JAX step at batch {batch}: {measured:,.0f} img/s = {fraction:.1%} of the '
      "H200's sum-of-layer-bounds ceiling." if measured else ''))
  return result


def layers(rep, entry, plan, batch: int, bounds: dict | None) -> None:
  import statistics

  import jax.numpy as jnp

  from benchmarks import layers as layers_lib
  from benchmarks import roofline as rl
  rows = []
  for name, (fn, params, x) in layers_lib.jax_layers(plan.spec, batch).items():
    if name not in layers_lib.NO_BACKWARD:
      params, x = rl._cast(params, jnp.bfloat16), rl._cast(x, jnp.bfloat16)  # pylint: disable=protected-access
    fwd, both = layers_lib.time_jax(fn, params, x, 0, name in layers_lib.PARAMS_ONLY)
    run = fwd if name in layers_lib.NO_BACKWARD else both
    run()
    times = []
    for _ in range(max(plan.repeats, 3)):
      t0 = time.perf_counter()
      for _ in range(plan.steps):
        run()
      times.append((time.perf_counter() - t0) / plan.steps)
    us = 1e6 * statistics.median(times)
    bound = next((r['H200_us'] for r in (bounds or {}).get('layers', []) if r['layer'] == name),
                 None)
    rows.append({'layer': name, 'train_us': us, 'h200_bound_us': bound,
                 'fraction_of_bound': bound / us if bound else None})
    rep.add(entry, 'rows', rows)
  lines = ['| layer | measured fwd+bwd µs | H200 bound µs | bound / measured |',
           '|---|---:|---:|---:|']
  lines += [f"| {r['layer']} | {r['train_us']:.0f} | "
            f"{'-' if r['h200_bound_us'] is None else format(r['h200_bound_us'], '.0f')} | "
            f"{'-' if r['fraction_of_bound'] is None else format(r['fraction_of_bound'], '.0%')} |"
            for r in rows]
  entry['markdown'].append('\n'.join(lines))
  rep.write()


def input_stage(rep, entry, plan, step_rate: float | None) -> None:
  """The stream loader's storages and decoders with `workers` threads and processes, and
  JPEG decoding on the device (nvImageCodec where installed, else the Pillow stand-in),
  against the step's img/s."""
  import importlib.util

  from benchmarks import input_pipeline as ip
  p = plan.input
  jpegs = ip.make_jpegs(p['images'])
  stored = {q: ip.prepare(jpegs, q) for q in (95, 90, 0)}
  turbo = importlib.util.find_spec('simplejpeg') is not None
  rows = []
  plan_rows = [('q95-pillow', 1, 1)]
  for name in ('q95-pillow', 'q95-turbo', 'q90-turbo', 'raw'):
    if 'turbo' in name and not turbo:
      continue
    plan_rows += [(name, p['workers'], 0), (name, 1, p['workers'])]
  for name, threads, processes in plan_rows:
    quality, decoder = ip.STORAGES[name]
    rate = ip.full_pipeline(stored[quality], threads, processes, p['batch'], p['steps'],
                            decoder)
    workers = f'{processes} process{"es" if processes > 1 else ""}' if processes else f'{threads} threads'
    rows.append({'storage': name, 'workers': workers, 'img_per_s': rate,
                 'vs_step': rate / step_rate if step_rate else None})
    rep.add(entry, 'rows', rows)
  table = ['| storage, decoder | workers | img/s | loader / step |', '|---|---|---:|---:|']
  table += [f"| {r['storage']} | {r['workers']} | {r['img_per_s']:,.0f} | "
            f"{'-' if r['vs_step'] is None else format(r['vs_step'], '.2f')} |" for r in rows]
  entry['markdown'].append('\n'.join(table) + (
      f'\n\nThe step at the best batch: {step_rate:,.0f} img/s.' if step_rate else ''))
  rep.write()
  from alexnet_jax.data import device_decode as dd
  decoder = 'nvimgcodec' if dd.unavailable('nvimgcodec') is None else 'pillow'
  try:
    result = ip.device_decode(stored[95], decoder, p['batch'], p['steps'])
  except Exception as e:  # pylint: disable=broad-except
    result = {'error': f'{type(e).__name__}: {e}'}
  result['decoder'] = decoder
  which = decoder if decoder == 'nvimgcodec' else 'the Pillow stand-in: no nvImageCodec here'
  figures = result.get('error') or (
      f"{result['img_per_s']:,.0f} img/s; against Pillow max |diff| "
      f"{result['max_abs_diff']}, {result['frac_over_2']:.2%} of values over 2")
  rep.add(entry, 'device_decode', result,
          f'Device decode ({which}), q95 256x256 at batch {p["batch"]}: {figures}.')
