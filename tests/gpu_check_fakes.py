"""Fake stages for the GPU check's rehearsal (tests/test_gpu_check.py): the check's own runner
and report, with stages that fail in each way a first GPU run can, in seconds.

    python -m tests.gpu_check_fakes OUT SCRATCH failures   # every failure, then a stage after
    python -m tests.gpu_check_fakes OUT SCRATCH kill       # a stage that runs until killed
"""

import os
import signal
import sys
import time

from benchmarks import gpu_check
from benchmarks import gpu_runner

MISSING = 'no_such_module_for_the_rehearsal'


def setup(out, context):
  """As the environment stage: versions first, then an import that fails."""
  out.add('versions', {'python': sys.version.split()[0]})
  __import__(MISSING)


def needs_missing(out, context):
  out.add('ran', True)  # must not: its import failed in `setup`


def figures(out, context):
  out.add('img_per_s', 1234.5, '1234.5 img/s')
  out.export('best_batch', 64)


def raises(out, context):
  out.add('partial', 1)
  raise ValueError('planted exception')


def hangs(out, context):
  out.add('partial', 2)
  time.sleep(60)


def killed(out, context):
  out.add('partial', 3)
  os.kill(os.getpid(), signal.SIGKILL)


def after(out, context):
  out.add('best_batch_seen', context.get('best_batch'))


def slow(out, context):
  out.add('partial', 4)
  time.sleep(60)


def stage(name, guess_s=5.0, **kw):
  return gpu_runner.Stage(name, f'tests.gpu_check_fakes:{name}', guess_s, **kw)


SCENARIOS = {
    'failures': [stage('setup'), stage('needs_missing', needs=(MISSING,)), stage('figures'),
                 stage('raises'), stage('hangs', guess_s=0.5), stage('killed'),
                 stage('too_long', guess_s=1e6), stage('after')],
    'kill': [stage('figures'), stage('slow')],
}


def main(argv):
  out, scratch, scenario = argv[1:4]
  gpu_check.run_check(out, scratch, SCENARIOS[scenario], dry_run=True, budget_s=600,
                      platform='cpu', tf32=False, cache=os.path.join(scratch, 'cache'),
                      wheels='', groups=None, limit_factor=4.0, limit_extra_s=0.0)


if __name__ == '__main__':
  main(sys.argv)
