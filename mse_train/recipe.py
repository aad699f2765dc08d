"""`mse-train run`: setup -> train -> save, reading top to bottom.

The config is already validated (config/). Here the data is prepared (data/), the model,
optimizer, scheduler and penalty are built (models/, training/), the loop runs, and every
output lands atomically in the run folder (outputs/). Progress goes to a Reporter;
nothing here prints.

Under torchrun every rank runs this same recipe on the same rows (training/distributed.py);
only rank 0 locks the run folder and writes to it, after every rank has read it.
"""

from __future__ import annotations

import contextlib
import shlex
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from mse_train import config, runtime
from mse_train.config import Config, schema
from mse_train.data import bags as data_bags
from mse_train.data import stream_fit
from mse_train.data.prepare import Prepared, Split
from mse_train.data.stream import Rows
from mse_train.data.stream_fit import Streamed
from mse_train.errors import ConfigError, MseTrainError, SaveError, TrainingDiverged, TrainingInterrupted
from mse_train.models import embeddings, init, networks
from mse_train.outputs import (
    bags,
    checkpoint,
    fsio,
    metrics,
    mlflow_log,
    resume,
    run_folder,
    summary,
    tensorboard_log,
)
from mse_train.outputs.drawer import Drawer
from mse_train.outputs.summary import Summary
from mse_train.training import apart, distributed, footprint, module, optimizers, precision, rng, signals
from mse_train.training.distributed import World
from mse_train.training.loop import WORLD_SIZE, Loop, Models
from mse_train.training.module import build_penalty
from mse_train.training.records import Built, EpochRecord, Member, Settings, Status
from mse_train.training.stack import Stack, why_alone


@dataclass(frozen=True)
class RunInfo:
    """What a run is about to do, for the reporter's first line."""

    out: str
    device: str
    rows: int
    val_rows: int
    inputs: int
    targets: list[str]
    epochs: int
    from_epoch: int  # completed epochs before this call (non-zero when resuming)
    threads: int  # torch's intra-op threads (runtime.use_threads)


class Reporter(Protocol):
    """Receives progress; the CLI shows it."""

    def start(self, info: RunInfo) -> None: ...
    def note(self, text: str) -> None: ...
    def epoch(self, record: EpochRecord, total: int) -> None: ...
    def batch(self, done: int, total: int) -> None: ...
    def finish(self) -> None: ...


class Silent:
    """A Reporter that shows nothing."""

    def start(self, info: RunInfo) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def epoch(self, record: EpochRecord, total: int) -> None:
        pass

    def batch(self, done: int, total: int) -> None:
        pass

    def finish(self) -> None:
        pass


@dataclass
class Options:
    resume: bool = False
    force: bool = False  # resume even though config (beyond epochs) or data changed
    overwrite: bool = False  # replace a previous run in the same folder
    resume_command: str = "mse-train run CONFIG --resume"  # shown when interrupted
    overwrite_command: str = "mse-train run CONFIG --overwrite"  # shown when starting again is the fix
    mlflow_tags: dict[str, str] = field(default_factory=dict)  # e.g. a sweep's refit: its parent run
    pack: bool = True  # --no-pack: train as a torch module even where a stack of one could
    drawer: Drawer = field(default_factory=Drawer)  # draws loss.png (drawer.beside: in a process beside)


_DIVERGENCE_FIX = (
    "lower optimizer.lr, set data.standardize: true, or add gradient-friendly regularization; "
    "with loss.reduction: sum, the lr must shrink as rows grow"
)


