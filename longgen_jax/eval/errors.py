"""The one error type of the evaluation package."""


class EvalError(ValueError):
  """A bad evaluation request (unknown task, bad length, too short a context): one line."""
