"""The one exception type of the data pipeline.

Every user-facing problem (a missing file, an empty glob, a bad config key, a
tokenizer mismatch) raises `DataError` with a one-line message that names the
offending file, key or value. It subclasses `ValueError`, so callers that
already catch `ValueError` keep working.
"""


class DataError(ValueError):
  """A bad data input or data config; the message says what and where."""


def one_line(error: BaseException) -> str:
  """`str(error)` with all whitespace runs (newlines included) collapsed to one space."""
  return " ".join(str(error).split())