def run(cfg: Config, options: Options, reporter: Reporter) -> Summary:
    """Train as configured; returns the summary written to summary.json.

    The run folder is locked for the whole call, so two runs never mix their files.
    Under torchrun (WORLD_SIZE > 1) the config is first checked for what several processes
    cannot do, and each rank joins the process group, left again at the end.
    """
    world = distributed.from_environment()
    if world is not None:
        distributed.check_config(cfg, world)
    check_bags(cfg, options.resume)  # before the run folder is made: a refusal writes nothing
    out = Path(str(cfg.output.dir))
    run_folder.check_not_a_system_folder(out)
    if cfg.output.tensorboard:
        tensorboard_log.check_available()
    # Before the run folder is made: a missing extra or an unreachable store writes nothing.
    # Under torchrun only rank 0 logs, as only rank 0 writes.
    main = world is None or world.main
    tracked = _Tracked(
        mlflow_log.connect(str(cfg.output.mlflow_experiment)) if cfg.output.mlflow and main else None
    )
    device = None  # one process: resolved in _train, after the run folder is checked
    if world is not None:  # before joining the group: a bad device is a plain exit 2 on every rank
        device = distributed.device_for(runtime.resolve_device(cfg.train.device), world)
    # Under torchrun, signals are held from here to the end: one forwarded late must not
    # abort a rank while it leaves the process group (see signals.on_signals).
    held = signals.on_signals(second_stops=False) if world is not None else contextlib.nullcontext()
    with held, _hold(out, world), _process_group(world, device):
        try:
            return _run(cfg, options, reporter, out, device, world, tracked)
        except BaseException as exc:
            if tracked.run is not None:  # ended by divergence, Ctrl-C or an error: not left RUNNING
                tracked.run.abort(exc)
            if isinstance(exc, SaveError):
                if (out / "last.pt").exists():
                    exc.problems.append(f"to continue from the last checkpoint: {options.resume_command}")
                else:
                    exc.problems.append(f"to start again: {options.overwrite_command}")
            if world is not None and distributed.peer_lost(exc):
                raise distributed.lost_peer(exc, _what_is_kept(out, options)) from None
            raise


def _what_is_kept(out: Path, options: Options) -> list[str]:
    """After another torchrun process died: what last.pt holds, and how to go on from it.

    Rank 0 replaces last.pt atomically, so the file is whole even when a process died
    while it was being written (rank 0 itself: then it is the checkpoint before).
    """
    path = out / "last.pt"
    try:
        epoch = checkpoint.load(path)["epoch"]
    except (MseTrainError, OSError, KeyError, TypeError):
        if path.exists():  # another machine's folder, or unreadable here: say what we can
            return [f"continue from rank 0's {path} with: {options.resume_command}"]
        return [f"no checkpoint was written yet; start again with: {options.overwrite_command}"]
    return [
        f"{path} is intact: it holds the training state of epoch {epoch}",
        f"continue with: {options.resume_command}",
    ]


@dataclass
class _Tracked:
    """The MLflow store (None: output.mlflow is off, or not rank 0) and, once training starts, its run."""

    store: mlflow_log.Store | None
    run: mlflow_log.Run | None = None


@contextlib.contextmanager
def _hold(out: Path, world: World | None) -> Iterator[None]:
    """The writer (the one process, or rank 0) makes and locks the run folder; others touch nothing."""
    if world is not None and not world.main:
        yield
        return
    fsio.ensure_writable_dir(out)
    with run_folder.lock(out):
        yield


@contextlib.contextmanager
def _process_group(world: World | None, device: torch.device | None) -> Iterator[None]:
    if world is None or device is None:
        yield
        return
    with distributed.process_group(device):
        yield


