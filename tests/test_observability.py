"""Profiling, metrics (TensorBoard, MFU), progress, figures and predict, as a user runs them."""

import gzip
import io
import json
import pathlib
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax.model import config as model_config
from alexnet_jax.model import flops
from alexnet_jax.outputs import figures
from alexnet_jax.train import metrics
from alexnet_jax.train import run_setup
from alexnet_jax.train import steps as steps_lib
from tests import helpers
from tests.helpers import SMALL_MODEL

RUN = [*SMALL_MODEL, '--config.num_train_steps=6', '--config.log_every_steps=2',
       '--config.eval_every_steps=3', '--config.parallelism=towers', '--config.mesh.data=1',
       '--config.mesh.model=2', '--config.profile.start_step=2', '--config.profile.num_steps=2']
SCALARS = ('train/loss', 'train/top1', 'train/top5', 'lr', 'images_per_sec', 'step_time', 'mfu',
           'eval/loss', 'eval/top1', 'eval/top5')


def launch(xla_cache, workdir, *overrides, **kwargs):
  return helpers.launch(workdir, *overrides, xla_cache=xla_cache, **kwargs)


@pytest.fixture(scope='module')
def run(xla_cache, tmp_path_factory):
  """A 6-step run on 2 devices (one tower each), profiling steps 2-3, evaluating at 3 and 6."""
  workdir = tmp_path_factory.mktemp('observed') / 'run'
  result = launch(xla_cache, workdir, *RUN, devices=2)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def png_size(path):
  """(width, height) from the PNG's IHDR chunk."""
  data = pathlib.Path(path).read_bytes()[:24]
  assert data[:8] == b'\x89PNG\r\n\x1a\n' and data[12:16] == b'IHDR'
  return struct.unpack('>II', data[16:24])


def read_tfrecords(path):
  """TensorBoard event files are TFRecords: length (8), crc (4), data, crc (4)."""
  data, out, i = pathlib.Path(path).read_bytes(), [], 0
  while i < len(data):
    (n,) = struct.unpack('<Q', data[i:i + 8])
    out.append(data[i + 12:i + 12 + n])
    i += 12 + n + 4
  return out


# ---- FLOPs: the analytic count, the reference card and XLA --------------------------------


def test_derived_flops_are_the_reference_cards():
  from configs import alexnet
  spec = model_config.model_spec(alexnet.get_config())
  macs = flops.layer_macs(spec)
  card = {'conv1': 105.4e6, 'conv2': 223.9e6, 'conv3': 149.5e6, 'conv4': 112.1e6,
          'conv5': 74.8e6}
  for name, want in card.items():
    assert abs(macs[name] - want) < 0.05e6, (name, macs[name])
  assert abs(sum(macs[n] for n in ('fc6', 'fc7', 'fc8')) - 58.6e6) < 0.05e6
  assert round(flops.analytic_forward_flops(spec) / 1e9, 3) == 1.449
  # 3 x forward less conv1's input gradient: 4.136, not the card's rounded 4.35.
  assert round(flops.analytic_train_flops(spec) / 1e9, 3) == 4.136


@pytest.mark.slow
def test_compiled_train_step_flops_agree_with_the_derived_count():
  """XLA's cost analysis of the paper's train step (224x224, batch 4) against the count
  derived from the spec: within 10%, and within 5% once padding taps are left out as XLA
  leaves them out (the rest is element-wise ops and the optimizer update)."""
  from configs import synthetic
  config = synthetic.get_config()
  batch = 4
  layout = run_setup.build_layout(config, jax.devices()[:1])
  spec = model_config.model_spec(config)
  tx = run_setup.make_optimizer(config, 10)
  state = steps_lib.abstract_train_state(spec, tx, layout)
  step = steps_lib.make_train_step(spec, layout, tx, batch)
  images = jax.ShapeDtypeStruct((batch, 224, 224, 3), jnp.float32,
                                sharding=layout.batch_sharding())
  labels = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=layout.label_sharding())
  per_image = flops.compiled_flops(step.lower(state, images, labels).compile()) / batch
  derived = flops.analytic_train_flops(spec)
  assert abs(per_image / derived - 1) < 0.10, (per_image, derived)
  assert abs(per_image / 4.35e9 - 1) < 0.10, per_image  # the card's "about 4.35 GFLOP"
  valid = flops.analytic_train_flops(spec, valid_taps=True)
  # conv1 runs as a stride-1 convolution of 4x4 blocks (model.space_to_depth_conv): every
  # output sees 3x3x48 taps, its 11x11x3 kernel zero-padded to 12x12x3, and XLA counts them
  # all in the forward pass and the kernel gradient (conv1 needs no input gradient).
  c1 = spec.feature_sizes()[0]
  conv1_valid = flops.layer_macs(spec, valid_taps=True)['conv1']
  valid += 2 * 2 * (c1 * c1 * 12 * 12 * 3 * 96 - conv1_valid)
  assert 0 < per_image / valid - 1 < 0.05, (per_image, valid)


