"""Fine-tuning on your own folder of images, from a pretrained workdir (alexnet_jax/weights/fine_tuning.py).

  python launch.py --config=configs/image_folder_finetune.py:bvlc --workdir=runs/mine_tuned \
      --config.init_from=runs/bvlc --config.data.folder=/path/to/images \
      --config.data.num_classes=<classes>

The argument after the colon names the network and input preprocessing the pretrained workdir
was made with, which must be kept:
* `bvlc`: Caffe's bvlc_alexnet imported by scripts/import_weights.py (227x227 crops of 256,
  Caffe's mean, 0-255 inputs);
* `torchvision`: torchvision's alexnet imported the same way (224 of 256, ImageNet mean/std);
* `small` (the default): a run of configs/image_folder.py (the narrow network, 32 of 36).

The folder is read as configs/image_folder.py reads it (<split>/<class>/<image>). fc8 starts
afresh for the folder's classes (init_from_skip), the optimizer and the step count from 0,
and conv1-conv5 are frozen: on a few images per class, the pretrained features are kept and
fc6-fc8 learn the classes (Donahue et al., 2014). `--config.freeze='()'` fine-tunes every layer. The inputs
are normalised with the source checkpoint's mean and scale (init_from_inputs), which its
features were learned on.
"""

from configs import bvlc_alexnet
from configs import image_folder
from configs import torchvision_alexnet

BASES = {'bvlc': bvlc_alexnet, 'torchvision': torchvision_alexnet, 'small': image_folder}


def get_config(base: str = 'small'):
  if base not in BASES:
    raise ValueError(f'configs/image_folder_finetune.py:{base}: choose one of '
                     f'{", ".join(BASES)}.')
  config = BASES[base].get_config()
  folder = image_folder.get_config()
  if base != 'small':  # the pretrained network's preprocessing, on the folder
    config.dataset = 'image_folder'
    for field in ('folder', 'train_split', 'eval_split', 'pipeline'):
      config.data[field] = folder.data[field]
    config.data.prepared_size = 256
    config.data.num_classes = 2
    config.batch_size, config.eval_batch_size = 64, 64
    config.lr_schedule = 'step'
  config.init_from = ''  # the pretrained workdir (or its checkpoints/<step>): set it
  config.init_from_skip = ('fc8',)  # the folder's classes are not the source's
  config.freeze = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5')
  # A few images per class are a few steps per epoch: train for at least 500 steps at a
  # tenth of the rate that trains from scratch, so that fc6-fc8 move from a good start
  # rather than jump away from it.
  config.num_epochs = 30
  config.min_train_steps = 500
  config.learning_rate = folder.learning_rate / 10
  config.lr_warmup_steps = 0
  return config