def _run(
    cfg: Config,
    options: Options,
    reporter: Reporter,
    out: Path,
    device: torch.device | None,
    world: World | None,
    tracked: _Tracked,
) -> Summary:
    status, result, history, divergence, restored = _train(
        cfg, options, reporter, out, device, world, tracked
    )
    # The tables, model and optimizer are gone by now, so matplotlib does not add to the peak.
    runtime.release_freed_memory()
    writes = world is None or world.main
    if writes and cfg.output.plot and history and not restored:
        units = metrics.loss_units(bool(cfg.data.standardize_target))
        label = metrics.loss_label(cfg.loss.reduction, units)
        best_epoch = result["best"]["epoch"] or 0
        try:
            options.drawer.draw("write_loss_plot", out / "loss.png", history, best_epoch, label)
        except KeyboardInterrupt:
            if status not in (Status.COMPLETED, Status.EARLY_STOPPED):
                raise
            raise TrainingInterrupted(
                f"interrupted while loss.png was drawn; the run itself is complete in {out}",
                [f"draw loss.png again: mse-train plot {shlex.quote(str(out))}"],
            ) from None
    if tracked.run is not None and not restored and status in (Status.COMPLETED, Status.EARLY_STOPPED):
        from mse_train.use import mlflow_model  # imports mlflow.pyfunc: only when logging

        best = out / "best.pt"
        tracked.run.model(lambda folder: mlflow_model.save(best, folder), mlflow_model.MODEL_FOLDER)
    if tracked.run is not None:  # a restored previous run's files are not this run's artifacts
        mlflow_log.end_training(tracked.run, status, result, None if restored else out)
    if status is Status.DIVERGED and restored:
        raise TrainingDiverged(
            f"training diverged at epoch {len(history) + 1}: {divergence}",
            [
                f"--overwrite put the previous run back in {out}: a run that diverges replaces nothing",
                _DIVERGENCE_FIX,
            ],
        )
    if status is Status.INTERRUPTED:
        raise TrainingInterrupted(
            f"interrupted at epoch {len(history) + 1}; {out / 'last.pt'} holds the state",
            [f"continue with: {options.resume_command}"],
        )
    if status is Status.DIVERGED:
        raise TrainingDiverged(
            f"training diverged at epoch {len(history) + 1}: {divergence}",
            [
                (
                    f"last.pt keeps the state at the end of epoch {len(history)}, the last before it "
                    f"diverged; best.pt the best epoch's ({result['best']['epoch']})"
                    if history
                    else "no epoch finished, so there is no best.pt; last.pt holds the state before training"
                ),
                _DIVERGENCE_FIX,
            ],
        )
    return result


def _train(
    cfg: Config,
    options: Options,
    reporter: Reporter,
    out: Path,
    device: torch.device | None,
    world: World | None,
    tracked: _Tracked,
) -> tuple[Status, Summary, list[dict[str, float | None]], str, bool]:
    """Prepare, build, train and save.

    Returns the status, the summary, the history, why it diverged (if it did), and whether
    an `--overwrite`n previous run was put back because this one diverged.
    """
    started = time.perf_counter()
    resumed = run_folder.check(out, options.resume, options.overwrite)
    if device is None:
        device = runtime.resolve_device(cfg.train.device)
    if cfg.train.bags > 1:
        return _train_bags(cfg, options, reporter, out, device, tracked, started)
    prepared = stream_fit.prepare_run(cfg.data, cfg.targets, cfg.seed, cfg.train.batch_size)
    for text in prepared.notes:
        reporter.note(text)
    resume_from = resume.load(out, cfg, prepared.digests, options.force) if resumed else None
    if resume_from is not None:
        _note_world_change(resume_from, world, reporter)

    loop = build_loop(cfg, prepared, device, world, stack=options.pack)
    if resume_from is not None:
        resume.restore(loop, resume_from, cfg, options.force)
    if world is not None:
        distributed.barrier()  # every rank has read the run folder before rank 0 changes it

    writes = world is None or world.main
    replacement = run_folder.Replacement(out)
    if writes and options.overwrite and not resumed:
        replacement.move_aside()
    try:
        if tracked.store is not None:
            tracked.run = mlflow_log.start_training(
                tracked.store, out, cfg, resumed, loop.history, options.mlflow_tags, reporter.note
            )
        status, result = _train_and_save(
            cfg, reporter, out, prepared, loop, device, started, tracked.run, writes
        )
    except BaseException:
        replacement.undo()
        raise
    restored = False
    if not writes:
        pass
    elif status in (Status.COMPLETED, Status.EARLY_STOPPED):
        replacement.done()
    elif status is Status.DIVERGED:
        restored = replacement.undo()
    return status, result, loop.history, loop.divergence, restored


