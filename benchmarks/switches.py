"""Each implementation switch (alexnet_jax/model/implementations.py) timed in the train step of
the 224x224 network, every form against the backend's 'auto' form, interleaved in one run.

    python -m benchmarks.switches                       # batch 32 float32 on CPU
    python -m benchmarks.switches --batch=2048 --dtype=bfloat16 --json_out=s.json

A switch's forms give the same sums; what differs is the time. Each form is its own
compiled step (`steps.make_train_step` of `AlexNetSpec` with that one field changed), and
the repeats alternate between forms, so that a background load hits them alike. A form wins
over 'auto' only when its median beats auto's by more than 3 spreads (median absolute
deviations of the repeats); otherwise it is a tie and the default stays (`decide`).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time

from alexnet_jax import xla_cpu

if __name__ == '__main__':
  xla_cpu.preload_allocator()

xla_cpu.configure()

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from alexnet_jax.model import implementations  # noqa: E402
from alexnet_jax.model import network  # noqa: E402
from alexnet_jax.parallel import sharding  # noqa: E402
from alexnet_jax.train import optimizer  # noqa: E402
from alexnet_jax.train import steps  # noqa: E402
from benchmarks import machine  # noqa: E402

FIELDS = {'conv1': 'conv1_impl', 'conv1_input': 'conv1_input', 'pool_backward': 'pool_backward',
          'tower_conv': 'tower_conv', 'lrn': 'lrn_impl'}
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


class Step:
  """The compiled train step of `spec` at (batch, dtype) on one device, with its inputs."""

  def __init__(self, spec, batch: int, dtype: str, compiler_options=None):
    layout = sharding.Layout(sharding.make_mesh(1, 1, jax.devices()[:1]), 'towers')
    tx = optimizer.paper_momentum(0.01)
    self.state = steps.create_train_state(jax.random.key(0), spec, tx, layout)
    rng = np.random.default_rng(0)
    self.images = jax.device_put(rng.normal(0, 60, (batch, spec.image_size, spec.image_size,
                                                     spec.in_channels)).astype(np.float32))
    self.labels = jax.device_put(rng.integers(0, spec.num_classes, batch).astype(np.int32))
    step = steps.make_train_step(spec, layout, tx, batch, compute_dtype=DTYPES[dtype],
                                 grad_norm=False)
    t0 = time.perf_counter()
    self.step = step.lower(self.state, self.images, self.labels).compile(
        compiler_options=compiler_options or {})
    self.compile_s = time.perf_counter() - t0
    self.run(1)

  def run(self, n: int) -> None:
    out = None
    for _ in range(n):
      self.state, out = self.step(self.state, self.images, self.labels)
    jax.block_until_ready((self.state, out))


def forms(platform: str) -> list[tuple[str, str]]:
  """(switch, form) of every form that is not the platform's 'auto' one."""
  auto = implementations.AUTO.get(platform, implementations.AUTO['default'])
  return [(switch, f) for switch, choices in implementations.CHOICES.items()
          for f in choices if f != auto[switch]]


def measure(spec, batch: int, dtype: str, steps_per_repeat: int, repeats: int,
            gap: float = 0.0, only=None, on_row=None) -> list[dict]:
  """Rows {switch, form, step_ms, vs_auto, compile_s}: 'auto' first, then each other form.
  `on_row(rows)` is called as each variant is built (a report written as it goes)."""
  platform = jax.default_backend()
  variants = [('auto', 'auto', spec)]
  for switch, form in forms(platform):
    if only is None or switch in only:
      variants.append((switch, form, dataclasses.replace(spec, **{FIELDS[switch]: form})))
  built = []
  for switch, form, s in variants:
    built.append((switch, form, Step(s, batch, dtype)))
    if on_row:
      on_row([{'switch': sw, 'form': f, 'compile_s': st.compile_s} for sw, f, st in built])
  times = {i: [] for i in range(len(built))}
  for _ in range(repeats):
    for i, (_, _, step) in enumerate(built):
      time.sleep(gap)
      t0 = time.perf_counter()
      step.run(steps_per_repeat)
      times[i].append((time.perf_counter() - t0) / steps_per_repeat)
  auto_ms = 1e3 * statistics.median(times[0])
  rows = []
  for i, (switch, form, step) in enumerate(built):
    ms = [1e3 * t for t in times[i]]
    rows.append({'switch': switch, 'form': form, 'step_ms': statistics.median(ms),
                 'step_ms_all': ms, 'spread_ms': spread(ms),
                 'vs_auto': auto_ms / statistics.median(ms),
                 'verdict': None if i == 0 else decide(rows[0]['step_ms_all'], ms),
                 'compile_s': step.compile_s, 'batch': batch, 'dtype': dtype})
  return rows


