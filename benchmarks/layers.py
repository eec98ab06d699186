"""Where the train step's time goes: forward and backward of each layer of the paper's
224x224 two-tower AlexNet, in JAX and in PyTorch, in one run.

    python -m benchmarks.layers                  # batch 32, float32, 5 interleaved repeats
    python -m benchmarks.layers --json_out=/tmp/layers.json

Each layer runs alone on its own input shape as the network feeds it (conv1 on the 224x224
images, LRN1 on conv1's 55x55 maps, ...), jitted in JAX (`network.py`'s functions, as the step
calls them) and eager in PyTorch (grouped convolutions, `LocalResponseNorm`, `max_pool2d`,
dropout, `SGD`). "fwd" is the forward pass; "bwd" is forward-and-backward (`jax.vjp`,
`backward()`) less the forward (conv1: the kernel's gradient only, as in training; the
optimizer update has no backward). The JAX and PyTorch repeats alternate, so a background load
hits both alike; the medians are printed, with the machine's load (benchmarks/machine.py).
"""

from __future__ import annotations

import datetime
import functools
import json
import statistics
import time

from alexnet_jax import xla_cpu

if __name__ == '__main__':
  xla_cpu.preload_allocator()  # before anything starts: see xla_cpu

xla_cpu.configure()  # before JAX creates its CPU client

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from alexnet_jax.model import network  # noqa: E402
from alexnet_jax.train import optimizer  # noqa: E402
from benchmarks import machine  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line's flags (only when run as a script: other modules import this one)."""
  flags.DEFINE_integer('batch', 32, 'Batch size.')
  flags.DEFINE_integer('repeats', 5, 'Timed repeats per layer; the median is reported.')
  flags.DEFINE_string('only', '', 'Comma-separated layer names to time (default: all).')
  flags.DEFINE_string('json_out', None, 'Write the rows as JSON here.')
  flags.DEFINE_float('gap', 0.2, 'Idle seconds before each timed call.')


PARAMS_ONLY = ('conv1',)  # the image needs no gradient
NO_BACKWARD = ('optimizer update',)


def jax_layers(spec: network.AlexNetSpec, batch: int):
  """{name: (f(params, x), params, x)} for each layer, on the shapes the network feeds it."""
  rng = np.random.default_rng(0)
  key = jax.random.key(0)
  params = network.init_params(key, spec)
  t = spec.num_towers
  f = spec.conv_features
  c1, p1, p2, p5 = spec.feature_sizes()
  normal = lambda *shape: jnp.asarray(rng.normal(0, 1, shape), jnp.float32)
  relu_conv = lambda p, x, stride=1, padding=None: jax.nn.relu(
      network.conv(x, p['kernel'], p['bias'], stride, padding))
  joined = lambda layer: {'kernel': jnp.concatenate(list(params[layer]['kernel']), -1),
                          'bias': jnp.concatenate(list(params[layer]['bias']), -1)}
  per_tower = lambda layer: lambda p, xs: [relu_conv({'kernel': p['kernel'][i],
                                                      'bias': p['bias'][i]}, xs[i])
                                           for i in range(t)]
  lrn = lambda p, xs: [network.local_response_norm(x) for x in xs]
  pool = lambda p, xs: [network.max_pool(x) for x in xs]

  def dense(layer, h_in):
    p = params[layer]
    fn = lambda p, h: jax.nn.relu(jnp.einsum('tbi,tio->tbo', jnp.broadcast_to(h, (t, *h.shape)),
                                             p['kernel']) + p['bias'][:, None])
    return fn, p, h_in

  def dropout(p, h):
    del p
    masks = network.dropout_masks(key, jnp.arange(batch), 6, jnp.arange(t), h.shape[-1], 0.5)
    return h * masks

  tx = optimizer.paper_momentum(0.01)
  all_params = params
  opt_state = tx.init(all_params)

  def update(p, grads):
    updates, _ = tx.update(grads, opt_state, p)
    return jax.tree.map(jnp.add, p, updates)

  towers = lambda *shape: [normal(*shape) for _ in range(t)]
  return {
      'conv1': (functools.partial(relu_conv, stride=spec.conv1_stride,
                                  padding=spec.conv1_pads()), joined('conv1'),
                normal(batch, spec.image_size, spec.image_size, spec.in_channels)),
      'lrn1': (lrn, {}, towers(batch, c1, c1, f[0])),
      'pool1': (pool, {}, towers(batch, c1, c1, f[0])),
      'conv2': (per_tower('conv2'), params['conv2'], towers(batch, p1, p1, f[0])),
      'lrn2': (lrn, {}, towers(batch, p1, p1, f[1])),
      'pool2': (pool, {}, towers(batch, p1, p1, f[1])),
      'conv3': (relu_conv, joined('conv3'), normal(batch, p2, p2, t * f[1])),
      'conv4': (per_tower('conv4'), params['conv4'], towers(batch, p2, p2, f[2])),
      'conv5': (per_tower('conv5'), params['conv5'], towers(batch, p2, p2, f[3])),
      'pool5': (pool, {}, towers(batch, p2, p2, f[4])),
      'fc6': dense('fc6', normal(batch, t * p5 * p5 * f[4])),
      'fc7': dense('fc7', normal(batch, t * spec.fc_features)),
      'fc8': (lambda p, h: h @ p['kernel'].reshape(-1, spec.num_classes) + p['bias'],
              params['fc8'], normal(batch, t * spec.fc_features)),
      'dropout (fc6, fc7)': (lambda p, hs: [dropout(p, h) for h in hs], {},
                             [normal(t, batch, spec.fc_features)] * 2),
      'optimizer update': (update, all_params, jax.tree.map(jnp.ones_like, all_params)),
  }