def _note_world_change(ckpt: dict[str, Any], world: World | None, reporter: Reporter) -> None:
    """A resume with another number of processes: fine (the batch is global), but said."""
    before = (ckpt.get(checkpoint.K_TRAINING) or {}).get(WORLD_SIZE, 1)
    now = world.size if world is not None else 1
    if before != now:
        reporter.note(
            f"the run was trained in {before} process(es) and continues in {now}: the batch is "
            "global, so the updates are the same up to float rounding (dropout masks differ)"
        )


def _train_and_save(
    cfg: Config,
    reporter: Reporter,
    out: Path,
    prepared: Prepared | Streamed,
    loop: Loop,
    device: torch.device,
    started: float,
    tracked: mlflow_log.Run | None,
    writes: bool = True,
) -> tuple[Status, Summary]:
    """Run the loop, saving as configured, then the final checkpoints and summary.

    With `writes` False (a rank other than 0) the loop runs the same, and nothing is written.
    """
    if writes:
        fsio.remove_stale_temporaries(out)
        fsio.write_text(out / "config.yaml", config.to_yaml(cfg))
    saver = run_folder.Saver(out, cfg, prepared)
    reporter.start(
        RunInfo(
            out=str(out),
            device=str(device),
            rows=len(prepared.train),
            val_rows=len(prepared.val) if prepared.val is not None else 0,
            inputs=prepared.train.inputs,
            targets=cfg.targets,
            epochs=cfg.train.epochs,
            from_epoch=loop.progress.epoch,
            threads=torch.get_num_threads(),
        )
    )

    scalars = tensorboard_log.Scalars(out) if cfg.output.tensorboard and writes else None

    def on_epoch(record: EpochRecord) -> None:
        reporter.epoch(record, cfg.train.epochs)
        if scalars is not None:
            scalars.epoch(record.row())
        if tracked is not None:
            tracked.epoch(record.row())
        every = cfg.output.checkpoint_every
        if not writes:
            return
        if every and record.epoch % every == 0:
            saver.checkpoint(loop)
        else:
            saver.metrics.maybe_write(loop.history)

    train_started = time.perf_counter()
    # The final checkpoint and summary.json are written inside the block too: a Ctrl-C or
    # SIGTERM there (training has ended) only asks to stop, and they are written whole.
    with signals.on_signals(second_stops=loop.world is None) as stop:
        should_stop = stop.requested
        if loop.world is not None:  # a signal on any rank stops every rank at the same batch

            def should_stop() -> bool:
                return distributed.any_rank(stop.requested(), device)

        status = loop.run(on_epoch, should_stop=should_stop, on_batch=reporter.batch)
        train_seconds = time.perf_counter() - train_started
        reporter.finish()
        if scalars is not None:
            scalars.close()

        if status is Status.DIVERGED:
            loop.rollback()
        if writes:
            saver.checkpoint(loop, final=True)
        result = summary.build(
            cfg,
            status,
            loop.history,
            loop.progress.best_epoch,
            time.perf_counter() - started,
            {"train": len(prepared.train), "val": len(prepared.val) if prepared.val is not None else 0},
            prepared.pre.input_names,
            device,
            prepared.notes,
            {"ingest_seconds": prepared.ingest_seconds, "train_seconds": train_seconds},
        )
        if writes:
            metrics.write_json(out / "summary.json", dict(result))
    return status, result


# --------------------------------------------------------------- a bagged run
def check_bags(cfg: Config, resume: bool = False) -> None:
    """What `train.bags` > 1 needs: every problem in one ConfigError."""
    if cfg.train.bags == 1:
        return
    problems = []
    if cfg.data.val is not None:
        problems.append(
            "data.val names a validation file, and each bag draws its own validation rows from "
            "data.train: remove data.val (its rows may join data.train), or set train.bags: 1"
        )
    elif cfg.data.val_fraction <= 0:
        problems.append(
            "data.val_fraction is 0, and each bag stops early on validation rows of its own: "
            "set data.val_fraction (e.g. 0.2), or train.bags: 1"
        )
    if resume:
        problems.append(
            "--resume: a bagged run writes no last.pt to continue from; run again without "
            "--resume (with --overwrite to replace the folder's run)"
        )
    if problems:
        raise ConfigError(f"train.bags is {cfg.train.bags}, and this run cannot bag", problems)


