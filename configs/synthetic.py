"""Random images of any size, for smoke tests and benchmarks (the paper's network at 224)."""

from configs import alexnet


def get_config():
  config = alexnet.get_config()
  config.dataset = 'synthetic'
  config.data.flip = False
  config.data.mean = 'none'
  config.batch_size = 32
  config.num_epochs = 1
  config.num_train_steps = 10
  config.lr_schedule = 'constant'
  config.log_every_steps = 5
  config.eval_every_steps = 10
  config.checkpoint_every_steps = 10
  return config
