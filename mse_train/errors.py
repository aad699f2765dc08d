"""Exceptions that carry an exit code. Only cli.py turns them into exits.

Exit codes: 0 success, 1 training failed (divergence) or an export did not match
`predict`, 2 the user's input is wrong, 3 another process of a torchrun job died (this
one stopped; the last checkpoint is intact), 130 interrupted.
"""

from __future__ import annotations

from collections.abc import Sequence

EXAMPLES = 5  # items quoted in a message before "and N more"


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


class NotNumbers(DataError):
    """A target (or weight) column holds cells that are not numbers: no setting reads it, so
    no config could train on the table (`init` refuses it rather than write one)."""


class CheckpointError(UserError):
    """A checkpoint file is missing, damaged, unsafe or inconsistent."""


class OutputError(UserError):
    """The output folder cannot be used (not writable, holds another run, ...)."""


class EnvironmentProblem(UserError):
    """This machine lacks something the settings ask for: a GPU, an optional package."""


class SaveError(MseTrainError):
    """Writing an output failed (disk full, ...); the previous file is intact."""

    exit_code = 1


class ExportMismatch(MseTrainError):
    """An exported model does not predict what `mse-train predict` does; nothing was written."""

    exit_code = 1


class TrainingDiverged(MseTrainError):
    """The loss or a parameter became NaN or infinite."""

    exit_code = 1


class PeerLost(MseTrainError):
    """Under torchrun, another process of the job died or stopped answering mid-collective."""

    exit_code = 3


class TrainingInterrupted(MseTrainError):
    """SIGINT or SIGTERM stopped training after a checkpoint was written."""

    exit_code = 130


def examples(items: Sequence[object], total: int | None = None, sep: str = ", ") -> str:
    """The first EXAMPLES items joined by commas, then "and N more" for the rest.

    `total` is the full count when `items` holds only the first few.
    """
    total = len(items) if total is None else total
    shown = sep.join(str(item) for item in items[:EXAMPLES])
    more = total - min(len(items), EXAMPLES)
    return f"{shown} and {more} more" if more > 0 else shown
