"""Errors a user can act on: the CLI prints their message as one line, without a traceback."""


class ShardflowError(Exception):
    """Base class of the errors that are the user's to fix (config, inputs, output state)."""


class ConfigError(ShardflowError):
    """The configuration is invalid; the message names the key."""


class InputError(ShardflowError):
    """An input path is missing or matches nothing."""


class OutputStateError(ShardflowError):
    """The output location holds something that this run must not overwrite or cannot resume."""
