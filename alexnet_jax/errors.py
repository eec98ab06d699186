"""Errors a user can act on: launch.py prints their one-sentence message and exits 1."""


class UserError(Exception):
  """A problem with the user's config, flags, data or workdir."""


class ConfigError(UserError, ValueError):
  """A config value that cannot work (bad mesh, batch, learning rate, ...)."""


class DatasetNotFoundError(UserError, FileNotFoundError):
  """A dataset's files are missing; the message says which files to put where."""


class BadDataError(UserError):
  """Records fail to decode: more than data.max_bad_records, or any in the eval split."""


class Stopped(UserError):
  """Stopped by SIGTERM or SIGINT with the work done so far kept; rerunning the same command
  continues. launch.py prints 'stopped: <sentence>' and exits with `exit_code`."""

  exit_code = 75  # EX_TEMPFAIL


class OutputError(UserError):
  """Writing the run's output failed (a full disk, a lost mount, a permission)."""


class NoFileLocksError(UserError):
  """A file system that gives no flock (an NFS mount without a lock daemon): a run lock or a
  dataset's preparation lock cannot be taken."""

  @classmethod
  def of(cls, path: str, e: OSError) -> 'NoFileLocksError':
    import os
    return cls(f'The file system of {os.path.dirname(path)} gives no file locks ({e.strerror}); '
               'use a directory on a file system with locks, or set allow_no_file_locks=True '
               'to go on without them (two runs could then write the same files at once).')


def require(ok: bool, message: str) -> None:
  """ConfigError(message) unless `ok`: the config checks' one sentence."""
  if not ok:
    raise ConfigError(message)


def one_of(name: str, value, choices) -> None:
  require(value in choices, f'{name}={value!r} is not one of {", ".join(choices)}.')
