"""Random images of any size, for smoke tests and benchmarks (the paper's network at 224)."""

from configs import alexnet


def get_config():
  config = alexnet.get_config()
  config.dataset = 'synthetic'
  config.data.pipeline = 'memory'  # generated in memory at data.image_size, used as it is
  config.data.prepared_size = 0
  config.data.crop_size = 0
  config.data.pca_sigma = 0.0
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