# A form replaces the default only when it is faster by more than this many spreads.
SPREADS_TO_WIN = 3.0


def spread(times: list[float]) -> float:
  """The median absolute deviation of repeated timings: how far a repeat strays, robust to
  one slow outlier."""
  m = statistics.median(times)
  return statistics.median(abs(t - m) for t in times)


def decide(default: list[float], other: list[float], k: float = SPREADS_TO_WIN) -> str:
  """'faster' when `other`'s median beats `default`'s by more than k times the larger of
  the two spreads, 'slower' when it loses by as much, else 'tie' (the default stays)."""
  gap = statistics.median(default) - statistics.median(other)
  noise = k * max(spread(default), spread(other))
  if gap > noise:
    return 'faster'
  if -gap > noise:
    return 'slower'
  return 'tie'


def winners(rows: list[dict], platform: str) -> dict:
  """{switch: {'form', 'verdict', 'default'}}: the fastest form whose verdict against the
  platform's current 'auto' form is 'faster', else that form ('tie' or 'slower')."""
  auto = implementations.AUTO.get(platform, implementations.AUTO['default'])
  out = {}
  for switch in implementations.CHOICES:
    forms = [r for r in rows[1:] if r['switch'] == switch]
    faster = sorted((r for r in forms if r['verdict'] == 'faster'), key=lambda r: r['step_ms'])
    if faster:
      out[switch] = {'form': faster[0]['form'], 'verdict': 'faster', 'default': auto[switch]}
    elif forms:
      verdict = 'tie' if any(r['verdict'] == 'tie' for r in forms) else 'slower'
      out[switch] = {'form': auto[switch], 'verdict': verdict, 'default': auto[switch]}
  return out


def markdown(rows: list[dict]) -> str:
  lines = ['| switch | form | step ms (median) | spread ms (MAD) | auto / this | against auto '
           f'(beyond {SPREADS_TO_WIN:g} spreads) | compile s |',
           '|---|---|---:|---:|---:|---|---:|']
  for r in rows:
    lines.append(f"| {r['switch']} | {r['form']} | {r['step_ms']:.2f} | {r['spread_ms']:.2f} | "
                 f"{r['vs_auto']:.2f} | {r['verdict'] or '-'} | {r['compile_s']:.1f} |")
  return '\n'.join(lines)


FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line's flags (only when run as a script: other modules import this one)."""
  flags.DEFINE_integer('batch', 32, 'Batch size.')
  flags.DEFINE_enum('dtype', 'float32', list(DTYPES), 'Compute dtype.')
  flags.DEFINE_integer('steps', 2, 'Steps per timed repeat.')
  flags.DEFINE_integer('repeats', 5, 'Timed repeats; the median is reported.')
  flags.DEFINE_list('only', None, 'Switches to time (default: all).')
  flags.DEFINE_string('json_out', None, 'Write the rows as JSON here.')


def main(argv):
  del argv
  quiet = machine.Quiet()  # the load before anything compiles
  quiet.start()
  cpu = jax.default_backend() == 'cpu'
  rows = measure(network.AlexNetSpec(), FLAGS.batch, FLAGS.dtype, FLAGS.steps, FLAGS.repeats,
                 gap=0.5 if cpu else 0.0, only=FLAGS.only)
  quiet.stop()
  report = quiet.report()
  print(f'# {jax.devices()[0].device_kind}, batch {FLAGS.batch} {FLAGS.dtype}; machine at the '
        f'start: load {report["load_before"]} ({"quiet" if report["quiet"] else "NOT quiet"})')
  print(markdown(rows))
  if FLAGS.json_out:
    with open(FLAGS.json_out, 'w') as f:
      json.dump({'machine': report, 'rows': rows}, f, indent=1)


if __name__ == '__main__':
  define_flags()
  app.run(main)
