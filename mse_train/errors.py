"""Exceptions that carry an exit code. Only cli.py turns them into exits.

Exit codes: 0 success, 1 training failed (divergence), 2 the user's input is wrong,
130 interrupted.
"""

from __future__ import annotations

from collections.abc import Sequence


class MseTrainError(Exception):
    """Base of every error the tool reports without a traceback."""

    exit_code = 2

    def __init__(self, summary: str, problems: Sequence[str] = ()) -> None:
        self.summary = summary
        self.problems = list(problems)
        super().__init__(self.render())

    def render(self) -> str:
        if not self.problems:
            return self.summary
        return "\n".join([self.summary, *(f"  - {p}" for p in self.problems)])


class UserError(MseTrainError):
    """The user's input is wrong: config, CSV, checkpoint or arguments."""

    exit_code = 2


class ConfigError(UserError):
    """The YAML config (or a --set override) is invalid."""


class DataError(UserError):
    """A CSV file cannot be used as configured."""


class CheckpointError(UserError):
    """A checkpoint file is missing, damaged, unsafe or inconsistent."""


class OutputError(UserError):
    """The output folder cannot be used (not writable, holds another run, ...)."""


class SaveError(MseTrainError):
    """Writing an output failed (disk full, ...); the previous file is intact."""

    exit_code = 1


class TrainingDiverged(MseTrainError):
    """The loss or a parameter became NaN or infinite."""

    exit_code = 1


class TrainingInterrupted(MseTrainError):
    """SIGINT or SIGTERM stopped training after a checkpoint was written."""

    exit_code = 130