# ---- progress ---------------------------------------------------------------------------


class _Stream(io.StringIO):

  def __init__(self, tty):
    super().__init__()
    self.tty = tty

  def isatty(self):
    return self.tty


@pytest.mark.parametrize('tty', [True, False])
def test_progress_line_only_on_a_terminal(tty):
  stream = _Stream(tty)
  progress = metrics.Progress(100, 32, stream=stream, min_interval=0)
  progress.start(1)
  for step in range(2, 11):
    progress.update(step)
  progress.clear()
  text = stream.getvalue()
  if tty:
    assert '\rstep 10/100 (10%)' in text.replace('\033[K', '') and 'images/s  ETA ' in text
  else:
    assert text == ''


# ---- a profiled, logged run ---------------------------------------------------------------


@pytest.mark.slow
def test_profile_holds_the_annotated_train_steps(run):
  traces = list((run / 'profile').rglob('*.trace.json.gz'))
  assert len(traces) == 1 and list((run / 'profile').rglob('*.xplane.pb'))
  events = json.loads(gzip.decompress(traces[0].read_bytes()))['traceEvents']
  steps = {e['args']['step_num'] for e in events
           if e.get('name') == 'train' and 'step_num' in e.get('args', {})}
  assert steps == {'2', '3'}
  # Each step's annotation frames its device work (xprof's step time), not just the dispatch:
  # the XLA work on the runtime's threads that starts inside a step's annotation ends inside it.
  threads = {e['tid']: e['args']['name'] for e in events if e.get('name') == 'thread_name'}
  device = [e for e in events if e.get('ph') == 'X' and threads.get(e.get('tid'), '').startswith(
      ('tf_XLAEigen', 'tf_XLAPjRtCpuClient'))]
  for step in (e for e in events if e.get('name') == 'train' and 'step_num' in e['args']):
    start, end = step['ts'], step['ts'] + step['dur']
    inside = [e for e in device if start <= e['ts'] <= end]
    assert inside, step
    # Slack for the runtime's bookkeeping after the outputs are ready: 2 ms or 10% of the
    # step. A marker that framed only the dispatch ended milliseconds before the work did.
    slack = max(2000, 0.1 * step['dur'])
    assert max(e['ts'] + e['dur'] for e in inside) <= end + slack, (step, slack)


@pytest.mark.slow
def test_tensorboard_and_jsonl_have_every_scalar(run):
  from tensorboardX.proto import event_pb2
  tags = set()
  for path in run.glob('events.out.tfevents.*'):
    for record in read_tfrecords(path):
      event = event_pb2.Event.FromString(record)
      tags.update(v.tag for v in event.summary.value)
  keys = set().union(*(json.loads(l) for l in (run / 'metrics.jsonl').read_text().splitlines()))
  for name in SCALARS:
    assert name in tags and name in keys, name
  mfu = [json.loads(l)['mfu'] for l in (run / 'metrics.jsonl').read_text().splitlines()
         if 'mfu' in l]
  assert all(0 < m < 1 for m in mfu), mfu
  info = json.loads((run / 'run.json').read_text())
  assert info['peak_flops']['total'] > 0 and info['peak_flops']['source'].startswith('measured')
  assert info['train_step_flops'] > 0


