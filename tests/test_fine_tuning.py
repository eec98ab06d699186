"""Fine-tuning: frozen layers (the compiled step computes no gradient for them, the updates
leave them bitwise), and `init_from` end to end through launch.py."""

import re

import jax
import ml_collections
import numpy as np
import pytest

from alexnet_jax.model import network
from alexnet_jax.train import optimizer
from alexnet_jax.train import steps
from tests import helpers
from tests.helpers import SMALL_MODEL
from tests.helpers import load_state
from tests.helpers import one_error_line
from tests.helpers import snapshot
from tests.test_sharding import SMALL
from tests.test_sharding import layout_for

CONVS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5')


def batches(n, batch=16, spec=SMALL, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(0, 60, (n, batch, spec.image_size, spec.image_size, spec.in_channels))
  return x.astype(np.float32), rng.integers(0, spec.num_classes, (n, batch)).astype(np.int32)


def train(frozen, n, layout):
  tx = optimizer.paper_momentum(0.01, frozen=frozen)
  state = steps.create_train_state(jax.random.key(0), SMALL, tx, layout)
  first = jax.device_get(state.params)
  step = steps.make_train_step(SMALL, layout, tx, 16, frozen=frozen, donate=False)
  for x, y in zip(*batches(n)):
    state, _ = step(state, jax.device_put(x, layout.batch_sharding()),
                    jax.device_put(y, layout.label_sharding()))
  return first, jax.device_get(state.params)


@pytest.mark.parametrize('mesh', [pytest.param((1, 1), id='1x1', marks=pytest.mark.exhaustive),
                                  pytest.param((1, 2), id='towers-1x2')])
def test_frozen_layers_stay_bitwise_and_the_others_take_the_unfrozen_update(mesh):
  layout = layout_for('towers', *mesh)
  first, frozen = train(CONVS, 3, layout)
  for name in CONVS:  # no decay, no momentum, no update: the very bits
    for a, b in zip(jax.tree.leaves(frozen[name]), jax.tree.leaves(first[name])):
      np.testing.assert_array_equal(a, b)
  # After one step, the trainable layers are where the unfrozen run's are (same gradient).
  _, one_frozen = train(CONVS, 1, layout)
  _, one_free = train((), 1, layout)
  for name in ('fc6', 'fc7', 'fc8'):
    for a, b in zip(jax.tree.leaves(one_frozen[name]), jax.tree.leaves(one_free[name])):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert not np.array_equal(one_frozen[name]['kernel'], first[name]['kernel'])


def convolutions(text):
  return len(re.findall(r'= \S+ convolution\(', text))


def test_the_compiled_step_has_no_convolution_for_a_frozen_layers_gradient():
  """Freezing the five convs leaves the step with the forward pass's convolutions only (as
  many as the compiled forward alone); freezing none adds the backward's."""
  layout = layout_for('towers', 1, 1)
  images = jax.ShapeDtypeStruct((16, 32, 32, 3), np.float32, sharding=layout.batch_sharding())
  labels = jax.ShapeDtypeStruct((16,), np.int32, sharding=layout.label_sharding())
  params = jax.eval_shape(lambda: network.init_params(jax.random.key(0), SMALL))
  forward = convolutions(jax.jit(lambda p, x: network.apply(p, x, SMALL)).lower(
      params, images).compile().as_text())
  counts = {}
  for frozen in ((), CONVS):
    tx = optimizer.paper_momentum(0.01, frozen=frozen)
    state = steps.abstract_train_state(SMALL, tx, layout)
    step = steps.make_train_step(SMALL, layout, tx, 16, frozen=frozen)
    counts[frozen] = convolutions(step.lower(state, images, labels).compile().as_text())
  assert forward >= 5 and counts[CONVS] == forward and counts[()] > forward, (forward, counts)


# ---- init_from through launch.py ------------------------------------------------------------

BASE = [*SMALL_MODEL, '--config.num_train_steps=4', '--config.eval_every_steps=4',
        '--config.checkpoint_every_steps=4', '--config.log_every_steps=2']


@pytest.fixture(scope='module')
def source(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('source') / 'run'
  result = helpers.launch(workdir, *BASE)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


@pytest.mark.slow
def test_a_fine_tune_starts_from_the_source_with_a_new_head_and_frozen_convs(source, tmp_path):
  workdir = tmp_path / 'tune'
  overrides = [*BASE, '--config.data.num_classes=5', f'--config.init_from={source}',
               f'--config.freeze={CONVS}'.replace(' ', '')]
  result = helpers.launch(workdir, *overrides)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'fc8 initialised afresh' in result.stderr, result.stderr[-3000:]
  before, after = load_state(source, 4)['params'], load_state(workdir, 4)['params']
  for name in CONVS:
    for a, b in zip(jax.tree.leaves(after[name]), jax.tree.leaves(before[name])):
      np.testing.assert_array_equal(a, b)
  assert after['fc8']['kernel'].shape[-1] == 5
  assert not np.array_equal(after['fc7']['kernel'], before['fc7']['kernel'])
  # Rerun with more steps: it resumes from its own checkpoint, not from the source.
  result = helpers.launch(workdir, *overrides, '--config.num_train_steps=6')
  assert result.returncode == 0 and 'Resumed from' in result.stderr, result.stderr[-3000:]


@pytest.mark.slow
def test_a_source_that_does_not_fit_fails_in_one_sentence_before_anything_is_written(
    source, tmp_path):
  workdir = tmp_path / 'tune'
  workdir.mkdir()
  before = snapshot(workdir)
  cases = {
      'other shapes': ['--config.model.fc_features=48', f'--config.init_from={source}'],
      'no checkpoints': [f'--config.init_from={tmp_path}'],
      'no such step': [f'--config.init_from={source}/checkpoints/3'],
      'unknown layer': [f'--config.init_from={source}', '--config.freeze=("conv6",)'],
      'unknown skip': [f'--config.init_from={source}', '--config.init_from_skip=("fc9",)'],
  }
  for case, extra in cases.items():
    error = one_error_line(helpers.launch(workdir, *BASE, *extra))
    assert error.count('. ') == 0, (case, error)
    assert snapshot(workdir) == before, case


def saved_normalisation(workdir, step):
  """The mean and input_scale a checkpoint holds, read with orbax and json directly."""
  import json

  import orbax.checkpoint as ocp
  path = workdir.absolute() / 'checkpoints' / str(step)
  inputs = ocp.PyTreeCheckpointer().restore(
      path / 'inputs', args=ocp.args.PyTreeRestore(
          restore_args={'mean': ocp.RestoreArgs(restore_type=np.ndarray)}))
  meta = json.loads((path / 'meta' / 'metadata').read_text())
  return np.asarray(inputs['mean']), meta.get('input_scale')


@pytest.mark.slow
def test_a_fine_tune_normalises_as_its_source_did_and_keeps_it_when_resumed(tmp_path):
  """The source subtracted its training set's per-pixel mean and scaled to unit variance; a
  fine-tune whose own config says data.mean=none and data.std=none still normalises as the
  source did (init_from_inputs), resumed too; init_from_inputs=False takes its own (none)."""
  source = tmp_path / 'source'
  result = helpers.launch(source, *BASE, '--config.data.mean=pixel', '--config.data.std=channel')
  assert result.returncode == 0, result.stderr[-3000:]
  src_mean, src_scale = saved_normalisation(source, 4)
  assert src_mean.ndim == 3 and np.abs(src_mean).max() > 1 and src_scale, src_mean.shape
  tune = [*BASE, f'--config.init_from={source}', '--config.data.mean=none',
          '--config.data.std=none']
  result = helpers.launch(tmp_path / 'tune', *tune)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Normalising the inputs as' in result.stderr, result.stderr[-3000:]
  mean, scale = saved_normalisation(tmp_path / 'tune', 4)
  np.testing.assert_array_equal(mean, src_mean)
  assert scale == src_scale
  result = helpers.launch(tmp_path / 'tune', *tune, '--config.num_train_steps=8',
                          f'--config.init_from={tmp_path / "gone"}')
  assert result.returncode == 0 and 'Resumed from' in result.stderr, result.stderr[-3000:]
  np.testing.assert_array_equal(saved_normalisation(tmp_path / 'tune', 8)[0], src_mean)
  result = helpers.launch(tmp_path / 'own', *tune, '--config.init_from_inputs=False')
  assert result.returncode == 0, result.stderr[-3000:]
  mean, scale = saved_normalisation(tmp_path / 'own', 4)
  assert mean.shape == (3,) and not mean.any() and scale is None


@pytest.mark.parametrize('mean, scale, data, needs', [
    ((36, 36, 3), None, dict(pipeline='stream', prepared_size=32), 'mean image of 36x36'),
    ((36, 36, 3), None, dict(pipeline='stream', prepared_size=0), 'varying size'),
    ((3,), (3,), dict(channels=1), '3 channels'),
    ((32, 32, 3), None, dict(pipeline='memory', image_size=28), 'mean image of 32x32'),
], ids=['prepared size', 'no prepared size', 'channels', 'memory size'])
def test_a_source_normalisation_that_does_not_fit_fails_in_one_sentence(mean, scale, data,
                                                                       needs):
  from alexnet_jax.errors import ConfigError
  from alexnet_jax.weights import fine_tuning
  d = ml_collections.ConfigDict(dict(dict(pipeline='stream', prepared_size=36, image_size=32,
                                          channels=3), **data))
  normalisation = (np.ones(mean, np.float32), None if scale is None else np.ones(scale))
  with pytest.raises(ConfigError) as error:
    fine_tuning.inputs_for(normalisation, d, '/src/checkpoints/4')
  assert needs in str(error.value) and str(error.value).count('. ') == 0, error.value


def test_a_source_normalisation_that_fits_is_taken_as_it_is():
  from alexnet_jax.weights import fine_tuning
  d = ml_collections.ConfigDict(dict(pipeline='stream', prepared_size=36, image_size=32,
                                     channels=3))
  mean, scale = np.arange(36 * 36 * 3, dtype=np.float32).reshape(36, 36, 3), np.ones(3)
  got = fine_tuning.inputs_for((mean, scale), d, 'src')
  np.testing.assert_array_equal(got[0], mean)
  got = fine_tuning.inputs_for((mean[0, 0], None), d, 'src')  # channel values fit any size
  assert got[1] is None and got[0].shape == (3,)
