"""The one error type of the inference package."""


class InferError(ValueError):
  """A bad inference request (prompt too long for the cache, empty prompt, bad option): one line."""
