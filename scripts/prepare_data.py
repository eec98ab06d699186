"""Prepares the dataset a config trains on, and stops: ImageNet's store from its tars on a
CPU node (or the day before), so that the training job starts at once.

    python -m scripts.prepare_data --config=configs/alexnet.py \
        --config.data.manual_dir=/data/imagenet --config.data.data_dir=/data/tfds

It prepares exactly what `launch.py` with the same config would (`reading.training_builder`:
the same store, checks, lock, progress lines, resumption), then prints one line: where the
dataset is, its splits and its size. Exit codes as launch.py's: 1 with one 'error:' line,
75 with one 'stopped:' line (SIGTERM or SIGINT; rerun to continue).
"""

import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

config_flags.DEFINE_config_file('config', None, 'Path to a config file.', lock_config=True)
flags.mark_flags_as_required(['config'])


def main(argv):
  # Imported here: the preparation's worker processes import this module again, and need
  # none of JAX.
  from alexnet_jax.data import reading
  from alexnet_jax.errors import Stopped
  from alexnet_jax.errors import UserError
  del argv
  config = flags.FLAGS.config
  try:
    builder = reading.training_builder(config)
  except Stopped as e:
    print(f'stopped: {e}', file=sys.stderr)
    sys.exit(e.exit_code)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  where = os.fspath(builder.data_dir)
  size = sum(os.path.getsize(os.path.join(where, f)) for f in os.listdir(where))
  splits = ', '.join(f'{name} {info.num_examples:,}' for name, info in
                     sorted(builder.info.splits.items()))
  print(f'{config.dataset} is prepared in {where}: {splits} images, {size / 1e9:.2f} GB')


if __name__ == '__main__':
  app.run(main)
