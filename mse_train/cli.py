"""The command line: parse arguments, own the console, turn errors into exit codes.

Heavy modules (torch, pandas, matplotlib) are imported inside the commands that need
them, so `mse-train --help` and `--version` answer at once.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional, TypeVar

import typer
from rich.console import Console
from rich.table import Table as RichTable
from rich.text import Text

from mse_train import __version__

if TYPE_CHECKING:
    from mse_train.outputs.summary import Summary
    from mse_train.recipe import RunInfo
    from mse_train.training.records import EpochRecord

app = typer.Typer(
    name="mse-train",
    help="Train regression models on CSV tables from a YAML config, minimising MSE.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

EXIT_INTERNAL = 1
T = TypeVar("T")

Debug = Annotated[bool, typer.Option("--debug", help="Show Python tracebacks (for bug reports).")]
Overrides = Annotated[
    Optional[list[str]],  # noqa: UP045 - typer needs Optional here
    typer.Option(
        "--set",
        "-s",
        metavar="KEY=VALUE",
        help="Override a config value, e.g. optimizer.lr=0.1 (repeatable).",
    ),
]
ConfigPath = Annotated[Path, typer.Argument(help="YAML config file.", show_default=False)]


def _stderr() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _guard(debug: bool, work: Callable[[], T]) -> T:
    """Run a command; known errors become a message on stderr and their exit code."""
    from mse_train.errors import MseTrainError

    if debug or os.environ.get("MSE_TRAIN_DEBUG"):
        return work()
    try:
        return work()
    except MseTrainError as exc:
        err = _stderr()
        err.print(Text("error: ", style="bold red") + Text(exc.summary))
        for problem in exc.problems:
            err.print(Text(f"  - {problem}"))
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        _stderr().print(Text("interrupted", style="yellow"))
        raise typer.Exit(130) from None
    except typer.Exit:
        raise
    except Exception as exc:
        where = traceback.extract_tb(exc.__traceback__)[-1]
        _stderr().print(
            Text("internal error: ", style="bold red")
            + Text(f"{type(exc).__name__}: {exc} ({Path(where.filename).name}:{where.lineno})\n")
            + Text("this is a bug in mse-train; rerun with --debug and report the traceback")
        )
        raise typer.Exit(EXIT_INTERNAL) from None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mse-train {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", "-V", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Train regression models on CSV tables from a YAML config, minimising MSE."""


# ------------------------------------------------------------------------ run
@app.command()
def run(
    config_file: ConfigPath,
    overrides: Overrides = None,
    output_dir: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--output-dir", "-o", help="Run folder; overrides output.dir.", show_default=False),
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the run folder's last.pt.")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="With --resume: continue even if the config or data changed.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a previous run in the run folder.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as one JSON object on stdout.")
    ] = False,
    debug: Debug = False,
) -> None:
    """Train a model as CONFIG_FILE says; write checkpoints, metrics.csv and a summary."""

    def work() -> None:
        from mse_train import config, recipe

        cfg = config.load(config_file, overrides or [])
        if output_dir is not None:
            cfg.output.dir = str(output_dir.resolve())
        console = Console(stderr=as_json, highlight=False, soft_wrap=True)
        reporter = _Progress(console, quiet)
        again = ["mse-train", "run", str(config_file)]
        for item in overrides or []:
            again += ["--set", item]
        if output_dir is not None:
            again += ["--output-dir", str(output_dir)]
        options = recipe.Options(resume, force, overwrite, shlex.join([*again, "--resume"]))
        summary = recipe.run(cfg, options, reporter)
        if as_json:
            sys.stdout.write(json.dumps(summary) + "\n")
        elif not quiet:
            _print_run_summary(console, summary)

    _guard(debug, work)


