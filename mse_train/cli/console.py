"""What the command line shows: the progress of a run, its summary, metric tables.

Only this module and app.py know rich; the recipe reports through `Reporter` calls.
"""

from __future__ import annotations

import errno
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from mse_train.data.drift import Finding
    from mse_train.data.prepare import Prepared
    from mse_train.outputs.summary import Summary
    from mse_train.recipe import RunInfo
    from mse_train.selection.worker import Plan
    from mse_train.training.records import EpochRecord
    from mse_train.use.evaluate import Report
    from mse_train.use.explain import Importance
    from mse_train.use.export import Exported


class Output(Console):
    """rich's Console, but a reader of its output that went away (`mse-train eval ... | head`)
    is the command's BrokenPipeError, which app.py ends with exit 141 as for any other
    output, where rich's own `on_broken_pipe` (which its docs invite a subclass to change)
    exits 1."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError(errno.EPIPE, "the reader of the output went away")


def stderr() -> Output:
    return Output(stderr=True, highlight=False, soft_wrap=True)


class Progress:
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
            f"{', '.join(info.targets)} | device {info.device}, {info.threads} thread"
            f"{'s' if info.threads != 1 else ''}{resumed} | {info.out}"
        )
        self._total = info.epochs
        if self.live:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import (
                Progress as Bar,
            )

            self.bar = Bar(
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


class SweepProgress:
    """A sweep's progress on stderr from its first second: a start line, then on a terminal a
    live bar (trials done, best score so far, the pack's epochs, elapsed and remaining time);
    elsewhere plain lines, one per update (a pack's epochs at most every 10 s)."""

    def __init__(self, console: Console, quiet: bool) -> None:
        self.console, self.quiet = console, quiet
        self.live = console.is_terminal and not quiet
        self.bar: Any = None
        self.task: Any = None
        self.best: float | None = None
        self.deadline: float | None = None  # epoch seconds (time.time), shared by the study's workers
        self.started = time.monotonic()
        self._printed_at = 0.0

    def begin(self, plan: Plan) -> None:
        self.started, self.deadline = time.monotonic(), plan.deadline
        if self.quiet:
            return
        scored = f"{plan.folds}-fold CV" if plan.folds else "scored on its validation rows"
        packs = (
            f"asked {plan.batch} at a time, those of one shape trained side by side as one pack"
            if plan.batch > 1
            else "one at a time"
        )
        budget = "no time limit"
        if plan.time_limit is not None and plan.deadline is not None:
            left = max(0.0, plan.deadline - time.time())
            budget = f"budget {plan.time_limit:g} s in all, the refit included ({left:.0f} s left)"
        before = f" ({plan.done} finished before)" if plan.done else ""
        self.console.print(
            f"sweep: {plan.trials} trials{before}, each {scored}; {packs}; {budget} | {plan.folder}",
            markup=False,
        )
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as Bar

            self.bar = Bar(
                TextColumn("trials"),
                MofNCompleteColumn(),
                BarColumn(),
                TextColumn("{task.fields[best]}"),
                TextColumn("{task.fields[pack]}"),
                TimeElapsedColumn(),
                _remaining_column(self),
                console=self.console,
                transient=False,
            )
            self.bar.start()
            self.task = self.bar.add_task("sweep", total=plan.trials, completed=plan.done, best="", pack="")

    def pack(self, trials: int, models: int, epochs: int, processes: int = 1) -> None:
        if self.quiet:
            return
        what = f"{trials} trial{'s' if trials != 1 else ''}"
        what += f" ({models} models)" if models > trials else ""
        if self.bar is not None:
            self.bar.update(self.task, pack=f"| {what}: starting")
            return
        if processes > 1:  # models that do not pack, in processes of their own (training/apart.py)
            text = f"{what} start in {processes} processes side by side, up to {epochs} epochs"
        else:
            text = f"pack of {what} starts, up to {epochs} epochs"
        self.console.print(f"{text}{self._times()}", markup=False)
        self._printed_at = time.monotonic()

    def epoch(self, epoch: int, epochs: int, training: int, models: int) -> None:
        if self.quiet:
            return
        text = f"epoch {epoch}/{epochs}, {training} of {models} model{'s' if models != 1 else ''} training"
        if self.bar is not None:
            self.bar.update(self.task, pack=f"| pack {text}")
            return
        if time.monotonic() - self._printed_at >= 10:
            self.console.print(f"pack {text}{self._times()}", markup=False)
            self._printed_at = time.monotonic()

    def trial(self, done: int, total: int, row: dict[str, Any]) -> None:
        score, status = row.get("score_mean"), row.get("status")
        if score is not None and status not in ("diverged", "pruned", "cut"):
            self.best = score if self.best is None else min(self.best, score)
        if self.quiet:
            return
        shown = f"score {score:.6g}" if score is not None else ""
        if status in ("cut", "pruned", "diverged") or score is None:
            shown = f"{shown} ({status})".strip()
        line = f"trial {row.get('trial')} ({done}/{total}): {shown}, {row.get('seconds')} s"
        if self.bar is not None:
            self.console.print(line, markup=False)
            self.bar.update(self.task, completed=done, best=f"best {_fmt(self.best)}", pack="")
            return
        self.console.print(f"{line}{self._times()}", markup=False)
        self._printed_at = time.monotonic()

    def end(self, finished: int, cut: int) -> None:
        self.close()
        if not self.quiet:
            cuts = f", {cut} cut by sweep.time_limit" if cut else ""
            self.console.print(
                f"search ended: {finished} trial{'s' if finished != 1 else ''} finished{cuts} in "
                f"{time.monotonic() - self.started:.1f} s",
                markup=False,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def remaining(self) -> str:
        """Time left: to sweep.time_limit, or else as the trials so far pace it."""
        if self.deadline is not None:
            return f"{_clock(self.deadline - time.time())} left"
        if self.bar is not None and self.task is not None:
            left = self.bar.tasks[0].time_remaining
            if left is not None:
                return f"~{_clock(left)} left"
        return ""

    def _times(self) -> str:
        best = f" | best {_fmt(self.best)}" if self.best is not None else ""
        left = self.remaining()
        return f"{best} | {_clock(time.monotonic() - self.started)} elapsed" + (f", {left}" if left else "")


def _clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def _remaining_column(progress: SweepProgress) -> Any:
    """A rich column of the sweep's time left, read at each refresh."""
    from rich.progress import ProgressColumn

    class Remaining(ProgressColumn):
        def render(self, task: Any) -> Text:
            return Text(progress.remaining())

    return Remaining()


# What a run may write, in the order the summary line names them (loss.png only with output.plot).
WRITTEN = (
    "best.pt",
    "last.pt",
    "metrics.csv",
    "bags.csv",
    "summary.json",
    "config.yaml",
    "loss.png",
    "mlflow.json",
)


def print_run_summary(console: Console, summary: Summary) -> None:
    best, final = summary["best"], summary["final"]
    watched = best["watched"]
    bagged = summary.get("bags")
    if bagged is not None:
        epochs = bagged["best_epochs"]
        console.print(
            f"{summary['status']}: {bagged['count']} bags, {summary['epochs_run']} epochs at most, in "
            f"{summary['wall_seconds']:.2f} s; out-of-bag val_loss of their mean "
            f"{_fmt(bagged['oob_mse'])} over {bagged['oob_rows']} rows; bags' best epochs "
            f"{min(epochs)}-{max(epochs)}"
        )
    else:
        console.print(
            f"{summary['status']}: {summary['epochs_run']} epochs in {summary['wall_seconds']:.2f} s; "
            f"final train_loss {_fmt(final['train_loss'])}"
            + (f", val_loss {_fmt(final['val_loss'])}" if final["val_loss"] is not None else "")
            + f"; best {watched} {_fmt(best[watched])} at epoch {best['epoch']}"
        )
    out = _relative(summary["output_dir"])
    written = [name for name in WRITTEN if (Path(summary["output_dir"]) / name).is_file()]
    console.print(f"wrote {out}/: {', '.join(written)}")
    scored = summary["data"]["val"] or summary["data"]["train"]
    console.print(f"score it: mse-train eval {out}/best.pt {_relative(scored)}")


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.6g}"


def _relative(path: str) -> str:
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


def metric_cells(m: dict[str, Any]) -> list[str]:
    return [
        f"{m['mse']:.6g}",
        f"{m['rmse']:.6g}",
        f"{m['mae']:.6g}",
        "-" if m["r2"] is None else f"{m['r2']:.4f}",
    ]


def notes(console: Console, texts: list[str]) -> None:
    for text in texts:
        console.print(Text(f"note: {text}", style="yellow"))


def print_report(report: Report, title: str) -> None:
    """`eval`'s table: one row per target, and their average when there are several."""
    console = Output(highlight=False)
    notes(console, report.notes)
    table = Table(title=title)
    for column in ("target", "MSE", "RMSE", "MAE", "R²", "rows"):
        table.add_column(column, justify="left" if column == "target" else "right")
    rows = list(report.targets.items())
    n = str(report.overall["n"])
    for name, m in rows:
        table.add_row(name, *metric_cells(m), n)
    if len(rows) > 1:
        table.add_row("average", *metric_cells(report.overall), n, style="bold")
    if report.weight is not None:
        table.caption = f"weighted by column `{report.weight}` (data.weight)"
    console.print(table)
    if report.interval is not None:
        interval = report.interval
        per = interval.get("targets", {name: interval for name in report.targets})
        from mse_train.outputs.checkpoint import RESIDUALS_FROM  # loaded by then: the eval read one

        source = RESIDUALS_FROM.get(interval.get("residuals", "validation"), "validation rows")
        for name, got in per.items():
            console.print(
                f"{interval['level']:.4g} prediction intervals for {name}: coverage "
                f"{got['coverage']:.4f} of {n} rows, width {got['mean_width']:.6g} "
                f"(calibrated on {source})"
            )


def print_drift(findings: list[Finding], source: str) -> None:
    """Drift warnings on stderr: what in the new rows the model never saw in training."""
    if not findings:
        return
    console = stderr()
    console.print(
        Text(f"warning: {source} differs from the training rows in {len(findings)} way(s):", style="yellow")
    )
    for finding in findings:
        console.print(Text(f"  - {finding.message}", style="yellow"))


def print_validated(prepared: Prepared, title: str, run_folder: str) -> None:
    """`validate`'s table: every column the run would use, its role and kind."""
    console = Output(highlight=False)
    notes(console, prepared.notes)
    table = Table(title=title)
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
        f"{prepared.train.x.shape[1]} model inputs; the run folder would be {run_folder}"
    )


def print_cv(console: Console, result: dict[str, Any], title: str) -> None:
    """`cv`'s table: one row per fold, then mean and std."""
    table = Table(title=title)
    for column in ("fold", "MSE", "RMSE", "MAE", "R²", "rows"):
        table.add_column(column, justify="right")
    for i, row in enumerate(result["per_fold"], start=1):
        table.add_row(str(i), *metric_cells(row), str(row["n"]))
    metrics = ("mse", "rmse", "mae", "r2")
    table.add_row("mean", *(_fmt(result[m]["mean"]) for m in metrics), "", style="bold")
    table.add_row("std", *(_fmt(result[m]["std"]) for m in metrics), "")
    console.print(table)


def print_leaderboard(console: Console, rows: list[dict[str, Any]], keys: list[str], top: int = 10) -> None:
    """`sweep`'s table: the best trials first."""
    ranked = sorted(
        rows, key=lambda r: (r.get("score_mean") is None, r.get("score_mean") or 0.0, r.get("trial", 0))
    )
    table = Table(
        title=f"top {min(top, len(ranked))} of {len(rows)} trials (score: validation MSE)",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    short = [k.rsplit(".", 1)[-1] for k in keys]
    names = short if len(set(short)) == len(short) else keys  # `lr` rather than `optimizer.lr`
    for column in ("trial", *names, "score", "± std", "epochs"):  # seconds: leaderboard.csv
        table.add_column(column, justify="right")
    for row in ranked[:top]:
        score = row.get("score_mean")
        table.add_row(
            str(row["trial"]),
            *("-" if row.get(k) is None else _short(row[k]) for k in keys),
            _fmt(score) if score is not None else str(row.get("status")),
            "-" if row.get("score_std") is None else f"{row['score_std']:.3g}",
            str(row.get("epochs")),
        )
    console.print(table)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def print_ensemble(console: Console, chosen: dict[str, Any]) -> None:
    """`sweep`'s ensemble (sweep.ensemble): its trials and weights, its score beside the winner's."""
    mix = ", ".join(f"{m['trial']} ({m['count']}/{chosen['steps']})" for m in chosen["members"])
    best = chosen["best_trial"]
    seeds = chosen.get("seeds", 1)
    each = f", each refit with {seeds} seeds" if seeds > 1 else ""
    scored = "validation" if chosen.get("scored_on") == "validation" else "out-of-fold"
    console.print(
        f"ensemble: trial {mix}{each}; {scored} MSE {chosen['oof_mse']:.6g}, "
        f"best single trial ({best['trial']}) {best['oof_mse']:.6g}"
    )


def print_importance(result: Importance, title: str) -> None:
    """`explain`'s table: columns by how much shuffling them raises the MSE."""
    console = Output(highlight=False)
    table = Table(title=f"{title}: permutation importance, {result.repeats} repeats, {result.rows} rows")
    for column in ("column", "MSE increase", "± std", "share"):
        table.add_column(column, justify="left" if column == "column" else "right")
    total = sum(max(v["mean"], 0.0) for v in result.importance.values()) or 1.0
    for name, value in result.importance.items():
        table.add_row(
            name, f"{value['mean']:.6g}", f"{value['std']:.3g}", f"{max(value['mean'], 0.0) / total:.0%}"
        )
    console.print(table)
    console.print(f"baseline MSE {result.baseline_mse:.6g}")


def print_export(result: Exported) -> None:
    """`export`'s answer: where, the inputs, and how close the graph came to predict."""
    console = Output(highlight=False, soft_wrap=True, markup=False)  # "[batch, 1]" is text
    console.print(f"wrote {result.path}")
    console.print("inputs, each [batch, 1]: " + ", ".join(f"{k} ({v})" for k, v in result.inputs.items()))
    console.print(f"output: prediction, float32 [batch, {len(result.targets)}]: {', '.join(result.targets)}")
    checked = f"{result.probe_rows} rows built from the checkpoint"
    if result.check_rows:
        checked += f" and {result.check_rows} rows of --check"
    console.print(
        f"largest difference from `mse-train predict` over {checked}: "
        f"{result.max_difference:.3g} of the standard deviation of `{result.worst_target}`"
        + (f"; {result.nan_rows} refused row(s) are NaN in both" if result.nan_rows else "")
    )
