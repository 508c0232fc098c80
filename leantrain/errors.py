"""The one exception type users see: a clear message, exit code 2 on the CLI, no traceback."""


class LeantrainError(Exception):
    """Bad input (config, data, checkpoint, method combination). The message names the culprit."""


class ConfigError(LeantrainError):
    """A recipe, ``--set`` override or method option is invalid."""
