"""Entrypoint: python launch.py --config=configs/alexnet.py --workdir=runs/x [--config.<field>=<value>]."""

import logging as py_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and run.json.')
config_flags.DEFINE_config_file('config', None, 'Path to a config file.', lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])


def initialize_distributed(config) -> None:
  """jax.distributed from the config, or from JAX's cluster auto-detection."""
  import jax

  d = config.distributed
  if d.coordinator_address:
    if d.num_processes < 1 or d.process_id < 0:
      raise app.UsageError('distributed.coordinator_address needs distributed.num_processes and '
                       'distributed.process_id.')
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')  # CPU processes
    jax.distributed.initialize(d.coordinator_address, d.num_processes, d.process_id)
  else:
    try:  # SLURM, Open MPI, TPU pods, ... (no-op when no cluster is detected)
      jax.distributed.initialize()
    except (ValueError, RuntimeError):
      pass


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  config = FLAGS.config
  workdir = FLAGS.workdir
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise app.UsageError(f'--workdir={workdir} is a file, not a directory.')
  initialize_distributed(config)

  from alexnet_jax import train  # imports JAX after the distributed setup
  from alexnet_jax.errors import UserError

  try:
    result = train.train_and_evaluate(config, workdir)
  except (UserError, FloatingPointError) as e:
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  logging.info('Final evaluation: %s', result)


class _QuietLibraries(py_logging.Filter):
  """Keeps orbax's and tfds's per-save / per-split INFO chatter out of the run's log."""

  def filter(self, record):
    noisy = ('/orbax/', '/tensorflow_datasets/', '/etils/')
    return record.levelno >= py_logging.WARNING or not any(n in record.pathname for n in noisy)


if __name__ == '__main__':
  py_logging.getLogger('absl').addFilter(_QuietLibraries())
  app.run(main)
