"""Errors a user can act on: launch.py prints their one-sentence message and exits 1."""


class UserError(Exception):
  """A problem with the user's config, flags, data or workdir."""


class ConfigError(UserError, ValueError):
  """A config value that cannot work (bad mesh, batch, learning rate, ...)."""


class DatasetNotFoundError(UserError, FileNotFoundError):
  """A dataset's files are missing; the message says which files to put where."""


class BadDataError(UserError):
  """Records fail to decode: more than data.max_bad_records, or any in the eval split."""


class OutputError(UserError):
  """Writing the run's output failed (a full disk, a lost mount, a permission)."""
