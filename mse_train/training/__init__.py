"""Stage 4, training: the loop over epochs and batches, and what it needs, in three rooms.

The loop (for any K >= 1 models; a run is K = 1):
  loop.py        `Loop.run`: epochs of batches, one epoch method for any K, then
                 validation and score-keeping per model; `Models`, what it steps
  batches.py     the one batch source: one model's rows (the shuffled gather, slices,
                 stream blocks, rank slices) or K models' own rows side by side, padded
  keeping.py     what is kept between epochs: divergence, the best epoch, early stopping,
                 the unfinished epoch's losses (summed over ranks), the last finite epoch
  records.py     the plain records the loop and both axes share: `Member`, `Built`,
                 `Batch`, `StepResult`, `Settings` in; `Status`, `EpochRecord`, `Progress` out

The module axis (K = 1):
  module.py      one torch module with its torch optimizer: `Step`, one optimizer update
                 (loss + L1/L2 penalty, DDP shares), and cheap in-memory copies

The stack (K >= 1), an accelerator for many small models:
  stack/         K small models in batched tensors, stepped together, entered only through
                 its __init__ (which configs it holds, and which can share one)

Around them:
  optimizers.py  OPTIMIZERS and SCHEDULERS registries
  ridge.py       the linear model's closed-form solution (ridge regression) and its exact
                 leave-one-out residuals: init's L2 penalty, a linear run's intervals
  precision.py   `train.precision` on CUDA: TF32 switches, bf16 autocast of the forward pass
  footprint.py   the memory a config needs, checked before anything is allocated
  rng.py         seeding, and generator states as checkpoint-safe data
  signals.py     Ctrl-C / SIGTERM: stop after the batch, so the run can be saved; a
                 command's report of how it ended written whole, with its exit code, under SIGTERM
  distributed.py torchrun: ranks, the process group, DDP with summed gradients, collectives
  apart.py       trainings that do not stack (bags, folds) in forked processes side by side

Imports config/ and models/; knows nothing of files (outputs/ saves what it hands out).
"""
