"""The one exception type for bad input: a file, field, flag or value the user gave is wrong.

`InputError` subclasses `ValueError` (so existing `except ValueError` code keeps working). Its message names the
file, field or flag and says what was expected and what was found. The command-line scripts print such errors as a
single `error: <message>` line and exit with status 2; any other exception is an unexpected failure and keeps its
traceback.
"""
from __future__ import annotations


class InputError(ValueError):
    """Bad input named by its message: `<file/field/flag>: expected <...>, got <...>`."""


def config_field(name: str) -> str:
    """How library errors name a config field: "config field kto.train.batch_size" (the CLI spells the same field
    `--config.kto.train.batch_size`; library code never spells flags)."""
    return f"config field {name}"
