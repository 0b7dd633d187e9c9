"""The one error type of the model package."""


class ConfigError(ValueError):
  """An invalid model configuration. The message is ONE line naming the offending field."""