def _train_bags(
    cfg: Config,
    options: Options,
    reporter: Reporter,
    out: Path,
    device: torch.device,
    tracked: _Tracked,
    started: float,
) -> tuple[Status, Summary, list[dict[str, float | None]], str, bool]:
    """`train.bags` models, each stopped on its own validation rows (data/bags.py), side by
    side in one stack where the config stacks (one at a time otherwise); best.pt holds their
    mean (outputs/bags.py). Nothing is written until every bag has trained: a bagged run that
    is interrupted or diverges leaves the folder as it was (an `--overwrite`n run put back)."""
    k = cfg.train.bags
    bagged = data_bags.prepare_bags(cfg.data, cfg.targets, cfg.seed, k)
    shared = bagged.shared
    for text in shared.notes:
        reporter.note(text)
    jobs = [(seeded(cfg, j), bagged.bags[j]) for j in range(k)]
    _check_fits(cfg, shared, device)
    together = options.pack and why_alone(cfg) is None
    loops: list[Loop] = [stack_loop(jobs, device)] if together else []
    starts: list[rng.Torch] = []  # each module's draws (dropout) from where its build left them
    for c, p in [] if together else jobs:
        loops.append(build_loop(c, p, device, stack=options.pack))
        starts.append(rng.torch_state(device))
    replacement = run_folder.Replacement(out)
    if options.overwrite:
        replacement.move_aside()
    try:
        if tracked.store is not None:
            tracked.run = mlflow_log.start_training(
                tracked.store, out, cfg, False, [], options.mlflow_tags, reporter.note
            )
        assert shared.val is not None
        reporter.start(
            RunInfo(
                str(out),
                str(device),
                len(shared.train),
                len(shared.val),
                shared.train.inputs,
                cfg.targets,
                cfg.train.epochs,
                0,
                torch.get_num_threads(),
            )
        )
        scalars = tensorboard_log.Scalars(out) if cfg.output.tensorboard else None
        processes = apart.workers(cfg.train.processes, len(loops), device)  # once its threads run
        how = (
            "side by side in one stack"
            if together
            else f"in {processes} processes side by side"
            if processes > 1
            else "one after another"
        )
        reporter.note(
            f"{k} bags (seeds {cfg.seed}..{cfg.seed + k - 1}), each trains on {len(shared.train)} rows "
            f"and stops on its own {len(shared.val)}, {how}; best.pt predicts their mean"
        )
        epochs = _MeanEpochs(reporter, cfg.train.epochs, scalars, tracked.run)
        train_started = time.perf_counter()
        trained: list[bags.Bag] = []

        def announce(j: int) -> None:  # bag j's epochs follow (each bag counts from epoch 1)
            reporter.note(f"bag {j} (seed {cfg.seed + j}), {j + 1} of {k}")

        with signals.on_signals() as stop:
            if processes > 1:

                def work(j: int) -> apart.Outcome:
                    return apart.train_loop(loops[j], starts[j])

                shown = _InTurn(epochs, k, announce)  # as one after another shows them, as they come
                outcomes = apart.map(work, len(loops), processes, stop.requested, shown.heard)
                with contextlib.closing(outcomes):
                    for loop, outcome in zip(loops, outcomes, strict=False):  # fewer when stopped
                        shown.ended()  # every record it told was heard before its outcome
                        trained += _bags_of(loop, len(trained), outcome.models)
            else:
                for j, loop in enumerate(loops):
                    if starts:
                        announce(j)
                        rng.set_torch_state(starts[j], device)
                    status = loop.run(epochs.add, should_stop=stop.requested, on_batch=reporter.batch)
                    epochs.flush()
                    if status is Status.INTERRUPTED:
                        break
                    trained += _bags_of(loop, len(trained))
            if len(trained) < k:
                raise TrainingInterrupted(
                    f"interrupted while bag {len(trained) + 1} of {k} trained; a bagged run keeps "
                    "no last.pt, so nothing was written",
                    [f"start again: {options.overwrite_command}"],
                )
        train_seconds = time.perf_counter() - train_started
        reporter.finish()
        if scalars is not None:
            scalars.close()
        oob = bags.out_of_bag(trained, bagged)
        fsio.remove_stale_temporaries(out)
        fsio.write_text(out / "config.yaml", config.to_yaml(cfg))
        bags.write(out, cfg, bagged, trained, oob)
        history = bags.mean_history([b.history for b in trained])
        everything = all(b.status == Status.COMPLETED.value for b in trained)
        status = Status.COMPLETED if everything else Status.EARLY_STOPPED
        result = summary.build(
            cfg,
            status,
            history,
            0,
            time.perf_counter() - started,
            {"train": len(shared.train), "val": len(shared.val)},
            shared.pre.input_names,
            device,
            shared.notes,
            {"ingest_seconds": shared.ingest_seconds, "train_seconds": train_seconds},
        )
        result["best"] = {
            "epoch": None,
            "train_loss": None,
            "val_loss": oob.mse,
            "train_end_loss": None,
            "watched": "val_loss",
        }
        result["bags"] = {
            "count": k,
            "oob_mse": oob.mse,
            "oob_rows": oob.rows,
            "best_epochs": [b.best_epoch for b in trained],
        }
        metrics.write_json(out / "summary.json", dict(result))
    except BaseException as exc:
        if not replacement.undo():
            replacement.discard()  # nothing half-written: a bagged run keeps nothing unfinished
        if isinstance(exc, KeyboardInterrupt):  # a second Ctrl-C, or one while the files were written
            raise TrainingInterrupted(
                "interrupted; a bagged run keeps no last.pt, so nothing was written",
                [f"start again: {options.overwrite_command}"],
            ) from None
        raise
    replacement.done()
    return status, result, history, "", False