def torch_layers(spec: network.AlexNetSpec, batch: int):
  import torch
  import torch.nn.functional as F
  nn = torch.nn
  torch.manual_seed(0)
  t = spec.num_towers
  f = [t * c for c in spec.conv_features]
  c1, p1, p2, p5 = spec.feature_sizes()
  (_, pad), _ = spec.conv1_pads()
  conv = lambda cin, cout, k, stride=1, padding=0, groups=1: nn.Conv2d(
      cin, cout, k, stride, padding, groups=groups)
  c1m, c2m = conv(spec.in_channels, f[0], 11, 4), conv(f[0], f[1], 5, 1, 2, t)
  c3m, c4m, c5m = conv(f[1], f[2], 3, 1, 1), conv(f[2], f[3], 3, 1, 1, t), conv(f[3], f[4], 3, 1, 1, t)
  lrn = nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0)
  fc6 = nn.Linear(f[4] * p5 * p5, t * spec.fc_features)
  fc7 = nn.Linear(t * spec.fc_features, t * spec.fc_features)
  fc8 = nn.Linear(t * spec.fc_features, spec.num_classes)
  x = lambda *shape: torch.randn(*shape)
  net = nn.ModuleList([c1m, c2m, c3m, c4m, c5m, fc6, fc7, fc8])
  opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
  for p in net.parameters():
    p.grad = torch.ones_like(p)
  opt.step()  # momentum buffers exist

  def step(_):
    opt.step()

  return {
      'conv1': (lambda x: F.relu(c1m(F.pad(x, (0, pad, 0, pad)))),
                x(batch, spec.in_channels, spec.image_size, spec.image_size)),
      'lrn1': (lrn, x(batch, f[0], c1, c1)),
      'pool1': (lambda x: F.max_pool2d(x, 3, 2), x(batch, f[0], c1, c1)),
      'conv2': (lambda x: F.relu(c2m(x)), x(batch, f[0], p1, p1)),
      'lrn2': (lrn, x(batch, f[1], p1, p1)),
      'pool2': (lambda x: F.max_pool2d(x, 3, 2), x(batch, f[1], p1, p1)),
      'conv3': (lambda x: F.relu(c3m(x)), x(batch, f[1], p2, p2)),
      'conv4': (lambda x: F.relu(c4m(x)), x(batch, f[2], p2, p2)),
      'conv5': (lambda x: F.relu(c5m(x)), x(batch, f[3], p2, p2)),
      'pool5': (lambda x: F.max_pool2d(x, 3, 2), x(batch, f[4], p2, p2)),
      'fc6': (lambda x: F.relu(fc6(x)), x(batch, f[4] * p5 * p5)),
      'fc7': (lambda x: F.relu(fc7(x)), x(batch, t * spec.fc_features)),
      'fc8': (fc8, x(batch, t * spec.fc_features)),
      'dropout (fc6, fc7)': (lambda x: F.dropout(F.dropout(x, 0.5), 0.5),
                             x(batch, t * spec.fc_features)),
      'optimizer update': (step, None),
  }


