"""The paper config's default schedule in the training loop, end to end (section 5: divide
the rate by 10 when the validation error stops improving): against the rule computed here
from the run's own evaluations, and across a kill and a resume."""

import pytest

from tests import helpers
from tests.helpers import assert_bitwise_equal
from tests.helpers import load_state
from tests.helpers import records

PLATEAU = [*helpers.SMALL_MODEL, '--config.model.init_std=0.05', '--config.lr_schedule=plateau',
           '--config.plateau_patience=2', '--config.plateau_max_drops=2',
           '--config.num_train_steps=30', '--config.eval_every_steps=2',
           '--config.checkpoint_every_steps=4', '--config.log_every_steps=1']


def expected_rates(errors, base=0.01, factor=0.1, patience=2, max_drops=2):
  """The rate after each evaluation by the paper's rule, and how many drops an unlimited
  schedule would have made."""
  best, bad, drops, wanted, rates = float('inf'), 0, 0, 0, []
  for error in errors:
    if error < best:
      best, bad = error, 0
    else:
      bad += 1
      if bad >= patience:
        bad, wanted = 0, wanted + 1
        if drops < max_drops:
          drops += 1
    rates.append(base * factor ** drops)
  return rates, wanted


@pytest.mark.slow
def test_the_plateau_schedule_drops_the_rate_and_survives_a_kill(xla_cache, tmp_path):
  reference = tmp_path / 'reference'
  result = helpers.launch(reference, *PLATEAU, xla_cache=xla_cache)
  assert result.returncode == 0, result.stderr[-3000:]
  evals = records(reference, 'eval/top1')
  assert [r['step'] for r in evals] == list(range(2, 31, 2))
  rates, wanted = expected_rates([1 - r['eval/top1'] for r in evals])
  assert wanted > 2  # random labels: the error stops improving more often than drops allow
  logged = {r['step']: r['lr'] for r in records(reference, 'train/loss')}
  for r, rate in zip(evals, rates):  # the rate of the steps after each evaluation
    for step in range(r['step'] + 1, min(r['step'] + 2, 30) + 1):
      assert logged[step] == pytest.approx(rate, rel=1e-6), (step, logged[step], rate)
  assert logged[30] == pytest.approx(0.0001, rel=1e-6)  # at most two drops

  workdir = tmp_path / 'killed'
  killed = helpers.launch(workdir, *PLATEAU, xla_cache=xla_cache, faults='kill_after_step=17')
  assert killed.returncode == -9, killed.stderr[-3000:]
  result = helpers.launch(workdir, *PLATEAU, xla_cache=xla_cache)
  assert result.returncode == 0, result.stderr[-3000:]
  # From 16, or 12 where 16's background save had not finished when the kill came.
  assert any(f'Resumed from {workdir}/checkpoints/{s}.' in result.stderr for s in (12, 16))
  assert_bitwise_equal(load_state(workdir, 30), load_state(reference, 30))
  assert {r['step']: r['lr'] for r in records(workdir, 'train/loss')} == logged