def _bags_of(loop: Loop, first: int, ended: list[apart.Trained] | None = None) -> list[bags.Bag]:
    """The bags `loop` trained (bag numbers from `first`), each at its best epoch; a bag
    that diverged fails the run. `ended`: how its models ended where the loop trained in
    another process (training/apart.py), their best weights loaded into this one's modules."""
    out = []
    for i in range(loop.k):
        model = ended[i] if ended is not None else apart.trained(loop, i)
        if model.status is Status.DIVERGED:
            raise TrainingDiverged(
                f"bag {first + i} of the bagged run diverged at epoch {model.epochs + 1}: "
                f"{model.reason}; nothing was written",
                [_DIVERGENCE_FIX],
            )
        if model.weights is not None:
            assert isinstance(loop.models, module.Module)  # only modules train apart
            loop.models.model.load_state_dict(model.weights)
            best = loop.models.model
        else:
            best = loop.models.best_model(i)
        out.append(
            bags.Bag(
                best,
                loop.members[i].seed,
                model.epochs,
                model.best_epoch,
                model.best_loss,
                model.status.value,
                model.history,
            )
        )
    return out


class _MeanEpochs:
    """The bags' epoch records, shown and logged as one: each epoch's mean over the bags
    that trained it (outputs/bags.mean_history), once the next epoch begins or the loop ends."""

    def __init__(
        self,
        reporter: Reporter,
        total: int,
        scalars: tensorboard_log.Scalars | None,
        tracked: mlflow_log.Run | None,
    ) -> None:
        self.reporter, self.total, self.scalars, self.tracked = reporter, total, scalars, tracked
        self.pending: list[EpochRecord] = []

    def add(self, record: EpochRecord) -> None:
        if self.pending and self.pending[0].epoch != record.epoch:
            self.flush()
        self.pending.append(record)

    def flush(self) -> None:
        if not self.pending:
            return
        (row,) = bags.mean_history([[r.row()] for r in self.pending])
        row["epoch"] = self.pending[0].epoch
        first = self.pending[0]
        mean = EpochRecord(
            epoch=first.epoch,
            train_loss=row["train_loss"],
            val_loss=row["val_loss"],
            train_end_loss=None,
            lr=row["lr"],
            penalty=row.get("penalty"),
            seconds=row["seconds"],
            per_target={key: row[key] for key in first.per_target},
        )
        self.pending = []
        self.reporter.epoch(mean, self.total)
        if self.scalars is not None:
            self.scalars.epoch(mean.row())
        if self.tracked is not None:
            self.tracked.epoch(mean.row())