class _Progress:
    """A rich progress bar on a terminal; elsewhere a short line now and then."""

    def __init__(self, console: Console, quiet: bool) -> None:
        self.console = console
        self.quiet = quiet
        self.live = console.is_terminal and not quiet
        self.bar: Any = None
        self.task: Any = None
        self._printed_at = 0.0
        self._total = 0

    def start(self, info: RunInfo) -> None:
        if self.quiet:
            return
        start = info.from_epoch
        resumed = f", resuming after epoch {start}" if start else ""
        val = f" + {info.val_rows} val" if info.val_rows else ""
        self.console.print(
            f"training on {info.rows} rows{val}, {info.inputs} inputs -> "
            f"{', '.join(info.targets)} | device {info.device}{resumed} | {info.out}"
        )
        self._total = info.epochs
        if self.live:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("epoch"),
                MofNCompleteColumn(),
                BarColumn(),
                TextColumn("{task.fields[losses]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self.bar.start()
            self.task = self.bar.add_task("train", total=info.epochs, completed=start, losses="")

    def note(self, text: str) -> None:
        if not self.quiet:
            self.console.print(Text(f"note: {text}", style="yellow"))

    def epoch(self, record: EpochRecord, total: int) -> None:
        if self.quiet:
            return
        losses = f"train {record.train_loss:.4g}"
        if record.val_loss is not None:
            losses += f"  val {record.val_loss:.4g}"
        losses += f"  lr {record.lr:.3g}"
        if self.bar is not None:
            self.bar.update(self.task, completed=record.epoch, losses=losses)
            return
        now = time.monotonic()
        if (
            record.epoch in (1, total)
            or now - self._printed_at >= 10
            or record.epoch % max(1, total // 10) == 0
        ):
            self.console.print(f"epoch {record.epoch}/{total}  {losses}", highlight=False)
            self._printed_at = now

    def batch(self, done: int, total: int) -> None:
        if self.bar is not None:
            epoch = self.bar.tasks[0].completed
            self.bar.update(self.task, completed=int(epoch) + done / total)

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def _print_run_summary(console: Console, summary: Summary) -> None:
    best, final = summary["best"], summary["final"]
    watched = best["watched"]
    console.print(
        f"{summary['status']}: {summary['epochs_run']} epochs in {summary['wall_seconds']:.2f} s; "
        f"final train_loss {_fmt(final['train_loss'])}"
        + (f", val_loss {_fmt(final['val_loss'])}" if final["val_loss"] is not None else "")
        + f"; best {watched} {_fmt(best[watched])} at epoch {best['epoch']}"
    )
    out = _relative(summary["output_dir"])
    console.print(f"wrote {out}/: best.pt, last.pt, metrics.csv, summary.json, config.yaml, loss.png")
    scored = summary["data"]["val"] or summary["data"]["train"]
    console.print(f"score it: mse-train eval {out}/best.pt {_relative(scored)}")


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.6g}"


def _relative(path: str) -> str:
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


# ----------------------------------------------------------------------- eval
@app.command("eval")
def eval_(
    checkpoint_file: Annotated[
        Path, typer.Argument(metavar="CHECKPOINT", help="best.pt or last.pt of a run.", show_default=False)
    ],
    csv_file: Annotated[
        Path,
        typer.Argument(
            metavar="CSV", help="Rows to score; needs the feature and target columns.", show_default=False
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print exactly one JSON object on stdout.")] = False,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "cpu",
    debug: Debug = False,
) -> None:
    """Score a checkpoint on a CSV: MSE, RMSE, MAE and R² in the target's own units."""

    def work() -> None:
        from mse_train.use import evaluate

        report = evaluate.evaluate(checkpoint_file, csv_file, device)
        if as_json:
            sys.stdout.write(json.dumps(report.as_json()) + "\n")
            return
        console = Console(highlight=False)
        for note in report.notes:
            console.print(Text(f"note: {note}", style="yellow"))
        table = RichTable(title=f"{checkpoint_file} (epoch {report.checkpoint_epoch}) on {csv_file}")
        for column in ("target", "MSE", "RMSE", "MAE", "R²", "rows"):
            table.add_column(column, justify="left" if column == "target" else "right")
        rows = list(report.targets.items())
        for name, m in rows:
            table.add_row(name, *_metric_cells(m), str(report.overall["n"]))
        if len(rows) > 1:
            table.add_row("average", *_metric_cells(report.overall), str(report.overall["n"]), style="bold")
        console.print(table)

    _guard(debug, work)


def _metric_cells(m: dict[str, Any]) -> list[str]:
    return [
        f"{m['mse']:.6g}",
        f"{m['rmse']:.6g}",
        f"{m['mae']:.6g}",
        "-" if m["r2"] is None else f"{m['r2']:.4f}",
    ]


# -------------------------------------------------------------------- predict
@app.command()
def predict(
    checkpoint_file: Annotated[
        Path, typer.Argument(metavar="CHECKPOINT", help="best.pt or last.pt of a run.", show_default=False)
    ],
    csv_file: Annotated[
        Path,
        typer.Argument(
            metavar="CSV", help="Rows to predict; target columns are optional.", show_default=False
        ),
    ],
    output: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--output", "-o", help="Write here instead of stdout.", show_default=False),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "cpu",
    debug: Debug = False,
) -> None:
    """Write CSV's rows with a <target>_pred column per target appended."""

    def work() -> None:
        from mse_train.use import predict as predicting

        rows = predicting.predict(checkpoint_file, csv_file, output, device)
        if output is not None:
            _stderr().print(f"wrote {rows} rows with predictions to {output}")

    _guard(debug, work)


# ----------------------------------------------------------- config tools
@app.command("config")
def config_cmd(config_file: ConfigPath, overrides: Overrides = None, debug: Debug = False) -> None:
    """Print the resolved config: every default filled in, paths made absolute."""

    def work() -> None:
        from mse_train import config

        sys.stdout.write(config.to_yaml(config.load(config_file, overrides or [])))

    _guard(debug, work)


@app.command()
def validate(config_file: ConfigPath, overrides: Overrides = None, debug: Debug = False) -> None:
    """Check the config and the CSV files it names (columns, types, cells) without training."""

    def work() -> None:
        from mse_train import config
        from mse_train.data import prepare

        cfg = config.load(config_file, overrides or [])
        prepared = prepare.prepare(cfg.data, cfg.targets, cfg.seed)
        console = Console(highlight=False)
        for note in prepared.notes:
            console.print(Text(f"note: {note}", style="yellow"))
        table = RichTable(title=f"{config_file}: ok")
        for column in ("column", "role", "kind"):
            table.add_column(column)
        pre = prepared.pre
        for col in pre.numeric:
            table.add_row(col.name, "feature", "numeric")
        for cat in pre.categorical:
            table.add_row(cat.name, "feature", f"categorical, {len(cat.categories)} categories")
        for target in pre.targets:
            table.add_row(target.name, "target", "numeric")
        console.print(table)
        val = len(prepared.val) if prepared.val is not None else 0
        console.print(
            f"{len(prepared.train)} training rows, {val} validation rows, "
            f"{prepared.train.x.shape[1]} model inputs; the run folder would be {cfg.output.dir}"
        )

    _guard(debug, work)


@app.command()
def init(
    csv_file: Annotated[
        Path, typer.Argument(metavar="CSV", help="The table to train on.", show_default=False)
    ],
    target: Annotated[
        list[str],
        typer.Option("--target", "-t", help="Column to predict (repeat for several).", show_default=False),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the config.")] = Path(
        "config.yaml"
    ),
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
    delimiter: Annotated[str, typer.Option(help="Field separator of the CSV.")] = ",",
    debug: Debug = False,
) -> None:
    """Write a commented starter config for CSV, every section present."""

    def work() -> None:
        from mse_train.config import starter
        from mse_train.data import prepare
        from mse_train.errors import OutputError
        from mse_train.outputs import fsio

        if output.exists() and not force:
            raise OutputError(f"{output}: already exists", ["choose another name with -o, or pass --force"])
        table = prepare.sketch(csv_file, target, delimiter)
        text = starter.render(
            csv_file, table.features, target, table.text_columns, table.empty_columns, output, delimiter
        )
        fsio.write_text(output, text)
        _stderr().print(f"wrote {output}; check it with: mse-train validate {output}")

    _guard(debug, work)


# ------------------------------------------------------------------- plots
@app.command()
def plot(
    run_dirs: Annotated[
        list[Path],
        typer.Argument(metavar="RUN_DIR...", help="Run folders (holding metrics.csv).", show_default=False),
    ],
    output: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--output",
            "-o",
            help="PNG to write; default RUN_DIR/loss.png for one run, compare.png for several.",
        ),
    ] = None,
    debug: Debug = False,
) -> None:
    """Plot loss curves: one run's loss.png again, or several runs overlaid to compare."""

    def work() -> None:
        from mse_train.errors import UserError
        from mse_train.outputs import metrics, plots

        runs = []
        for folder in run_dirs:
            path = folder / "metrics.csv"
            if not path.is_file():
                raise UserError(
                    f"{folder}: no metrics.csv here", ["point at a folder written by `mse-train run`"]
                )
            history = metrics.read_history(path)
            if not history:
                raise UserError(f"{path}: holds no epochs yet")
            runs.append((folder.name or str(folder), history))
        if len(runs) == 1:
            target = output or run_dirs[0] / "loss.png"
            best = _best_epoch(runs[0][1])
            plots.write_loss_plot(target, runs[0][1], best)
        else:
            target = output or Path("compare.png")
            plots.write_comparison(target, runs)
        _stderr().print(f"wrote {target}")

    _guard(debug, work)


def _best_epoch(history: list[dict[str, Any]]) -> int:
    key = "val_loss" if history[0].get("val_loss") is not None else "train_loss"
    best = min(history, key=lambda row: row[key] if row[key] is not None else float("inf"))
    return int(best["epoch"])


def main() -> None:
    """Console-script entry point."""
    app()