@pytest.mark.slow
def test_tensorboards_own_reader_finds_every_metric(run):
  """What `tensorboard --logdir` shows: TensorBoard's event reader (requirements-view.txt)
  finds every scalar of metrics.jsonl, at the same steps with the same values."""
  event_accumulator = pytest.importorskip(
      'tensorboard.backend.event_processing.event_accumulator',
      reason='TensorBoard is optional: pip install -r requirements-view.txt (CI does)')
  (path,) = run.glob('events.out.tfevents.*')
  reader = event_accumulator.EventAccumulator(str(path), size_guidance={'scalars': 0})
  reader.Reload()
  logged = {}
  for line in (run / 'metrics.jsonl').read_text().splitlines():
    record = json.loads(line)
    for tag, value in record.items():
      if tag not in ('step', 'time'):
        logged.setdefault(tag, {})[record['step']] = value
  assert set(logged) >= set(SCALARS)
  assert set(reader.Tags()['scalars']) == set(logged)
  for tag, values in logged.items():
    shown = {e.step: e.value for e in reader.Scalars(tag)}
    assert shown.keys() == values.keys(), tag
    np.testing.assert_allclose([shown[s] for s in values], list(values.values()), rtol=1e-6)


@pytest.mark.slow
def test_figures_at_evaluations_and_by_command(xla_cache, run):
  assert sorted(p.name for p in (run / 'figures').glob('conv1_*.png')) == [
      'conv1_step3.png', 'conv1_step6.png']
  w, h = figures.PANEL_WIDTH_IN * figures.DPI, figures.PANEL_HEIGHT_IN * figures.DPI
  result = launch(xla_cache, run, *RUN, '--mode=figures', '--checkpoint_step=6', devices=1)
  assert result.returncode == 0, result.stderr[-3000:]
  written = [l.split(': ', 1)[1] for l in result.stdout.splitlines() if l.startswith('figure: ')]
  assert written == [str(run / f'figures/{name}') for name in (
      'conv1_step6.png', 'figure4_top5_step6.png', 'figure4_neighbours_step6.png', 'curves.png')]
  assert png_size(written[0]) == (w, 2 * h)  # two towers: two panels
  assert png_size(written[-1]) == tuple(s * figures.DPI for s in figures.CURVES_SIZE_IN)


def test_conv1_figure_has_one_panel_per_tower():
  grey = np.random.default_rng(0).normal(size=(3, 5, 5, 1, 7))  # 3 towers, 1 channel
  fig = figures.conv1_figure(grey)
  assert len(fig.axes) == 3
  mosaic = figures.kernel_mosaic(grey[0])
  assert mosaic.min() >= 0 and mosaic.max() <= 1
  assert np.allclose(mosaic[..., 0], mosaic[..., 1])  # grey


@pytest.mark.slow
def test_predict_prints_the_top5_classes(xla_cache, run, tmp_path):
  from PIL import Image
  rng = np.random.default_rng(0)
  paths = [tmp_path / 'a.png', tmp_path / 'b.png']
  Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(paths[0])
  Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(paths[1])
  result = launch(xla_cache, run, *RUN, '--mode=predict',
                  f'--images={paths[0]},{paths[1]}', devices=1)
  assert result.returncode == 0, result.stderr[-3000:]
  out = [json.loads(l[len('predict: '):]) for l in result.stdout.splitlines()
         if l.startswith('predict: ')]
  assert [o['image'] for o in out] == [str(p) for p in paths]
  for o in out:
    names = [t['class'] for t in o['top']]
    assert names == [t['name'] for t in o['top']]  # synthetic classes: their numbers
    probs = [t['probability'] for t in o['top']]
    assert o['step'] == 6 and len(names) == 5 and set(names) <= {str(i) for i in range(10)}
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
  bad = launch(xla_cache, run, *RUN, '--mode=predict', f'--images={tmp_path / "nope.png"}')
  assert bad.returncode == 1 and 'cannot read' in bad.stderr