class _InTurn:
    """The epoch records of bags training in processes side by side, shown as one after
    another shows them: bag 0's as they end, bag 1's (held until then) once bag 0 has ended, ..."""

    def __init__(self, epochs: _MeanEpochs, bags: int, announce: Callable[[int], None]) -> None:
        self.epochs, self.bags, self.announce = epochs, bags, announce
        self.turn = 0  # the bag whose records are shown as they come
        self.held: dict[int, list[EpochRecord]] = {}
        announce(0)

    def heard(self, bag: int, record: EpochRecord) -> None:
        if bag == self.turn:
            self.epochs.add(record)
        else:
            self.held.setdefault(bag, []).append(record)

    def ended(self) -> None:
        """The bag in turn has ended (all its records heard): the next bag's so far follow."""
        self.epochs.flush()
        self.turn += 1
        if self.turn < self.bags:
            self.announce(self.turn)
        for record in self.held.pop(self.turn, []):
            self.heard(self.turn, record)


# --------------------------------------------------------------------- setup
def build_loop(
    cfg: Config,
    prepared: Prepared | Streamed,
    device: torch.device,
    world: World | None = None,
    stack: bool = True,
) -> Loop:
    """The loop for one model: checked to fit in memory, built (`build_one`), and held as a
    stack of one when its config can stack (training/stack/) and `stack` allows, else as
    a module with its torch optimizer.
    """
    _check_fits(cfg, prepared, device)
    built = build_one(cfg, prepared, device)
    models: Models
    if stack and world is None and why_alone(cfg) is None:  # a stack of one: see training/stack/
        models = Stack([built], device)
    else:
        penalty = build_penalty(built.model, cfg.regularization)
        models = module.Module(
            built.model,
            built.optimizer,
            built.scheduler,
            penalty,
            cfg.loss.reduction,
            world,
            cfg.train.precision,
        )
    return Loop(models, [member(cfg, prepared, device)], world)


def _check_fits(cfg: Config, prepared: Prepared | Streamed, device: torch.device) -> None:
    """One model of `cfg` on `prepared`'s rows fits the device's memory, and its batches suit it."""
    n_inputs, n_outputs = prepared.train.inputs, prepared.train.outputs
    batch_rows = min(cfg.train.batch_size or len(prepared.train), len(prepared.train))
    needs = footprint.estimate(
        cfg, n_inputs, n_outputs, batch_rows, len(prepared.pre.numeric), model_categories(cfg, prepared)
    )
    footprint.check_fits(needs, runtime.available_memory(device), device)
    _check_batch_norm(cfg, len(prepared.train), batch_rows)


def seeded(cfg: Config, offset: int) -> Config:
    """`cfg` with its seed moved by `offset` (0: itself): other initial weights and batches."""
    if offset == 0:
        return cfg
    cfg = cfg.model_copy(deep=True)
    cfg.seed += offset
    return cfg


def build_stack_loop(cfgs: list[Config], prepared: Prepared, device: torch.device) -> Loop:
    """Configs of one pack key trained side by side on the same rows: one stack, one loop."""
    return stack_loop([(cfg, prepared) for cfg in cfgs], device)


def stack_loop(jobs: list[tuple[Config, Prepared]], device: torch.device) -> Loop:
    """Configs of one pack key trained side by side, each on its own rows: one stack, one loop."""
    stack = Stack([build_one(cfg, prepared, device) for cfg, prepared in jobs], device)
    return Loop(stack, [member(cfg, prepared, device) for cfg, prepared in jobs])


