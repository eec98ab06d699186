"""Meshes on 8 CPU devices: same losses everywhere, the paper's traffic, memory per device."""

import functools
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from alexnet_jax.model import network
from alexnet_jax.parallel import comm
from alexnet_jax.parallel import sharding
from alexnet_jax.train import optimizer
from alexnet_jax.train import steps
from tests import distributed_worker
from tests import helpers

SMALL = network.AlexNetSpec(**helpers.SPEC_KWARGS)
MESHES = [('towers', 1, 1), ('towers', 1, 2), ('towers', 4, 2), ('data', 8, 1), ('hybrid', 4, 2)]


def layout_for(parallelism, data, model_):
  return sharding.Layout(sharding.make_mesh(data, model_, jax.devices()[:data * model_]),
                         parallelism)


def five_step_losses(layout, spec=SMALL, batch=16, num_steps=5):
  rng = np.random.default_rng(0)
  images = rng.normal(0, 60, (num_steps, batch, spec.image_size, spec.image_size, spec.in_channels))
  labels = rng.integers(0, spec.num_classes, (num_steps, batch))
  tx = optimizer.paper_momentum(0.01)
  state = steps.create_train_state(jax.random.key(0), spec, tx, layout)
  train_step = steps.make_train_step(spec, layout, tx, batch)
  losses = []
  for x, y in zip(images.astype(np.float32), labels.astype(np.int32)):
    state, metrics = train_step(state, jax.device_put(x, layout.batch_sharding()),
                                jax.device_put(y, layout.label_sharding()))
    losses.append(float(metrics['loss']))
  return np.array(losses), state


def host_state(state):
  """Parameters and momentum buffers as float64 numpy, wherever they live."""
  return jax.tree.map(lambda x: np.asarray(x, np.float64), jax.device_get(
      {'params': state.params, 'momentum': state.opt_state.inner_state[2].trace}))


def test_same_losses_and_states_on_every_mesh():
  """Not only the losses: after five steps with dropout, the parameters and the momentum
  are the one-device run's on every mesh of every mode, to float32 rounding."""
  reference, first = five_step_losses(layout_for('towers', 1, 1))
  assert np.all(np.isfinite(reference)) and len(set(reference.round(6))) > 1
  first = host_state(first)
  for mode, d, m in MESHES[1:]:
    losses, state = five_step_losses(layout_for(mode, d, m))
    np.testing.assert_allclose(losses, reference, rtol=1e-5, err_msg=f'{mode} {d}x{m}')
    for (path, got), want in zip(jax.tree_util.tree_flatten_with_path(host_state(state))[0],
                                 jax.tree.leaves(first)):
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max(),
                                 err_msg=f'{mode} {d}x{m} {jax.tree_util.keystr(path)}')


def test_uint8_batches_normalised_on_device_give_the_same_losses_on_every_mesh():
  """The loaders' batches (uint8 pixels, windows into a per-pixel mean, PCA shifts) are
  normalised by each device for its rows: same losses as float32 batches normalised on the
  host (reference.normalize_view), on every mesh."""
  from alexnet_jax.model.pixels import pixel_batch
  from tests import reference
  rng = np.random.default_rng(0)
  batch, size = 16, SMALL.image_size
  pixels = rng.integers(0, 256, (3, batch, size, size, 3), dtype=np.uint8)
  windows = np.concatenate([rng.integers(0, 5, (3, batch, 2)), rng.integers(0, 2, (3, batch, 1))],
                           axis=-1).astype(np.int32)
  shifts = rng.normal(0, 10, (3, batch, 3)).astype(np.float32)
  labels = rng.integers(0, SMALL.num_classes, (3, batch)).astype(np.int32)
  mean = rng.uniform(60, 200, (size + 4, size + 4, 3)).astype(np.float32)
  tx = optimizer.paper_momentum(0.01)

  def losses(layout, on_device):
    state = steps.create_train_state(jax.random.key(0), spec=SMALL, tx=tx, layout=layout)
    train_step = steps.make_train_step(SMALL, layout, tx, batch,
                                       mean=mean if on_device else None)
    out = []
    for p, w, sh, y in zip(pixels, windows, shifts, labels):
      if on_device:
        x = pixel_batch(p, w, sh)
      else:
        x = np.stack([reference.normalize_view(*row, mean) for row in zip(p, w, sh)]).astype(np.float32)
      state, metrics = train_step(state, jax.device_put(x, layout.batch_sharding()),
                                  jax.device_put(y, layout.label_sharding()))
      out.append(float(metrics['loss']))
    return np.array(out)

  on_host = losses(layout_for('towers', 1, 1), on_device=False)
  for mode, d, m in [('towers', 1, 1), ('towers', 4, 2), ('data', 8, 1), ('hybrid', 4, 2)]:
    np.testing.assert_allclose(losses(layout_for(mode, d, m), True), on_host, rtol=1e-5,
                               err_msg=f'{mode} {d}x{m}')


