"""A miniature ILSVRC-2012 manual download in the official layout, from a real photograph.

ILSVRC2012_img_train.tar holds one tar per class (n01440764.tar, ...) of JPEGs named
<wnid>_<n>.JPEG; ILSVRC2012_img_val.tar holds ILSVRC2012_val_<8 digits>.JPEG, whose labels
tfds takes from its validation_labels.txt in the order of the sorted names. The pictures
are crops of matplotlib's sample photograph (grace_hopper.jpg), rescaled to various sizes.
Two train files carry names from tfds's fix lists: a CMYK JPEG (n01739381_1309.JPEG) and a
PNG saved as .JPEG (n02105855_2933.JPEG), as in the real archive.
"""

import io
import pathlib
import tarfile

import numpy as np

CLASSES = ('n01440764', 'n01443537', 'n01739381', 'n02105855')
SPECIAL = {'n01739381': ('n01739381_1309.JPEG', 'CMYK'),
           'n02105855': ('n02105855_2933.JPEG', 'PNG')}


def photo():
  from PIL import Image
  import matplotlib.cbook
  return Image.open(matplotlib.cbook.get_sample_data('grace_hopper.jpg')).convert('RGB')


def _encode(image, fmt='JPEG') -> bytes:
  out = io.BytesIO()
  if fmt == 'CMYK':
    image.convert('CMYK').save(out, 'JPEG', quality=90)
  elif fmt == 'PNG':
    image.save(out, 'PNG')
  else:
    image.save(out, 'JPEG', quality=90)
  return out.getvalue()


def _add(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def make(directory, per_class: int = 2, num_val: int = 4, seed: int = 0) -> dict:
  """Writes the two tars into `directory`; returns {file name: PIL image written}."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  source = photo()  # 512 x 600
  rng = np.random.default_rng(seed)
  written = {}

  def sample():
    x, y = int(rng.integers(0, 312)), int(rng.integers(0, 400))
    w, h = int(rng.integers(120, 200)), int(rng.integers(120, 200))
    return source.crop((x, y, x + 200, y + 200)).resize((w, h))

  with tarfile.open(directory / 'ILSVRC2012_img_train.tar', 'w') as train:
    for wnid in CLASSES:
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode='w') as tar:
        names = [(f'{wnid}_{i + 1}.JPEG', 'JPEG') for i in range(per_class)]
        if wnid in SPECIAL:
          names[0] = SPECIAL[wnid]
        for name, fmt in names:
          image = sample()
          _add(tar, name, _encode(image, fmt))
          written[name] = image
      _add(train, f'{wnid}.tar', inner.getvalue())
  with tarfile.open(directory / 'ILSVRC2012_img_val.tar', 'w') as val:
    for i in reversed(range(num_val)):  # not in sorted order, as in the real tar
      name = f'ILSVRC2012_val_{i + 1:08d}.JPEG'
      image = sample()
      _add(val, name, _encode(image))
      written[name] = image
  return written