def member(cfg: Config, prepared: Prepared | Streamed, device: torch.device) -> Member:
    """The rows and loop settings of one model trained on `prepared`."""
    train = _tensors(prepared.train, device)
    val = _tensors(prepared.val, device) if prepared.val is not None else None
    return Member(
        train,
        val,
        _settings(cfg, prepared),
        cfg.seed,
        _weights(prepared.train, device),
        _weights(prepared.val, device) if prepared.val is not None else None,
    )


def build_one(cfg: Config, prepared: Prepared | Streamed, device: torch.device) -> Built:
    """Seed, then build the model (initialised), its optimizer and its scheduler.

    Under torchrun every rank seeds alike, so all start from the same weights.
    `train.precision` is checked against the device, and its TF32 switches set, here.
    """
    precision.prepare(cfg.train.precision, device)
    rng.seed_everything(cfg.seed)
    model = _setup_model(cfg, prepared, device)
    optimizer = optimizers.build_optimizer(list(model.parameters()), cfg.optimizer)
    return Built(model, optimizer, optimizers.build_scheduler(optimizer, cfg.scheduler), cfg)


def _check_batch_norm(cfg: Config, rows: int, batch_rows: int) -> None:
    """BatchNorm cannot normalise a batch of one row: refuse a split that would make one."""
    model = cfg.model
    if not isinstance(model, schema.ResNetModel) or model.norm != "batch_norm" or rows % batch_rows != 1:
        return
    raise ConfigError(
        f"model.norm batch_norm cannot train on a batch of one row, and {rows} training rows in "
        f"batches of {batch_rows} leave one row at the end",
        ["choose another `train.batch_size`, or set `model.norm: layer_norm`"],
    )


def model_categories(cfg: Config, prepared: Prepared | Streamed) -> dict[str, list[int]]:
    """`networks.build`'s categorical embedding sizes (empty under onehot)."""
    return networks.category_sizes(prepared.pre.category_counts, cfg.data.category_embedding_size)


def _setup_model(cfg: Config, prepared: Prepared | Streamed, device: torch.device) -> torch.nn.Module:
    n_numeric = len(prepared.pre.numeric)
    model = networks.build(
        cfg.model,
        prepared.train.inputs,
        prepared.train.outputs,
        n_numeric,
        **model_categories(cfg, prepared),
    )
    init.apply(model, cfg.init)  # categorical embeddings keep their own init (models/categorical.py)
    # Piecewise-linear bins from the training split's rows only (never validation rows).
    if isinstance(prepared.train, Rows):
        if getattr(cfg.model, "numeric_embedding", "none") == "piecewise_linear":
            raise ConfigError(
                "model.numeric_embedding piecewise_linear needs its bins from the training rows in "
                "memory, and this table is streamed (larger than data.memory_budget)",
                ["raise data.memory_budget, or choose model.numeric_embedding: periodic"],
            )
    else:
        embeddings.fit(model, prepared.train.x[:, :n_numeric])
    return model.to(device)


def _tensors(split: Split | Rows, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | Rows:
    if isinstance(split, Rows):  # streamed: the loop reads it a block at a time
        return split
    return torch.from_numpy(split.x).to(device), torch.from_numpy(split.y).to(device)


def _weights(split: Split | Rows, device: torch.device) -> torch.Tensor | None:
    """The rows' sample weights (`data.weight`) on the device, float32; None without them."""
    if isinstance(split, Rows) or split.w is None:
        return None
    return torch.from_numpy(np.ascontiguousarray(split.w, dtype=np.float32)).to(device)


def _settings(cfg: Config, prepared: Prepared | Streamed) -> Settings:
    stop = cfg.train.early_stopping
    return Settings(
        epochs=cfg.train.epochs,
        batch_size=cfg.train.batch_size,
        shuffle=cfg.train.shuffle,
        reduction=cfg.loss.reduction,
        target_names=cfg.targets,
        target_std=[t.std for t in prepared.pre.targets],
        patience=stop.patience if stop else None,
        min_delta=stop.min_delta if stop else 0.0,
        penalized=cfg.regularization.l1 > 0 or cfg.regularization.l2 > 0,
    )