def test_dropout_matters_and_is_mesh_independent():
  # With dropout off the losses differ from the run above: the masks are used.
  spec = network.AlexNetSpec(**{**helpers.SPEC_KWARGS, 'dropout_rate': 0.0})
  with_dropout, _ = five_step_losses(layout_for('towers', 1, 1))
  without, _ = five_step_losses(layout_for('towers', 1, 1), spec)
  assert np.abs(with_dropout - without).max() > 1e-4


def compiled_collectives(layout, spec, batch):
  tx = optimizer.paper_momentum(0.01)
  state = steps.abstract_train_state(spec, tx, layout)
  train_step = steps.make_train_step(spec, layout, tx, batch)
  images = jax.ShapeDtypeStruct((batch, spec.image_size, spec.image_size, spec.in_channels),
                                np.float32, sharding=layout.batch_sharding())
  labels = jax.ShapeDtypeStruct((batch,), np.int32, sharding=layout.label_sharding())
  text = train_step.lower(state, images, labels).compile().as_text()
  return comm.collectives(text, (layout.num_data, layout.num_model))


@pytest.mark.parametrize('data', [1, 4])
def test_towers_mode_moves_only_the_joins_across_model(data):
  spec, batch = network.AlexNetSpec(), 8 * data
  colls = compiled_collectives(layout_for('towers', data, 2), spec, batch)
  across_model = [c for c in colls if c.group_size > 1 and c.axes != 'data']
  big = [c for c in across_model if c.result_bytes > 64]  # not a metric scalar
  assert {c.op for c in big} == {'all-gather', 'reduce-scatter', 'all-reduce'}
  assert all('shard_map' in c.name for c in big)
  measured = sum(c.bytes_sent for c in across_model)
  # Hand count per image, per device, one direction: 13*13*128 + 6*6*128 + 2048 values
  # (conv3, fc6, fc7 inputs), the same back as gradients, plus 1000 summed logits.
  per_image = (2 * (13 * 13 * 128 + 6 * 6 * 128 + 2048) + 1000) * 4
  analytic = comm.towers_activation_bytes(spec, batch // data, 2)['total']
  assert analytic == per_image * (batch // data)
  assert abs(measured - analytic) <= 0.05 * analytic, (measured, analytic)
  # Parameter gradients never cross the model axis: no collective there is weight-sized.
  assert max(c.result_bytes for c in across_model) <= 2 * 13 * 13 * 128 * 4 * (batch // data)


def test_grouped_tower_convolutions_add_no_collective():
  """XLA's SPMD partitioner is reported to replicate non-depthwise grouped convolutions. In
  hybrid mode each device holds both conv towers and runs conv2, conv4 and conv5 as grouped
  convolutions under shard_map: the compiled collectives are the per-tower step's."""
  def traffic(tower_conv):
    spec = network.AlexNetSpec(tower_conv=tower_conv)
    colls = compiled_collectives(layout_for('hybrid', 4, 2), spec, 16)
    return sorted((c.op, c.axes, c.result_bytes) for c in colls if c.group_size > 1)
  grouped = traffic('grouped')
  assert grouped == traffic('per_tower') and len(grouped) > 3


def test_data_mode_only_reduces_gradients():
  spec = network.AlexNetSpec()
  colls = [c for c in compiled_collectives(layout_for('data', 8, 1), spec, 16)
           if c.group_size > 1]
  assert {c.op for c in colls} == {'all-reduce'}
  # conv1's kernel gradient is reduced in the space-to-depth form the step computes it in
  # (network.space_to_depth_conv): 3x3x48 taps per filter, not 11x11x3.
  grad_bytes = 4 * (60_965_224 + (3 * 3 * 48 - 11 * 11 * 3) * 96)
  total = sum(c.result_bytes for c in colls)
  assert grad_bytes <= total <= grad_bytes + 64  # + a few metric scalars


def per_device_bytes(state, device):
  total = 0
  for leaf in jax.tree.leaves((state.params, state.opt_state)):
    for shard in leaf.addressable_shards:
      if shard.device == device:
        total += shard.data.nbytes
  return total


def test_towers_halves_parameter_and_optimizer_memory():
  spec = network.AlexNetSpec()
  tx = optimizer.paper_momentum(0.01)
  single = steps.create_train_state(jax.random.key(0), spec, tx, layout_for('towers', 1, 1))
  one = per_device_bytes(single, jax.devices()[0])
  del single
  split = steps.create_train_state(jax.random.key(0), spec, tx, layout_for('towers', 1, 2))
  for device in jax.devices()[:2]:
    assert per_device_bytes(split, device) <= 0.52 * one


@pytest.mark.parametrize('args,message', [
    ((8, 3, 2, 'towers', 2), 'needs 6 devices but 8'),
    ((8, -1, 3, 'towers', 2), 'does not divide the 8 devices'),
    ((8, 2, 4, 'towers', 2), 'does not divide model.num_towers=2'),
    ((8, -1, -1, 'towers', 2), 'Only one of'),
    ((8, -1, 0, 'pipeline', 2), "parallelism='pipeline'"),
])
def test_impossible_meshes_fail_with_one_sentence(args, message):
  with pytest.raises(ValueError, match=message):
    sharding.mesh_shape(*args)


def test_mesh_defaults():
  assert sharding.mesh_shape(8, -1, 0, 'towers', 2) == (4, 2)
  assert sharding.mesh_shape(1, -1, 0, 'towers', 2) == (1, 1)
  assert sharding.mesh_shape(8, -1, 0, 'data', 2) == (8, 1)
  assert sharding.mesh_shape(8, 8, -1, 'data', 2) == (8, 1)


# The default mesh (mesh.data=-1, mesh.model=0) on the first n of 8 devices, worked out by
# hand: towers over pairs where n is even, else both towers on every device; on the most
# devices the paper's batch sizes (128, 256) split over.
DEFAULT_MESHES = {  # n: {parallelism: (data, model, devices used)}
    1: {'towers': (1, 1, 1), 'data': (1, 1, 1), 'hybrid': (1, 1, 1)},
    2: {'towers': (1, 2, 2), 'data': (2, 1, 2), 'hybrid': (1, 2, 2)},
    3: {'towers': (1, 2, 2), 'data': (2, 1, 2), 'hybrid': (1, 2, 2)},
    4: {'towers': (2, 2, 4), 'data': (4, 1, 4), 'hybrid': (2, 2, 4)},
    5: {'towers': (2, 2, 4), 'data': (4, 1, 4), 'hybrid': (2, 2, 4)},
    6: {'towers': (2, 2, 4), 'data': (4, 1, 4), 'hybrid': (2, 2, 4)},
    7: {'towers': (2, 2, 4), 'data': (4, 1, 4), 'hybrid': (2, 2, 4)},
    8: {'towers': (4, 2, 8), 'data': (8, 1, 8), 'hybrid': (4, 2, 8)},
}


@pytest.mark.parametrize('n', range(1, 9))
def test_the_default_mesh_runs_on_any_device_count(n, caplog):
  """On n devices the paper's config gets the mesh of the table above, and says so in one
  line where it departs from towers over pairs of all n."""
  import logging

  from alexnet_jax.train import run_setup
  from configs import alexnet
  config = alexnet.get_config()
  for parallelism, (data, model_, used) in DEFAULT_MESHES[n].items():
    config.parallelism = parallelism
    caplog.clear()
    with caplog.at_level(logging.INFO):
      layout = run_setup.build_layout(config, jax.devices()[:n])
    assert (layout.num_data, layout.num_model, layout.mesh.devices.size) == (data, model_, used)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith('Mesh ')]
    departs = used < n or (parallelism != 'data' and used > 1 and model_ == 1)
    assert len(lines) == departs, lines


@functools.cache
def one_device_step(batch):
  losses, state = five_step_losses(layout_for('towers', 1, 1), batch=batch, num_steps=1)
  return losses, jax.tree.leaves(host_state(state))


@pytest.mark.parametrize('n', [3, 6, pytest.param(5, marks=pytest.mark.exhaustive),
                               pytest.param(7, marks=pytest.mark.exhaustive)])
def test_the_default_mesh_trains_on_odd_device_counts_like_one_device(n):
  """A batch that splits over n devices trains on all n with the default mesh, towers over
  pairs where n is even, both towers on every device where it is odd: the one-device run's
  loss and parameters after a step (2, 4 and 8 devices:
  test_same_losses_and_states_on_every_mesh)."""
  from alexnet_jax.train import run_setup
  from configs import alexnet
  batch = 12 if n in (3, 6) else 4 * n  # 12: one reference for both
  config = alexnet.get_config()
  config.batch_size = config.eval_batch_size = batch
  layout = run_setup.build_layout(config, jax.devices()[:n])
  assert layout.mesh.devices.size == n and layout.num_model == (2 if n % 2 == 0 else 1)
  losses, state = five_step_losses(layout, batch=batch, num_steps=1)
  reference, first = one_device_step(batch)
  np.testing.assert_allclose(losses, reference, rtol=1e-5)
  for got, want in zip(jax.tree.leaves(host_state(state)), first):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_an_explicit_mesh_model_keeps_its_sentence():
  from alexnet_jax.train import run_setup
  from configs import alexnet
  config = alexnet.get_config()
  config.mesh.model = 2
  with pytest.raises(ValueError, match='^mesh.model=2 does not divide the 3 devices.$'):
    run_setup.build_layout(config, jax.devices()[:3])


def test_batch_must_divide_the_data_axis():
  with pytest.raises(ValueError, match='not divisible by the 4 batch shards'):
    layout_for('towers', 4, 2).check_batch(18)
  with pytest.raises(ValueError, match='not divisible by the 8 batch shards'):
    layout_for('hybrid', 4, 2).check_batch(12)


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize('pipeline', [pytest.param('memory', marks=pytest.mark.exhaustive),
                                      'stream'])
def test_two_processes_match_one(tmp_path, pipeline):
  """2 processes x 4 CPU devices (gloo) train as 1 process x 8 devices, each process
  loading (and, for the stream pipeline, decoding) only its half of every batch."""
  port = _free_port()
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  procs = [subprocess.Popen([sys.executable, '-m', 'tests.distributed_worker', str(port), '2',
                             str(i), str(tmp_path / f'{i}.json'), pipeline],
                            env=env, cwd=helpers.ROOT)
           for i in range(2)]
  for p in procs:
    assert p.wait(timeout=300) == 0
  multi = [json.loads((tmp_path / f'{i}.json').read_text()) for i in range(2)]
  single = distributed_worker.train_losses(pipeline=pipeline)
  for result in multi:
    np.testing.assert_allclose(result['losses'], single['losses'], rtol=1e-5)
  if pipeline == 'stream':  # 3 steps of 16 images: 48 reads alone, 24 in each of two
    assert single['reads'] == 48 and [r['reads'] for r in multi] == [24, 24]


COLLECTIVE_OPS = ('all-reduce', 'all-gather', 'reduce-scatter', 'collective-permute',
                  'all-to-all', 'collective-broadcast')


@pytest.mark.parametrize('parallelism,data,model_', [
    ('towers', 1, 1), ('towers', 1, 2), ('towers', 2, 1), ('hybrid', 1, 2), ('hybrid', 2, 1),
    ('data', 2, 1)])
def test_no_collective_runs_over_a_mesh_axis_of_size_one(parallelism, data, model_):
  """A collective over a group of one is a copy of the whole operand on CPU (on 1x1 the
  gradient all-reduce alone moved 244 MB per step): the compiled step has none."""
  spec, batch = network.AlexNetSpec(), 8
  layout = layout_for(parallelism, data, model_)
  tx = optimizer.paper_momentum(0.01)
  state = steps.abstract_train_state(spec, tx, layout)
  images = jax.ShapeDtypeStruct((batch, 224, 224, 3), np.float32,
                                sharding=layout.batch_sharding())
  labels = jax.ShapeDtypeStruct((batch,), np.int32, sharding=layout.label_sharding())
  text = steps.make_train_step(spec, layout, tx, batch).lower(
      state, images, labels).compile().as_text()
  ops = [line for line in text.splitlines()
         if any(f' {op}(' in line or f' {op}-start(' in line for op in COLLECTIVE_OPS)]
  if data * model_ == 1:
    assert ops == []
    return
  # Two devices on one axis of size 2: every collective must span both.
  colls = comm.collectives(text, (data, model_))
  assert len(colls) == len(ops) > 0
  assert all(c.group_size == 2 for c in colls), [(c.op, c.group_size) for c in colls]
