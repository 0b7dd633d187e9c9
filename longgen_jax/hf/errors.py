"""The one error type of the Hugging Face interop package."""


class HFConversionError(ValueError):
  """A failed import / export. The message is ONE line naming the tensor, field or file."""