def time_jax(fn, params, x, repeats, params_only=False):
  """The forward, and forward-and-backward (`params_only`: gradients of the parameters only,
  as for conv1, whose input is the image)."""
  del repeats
  fwd = jax.jit(fn)
  out = jax.eval_shape(fn, params, x)
  cotangent = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), out)
  if params_only:
    both = jax.jit(lambda p, x: jax.vjp(lambda p: fn(p, x), p)[1](cotangent))
  else:
    both = jax.jit(lambda p, x: jax.vjp(fn, p, x)[1](cotangent))
  run_fwd = lambda: jax.block_until_ready(fwd(params, x))
  run_both = lambda: jax.block_until_ready(both(params, x))
  return run_fwd, run_both


def time_torch(fn, x, params_only=False):
  import torch
  if x is None:  # the optimizer step has no backward
    return (lambda: fn(None)), None
  xg = x if params_only else x.clone().requires_grad_(True)

  def fwd():
    with torch.no_grad():
      fn(x)

  def both():
    out = fn(xg)
    out.backward(torch.ones_like(out))

  return fwd, both


def main(argv):
  del argv
  quiet = machine.Quiet()
  spec = network.AlexNetSpec()
  only = {n.strip() for n in FLAGS.only.split(',') if n.strip()}
  jl, tl = jax_layers(spec, FLAGS.batch), torch_layers(spec, FLAGS.batch)
  rows = []
  quiet.start()
  for name in jl:
    if only and name not in only:
      continue
    params_only = name in PARAMS_ONLY
    jf, jb = time_jax(*jl[name], FLAGS.repeats, params_only=params_only)
    tf, tb = time_torch(*tl[name], params_only=params_only)
    timers = {'jax fwd': jf, 'torch fwd': tf}
    if name not in NO_BACKWARD:
      timers.update({'jax fwd+bwd': jb, 'torch fwd+bwd': tb})
    times = {k: [] for k in timers}
    for k, fn in timers.items():
      fn()  # warm up (compile)
    for _ in range(FLAGS.repeats):
      for k, fn in timers.items():
        time.sleep(FLAGS.gap)  # the other framework's thread pools stop spinning
        t0 = time.perf_counter()
        fn()
        times[k].append(time.perf_counter() - t0)
    med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    bwd = lambda f: med[f'{f} fwd+bwd'] - med[f'{f} fwd'] if f'{f} fwd+bwd' in med else None
    row = {'layer': name, 'jax_fwd_ms': med['jax fwd'], 'jax_bwd_ms': bwd('jax'),
           'torch_fwd_ms': med['torch fwd'], 'torch_bwd_ms': bwd('torch')}
    rows.append(row)
    print(json.dumps(row), flush=True)
  quiet.stop()
  fmt = lambda v: '-' if v is None else f'{v:.1f}'
  print(f'\n{datetime.date.today()}, batch {FLAGS.batch}, float32; machine: '
        f'{json.dumps(quiet.report())}\n')
  print('| layer | JAX fwd ms | JAX bwd ms | PyTorch fwd ms | PyTorch bwd ms | JAX / PyTorch (fwd+bwd) |')
  print('|---|---:|---:|---:|---:|---:|')
  totals = [0.0, 0.0, 0.0, 0.0]
  for r in rows:
    jt = r['jax_fwd_ms'] + (r['jax_bwd_ms'] or 0)
    tt = r['torch_fwd_ms'] + (r['torch_bwd_ms'] or 0)
    for i, k in enumerate(('jax_fwd_ms', 'jax_bwd_ms', 'torch_fwd_ms', 'torch_bwd_ms')):
      totals[i] += r[k] or 0
    print(f"| {r['layer']} | {fmt(r['jax_fwd_ms'])} | {fmt(r['jax_bwd_ms'])} | "
          f"{fmt(r['torch_fwd_ms'])} | {fmt(r['torch_bwd_ms'])} | {jt / tt:.2f} |")
  print(f'| **sum** | {totals[0]:.0f} | {totals[1]:.0f} | {totals[2]:.0f} | {totals[3]:.0f} | '
        f'{(totals[0] + totals[1]) / (totals[2] + totals[3]):.2f} |')
  if FLAGS.json_out:
    with open(FLAGS.json_out, 'w', encoding='utf-8') as f:
      json.dump({'machine': quiet.report(), 'batch': FLAGS.batch, 'rows': rows}, f, indent=1)


if __name__ == '__main__':
  define_flags()
  app.run(main)
