"""The one exception type users see: a clear message, exit code 2 on the CLI, no traceback."""


class LeantrainError(Exception):
    """Bad input (config, data, checkpoint, method combination). The message names the culprit."""


class ConfigError(LeantrainError):
    """A recipe, ``--set`` override or method option is invalid."""


class RunStopped(LeantrainError):
    """Training stopped early on purpose: nothing non-finite was saved, the summary says why.

    ``exit_code``: 3 for a non-finite loss or gradient, 130 for an interruption (Ctrl-C)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
