"""Where each image lies in the ILSVRC-2012 tars: (name, byte offset, size), read from the
tar headers alone, so that the preparation's workers read any image with one `pread`.

ILSVRC2012_img_train.tar holds 1,000 class tars (n01440764.tar, ...), each holding its
class's JPEGs; ILSVRC2012_img_val.tar holds 50,000 JPEGs. A member's name is the one tfds's
`iter_archive` gives it (`tfds_name`), so that keys, labels and order are tfds's own.
Indexing a class tar reads only its headers (one 512-byte block per member, seeking over the
data); the class tars are indexed in parallel by the preparation's worker processes.
"""

from __future__ import annotations

import dataclasses
import io
import os
import tarfile

from alexnet_jax.errors import BadDataError


@dataclasses.dataclass(frozen=True)
class Member:
  name: str  # as tfds names it: the normalised path inside its (class) tar
  offset: int  # of its data, in bytes from the start of the outer tar file
  size: int


def tfds_name(path: str) -> str | None:
  """The name tfds's `iter_archive` gives a tar member, or None for one it skips (hidden
  files, absolute or parent paths, editor backups: tfds's `extractor._normpath`)."""
  path = os.path.normpath(path)
  if (path.startswith('.') or os.path.isabs(path) or path.endswith('~')
      or os.path.basename(path).startswith('.')):
    return None
  return path


class _Window(io.RawIOBase):
  """Bytes [start, start + size) of a file, as a file of their own (a class tar inside the
  train tar), so that tarfile never reads past the inner tar's end."""

  def __init__(self, f, start: int, size: int):
    super().__init__()
    self._f, self._start, self._size, self._pos = f, start, size, 0

  def readable(self):
    return True

  def seekable(self):
    return True

  def tell(self):
    return self._pos

  def seek(self, offset, whence=io.SEEK_SET):
    base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
    self._pos = max(0, base + offset)
    return self._pos

  def readinto(self, buffer):
    n = max(0, min(len(buffer), self._size - self._pos))
    data = os.pread(self._f.fileno(), n, self._start + self._pos) if n else b''
    buffer[:len(data)] = data
    self._pos += len(data)
    return len(data)


def members(path: str, start: int = 0, size: int | None = None) -> list[Member]:
  """The regular files of the tar at `path` (or of the tar stored in its bytes [start,
  start + size)), in tar order, with offsets in `path`. BadDataError for a file that is not
  a tar; OSError where it cannot be read."""
  with open(path, 'rb') as f:
    size = os.fstat(f.fileno()).st_size - start if size is None else size
    try:
      with tarfile.open(fileobj=_Window(f, start, size), mode='r:') as tar:
        out = []
        for info in tar:
          name = tfds_name(info.name) if info.isreg() else None
          if name is not None:
            out.append(Member(name, start + info.offset_data, info.size))
        if tar.offset + tarfile.BLOCKSIZE > size:  # no end-of-archive block: tarfile stops
          raise tarfile.ReadError('it ends without its end-of-archive block')  # silently
        return out
    except tarfile.TarError as e:
      inner = f' (the tar stored at byte {start:,} of it)' if start else ''
      raise BadDataError(f'{path}{inner} cannot be read as a tar ({e}): it is damaged or cut '
                         'short; download or copy it again.') from None


def class_tars(path: str) -> list[Member]:
  """The class tars of ILSVRC2012_img_train.tar (members named <wnid>.tar), in tar order."""
  return [m for m in members(path) if m.name.endswith('.tar')]


def read(f, member: Member) -> bytes:
  """The bytes of `member` from the open tar file `f` (thread- and process-safe)."""
  data = os.pread(f.fileno(), member.size, member.offset)
  if len(data) != member.size:
    raise BadDataError(f'{member.name} is cut short in {f.name} ({len(data)} of '
                       f'{member.size} bytes): the tar is truncated; copy it again.')
  return data
