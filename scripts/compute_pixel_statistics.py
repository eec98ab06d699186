"""The training set's per-pixel mean and RGB PCA (eigenvalues, eigenvectors) for the
paper's mean subtraction and PCA colour augmentation, written to an .npz file that
`--config.data.statistics` reads.

    python -m scripts.compute_pixel_statistics --config=configs/alexnet.py \
        --config.data.manual_dir=/data/imagenet --out=imagenet_stats.npz [--limit=50000]

It reads the config's training split exactly as training does (`reading.
training_builder`: the same tfds dataset, prepared at data.prepared_size), without
TensorFlow. Keys: mean (prepared_size x prepared_size x channels, 0-255), and for RGB
eigval, eigvec (0-1 scale, eigenvectors in columns, as the reference card's constants),
count, bad. Without a file, training computes the same over data.statistics_examples
images at start-up.
"""

import os

from absl import flags
from ml_collections import config_flags
import numpy as np

from alexnet_jax import cli
from alexnet_jax.data import config as data_config
from alexnet_jax.data import reading
from alexnet_jax.data import sources
from alexnet_jax.data import stream
from alexnet_jax.errors import UserError

config_flags.DEFINE_config_file('config', None, 'Path to a config file.', lock_config=True)
flags.DEFINE_string('out', None, 'The .npz file to write.')
flags.DEFINE_integer('limit', 0, 'A random sample of this many training images (0: all).')
flags.mark_flags_as_required(['config', 'out'])


def main(argv):
  del argv
  config = flags.FLAGS.config
  if config.data.pipeline != 'stream' or not config.data.prepared_size:
    raise UserError('The statistics are for data.pipeline=stream with data.prepared_size '
                    '> 0 (images of one size).')
  data_config.validate(config)
  out_dir = os.path.dirname(os.path.abspath(flags.FLAGS.out))
  if not os.path.isdir(out_dir) or not os.access(out_dir, os.W_OK):
    raise UserError(f'--out={flags.FLAGS.out}: {out_dir} is not a writable directory.')
  source = sources.split_source(reading.training_builder(config), config.data.train_split)
  stats = stream.pixel_statistics(source, config.data.prepared_size,
                                  flags.FLAGS.limit or None, config.seed,
                                  config.data.channels, reading.decoder_of(config.data))
  np.savez(flags.FLAGS.out, **stats)
  line = (f'{stats["count"]} images ({stats["bad"]} unreadable); mean per channel '
          f'{stats["mean"].reshape(-1, config.data.channels).mean(axis=0).round(1).tolist()}')
  if 'eigval' in stats:
    line += f'; eigenvalues {np.round(stats["eigval"], 4).tolist()}'
  print(f'{line}; written to {flags.FLAGS.out}')


if __name__ == '__main__':
  cli.run(main)
