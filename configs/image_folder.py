"""Your own images: a folder of class subfolders, through the paper's input pipeline.

  python launch.py --config=configs/image_folder.py --workdir=runs/mine \
      --config.data.folder=/path/to/images --config.data.num_classes=<classes>

The folder holds <split>/<class>/<image> (train/ and test/ by default: data.train_split,
data.eval_split), any size and format Pillow reads. It is stored once as a tfds dataset in
data.data_dir (`datasets.image_folder_builder`), then every image once more at
data.prepared_size (shorter side, central square), and trained on random data.crop_size
crops, reflections and PCA lighting, with the training set's per-pixel mean subtracted:
the paper's pipeline at a small scale (the paper's 256/224 is 36/32 here), with the narrow
network of configs/fashion_mnist.py in RGB.
"""

from configs import fashion_mnist


def get_config():
  config = fashion_mnist.get_config()
  config.dataset = 'image_folder'
  config.data.train_split = 'train'
  config.data.eval_split = 'test'
  config.data.channels = 3
  config.data.num_classes = 2
  config.data.pipeline = 'stream'
  config.data.prepared_size = 36
  config.data.crop_size = 32
  config.data.image_size = 32
  config.data.crop_pad = 0
  config.data.flip = True
  config.data.pca_sigma = 0.1
  config.data.mean = 'pixel'

  config.batch_size = 64
  config.eval_batch_size = 64
  # 30 epochs, but at least 2,000 steps (128,000 images): a folder of 1,400 images is 22
  # steps an epoch, and 30 of them (660 steps) leave it far from converged. The step
  # schedule's drops (half and three quarters of training) follow the total.
  config.num_epochs = 30
  config.min_train_steps = 2000
  return config
