"""The GPU check's input stage: the stream loader's storages and decoders with N threads and N
processes (benchmarks/input_pipeline.py), and JPEG decoding on the device (nvImageCodec where
installed, else the Pillow stand-in), against the train step's img/s.
"""

from __future__ import annotations

import importlib.util


def run(out, p: dict, step_rate: float | None) -> None:
  """`p`: {'images', 'workers', 'batch', 'steps', 'process_rows'} (gpu_plan.Plan.input);
  without process_rows, the one-process row alone runs worker processes."""
  from absl import flags
  flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags (as launch.py parses)

  from benchmarks import input_pipeline as ip
  jpegs = ip.make_jpegs(p['images'])
  stored = {q: ip.prepare(jpegs, q) for q in (95, 90, 0)}
  turbo = importlib.util.find_spec('simplejpeg') is not None
  rows = []
  plan_rows = [('q95-pillow', 1, 1)]
  for name in ('q95-pillow', 'q95-turbo', 'q90-turbo', 'raw'):
    if 'turbo' in name and not turbo:
      continue
    plan_rows.append((name, p['workers'], 0))
    if p['process_rows']:
      plan_rows.append((name, 1, p['workers']))
  for name, threads, processes in plan_rows:
    quality, decoder = ip.STORAGES[name]
    rate = ip.full_pipeline(stored[quality], threads, processes, p['batch'], p['steps'],
                            decoder)
    workers = (f'{processes} process{"es" if processes > 1 else ""}' if processes
               else f'{threads} threads')
    rows.append({'storage': name, 'workers': workers, 'img_per_s': rate,
                 'vs_step': rate / step_rate if step_rate else None})
    out.add('rows', rows)
  table = ['| storage, decoder | workers | img/s | loader / step |', '|---|---|---:|---:|']
  table += [f"| {r['storage']} | {r['workers']} | {r['img_per_s']:,.0f} | "
            f"{'-' if r['vs_step'] is None else format(r['vs_step'], '.2f')} |" for r in rows]
  out.note('rows', '\n'.join(table) + (
      f'\n\nThe step at the best batch: {step_rate:,.0f} img/s.' if step_rate else ''))
  import jax

  from alexnet_jax.data import device_decode as dd
  on_gpu = jax.default_backend() == 'gpu'  # nvImageCodec decodes on a GPU only
  decoder = 'nvimgcodec' if on_gpu and dd.unavailable('nvimgcodec') is None else 'pillow'
  result = ip.device_decode(stored[95], decoder, p['batch'], p['steps'])
  result['decoder'] = decoder
  which = decoder if decoder == 'nvimgcodec' else 'the Pillow stand-in: no GPU or no nvImageCodec'
  out.add('device_decode', result,
          f"Device decode ({which}), q95 256x256 at batch {p['batch']}: "
          f"{result['img_per_s']:,.0f} img/s; against Pillow max |diff| "
          f"{result['max_abs_diff']}, {result['frac_over_2']:.2%} of values over 2.")
