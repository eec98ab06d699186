"""A bug keeps its traceback: where the package turns a library's errors into one sentence, it
catches what it means (an unknown dataset name, a backend without cost analysis, a full disk),
and anything else goes on as it was raised, or is logged whole."""

import errno
import logging

import pytest
import tensorflow_datasets as tfds

from alexnet_jax.checkpoint import saving
from alexnet_jax.data import sources
from alexnet_jax.errors import DatasetNotFoundError
from alexnet_jax.model import flops


class BuggyBuilder(tfds.core.GeneratorBasedBuilder):
  """A registered tfds dataset whose builder has a bug."""

  VERSION = tfds.core.Version('1.0.0')

  def __init__(self, **kwargs):
    raise ZeroDivisionError('a bug in the builder')

  def _info(self):
    raise NotImplementedError

  def _split_generators(self, dl_manager):
    raise NotImplementedError

  def _generate_examples(self):
    raise NotImplementedError


def test_an_unknown_dataset_is_one_sentence_and_a_builders_bug_keeps_its_traceback(tmp_path):
  with pytest.raises(DatasetNotFoundError, match=r"^dataset='cifar_10' is not a tfds dataset "
                     r'\(did you mean cifar10\?\); name one of'):
    sources.builder_for('cifar_10', str(tmp_path), None)
  with pytest.raises(DatasetNotFoundError, match='is not a dataset name'):
    sources.builder_for('Bad Name!', str(tmp_path), None)
  with pytest.raises(ZeroDivisionError, match='a bug in the builder'):
    sources.builder_for('buggy_builder', str(tmp_path), None)


class Compiled:
  def __init__(self, error):
    self.error = error

  def cost_analysis(self):
    raise self.error


def test_cost_analysis_is_optional_but_its_bugs_are_not():
  assert flops.compiled_flops(Compiled(NotImplementedError())) is None
  with pytest.raises(ZeroDivisionError):
    flops.compiled_flops(Compiled(ZeroDivisionError()))


def test_a_failed_save_names_the_disk_and_shows_any_other_cause_whole(caplog):
  full = OSError(errno.ENOSPC, 'No space left on device', '/run/checkpoints/3')
  try:
    raise ValueError('tensorstore write failed') from full
  except ValueError as e:
    wrapped = e
  assert saving._machine_cause(wrapped) == 'No space left on device: /run/checkpoints/3'
  assert saving._machine_cause(ValueError('RESOURCE_EXHAUSTED: No space left on device')) == (
      'No space left on device')
  assert saving._machine_cause(KeyError('params')) is None

  class Saver(saving.Saving):
    directory, _pending = '/run/checkpoints', 3

    def steps(self):
      return []

  for error, logged in ((wrapped, False), (KeyError('params'), True)):
    caplog.clear()
    with caplog.at_level(logging.ERROR), pytest.raises(saving.CheckpointSaveError):
      Saver()._failed(error)
    traced = [r for r in caplog.records if r.exc_info and r.exc_info[1] is error]
    assert bool(traced) == logged, caplog.records
