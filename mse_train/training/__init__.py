"""Stage 4, training: the loop over epochs and batches, and what it needs.

  loop.py        `Loop.run`: the one loop, for K >= 1 models: epochs of batches, then
                 validation and score-keeping per model (a run is K = 1)
  axis.py        `Models`: what the loop steps, K >= 1 models at a time
  module.py      the model axis as one module with its torch optimizer (K = 1): `Step`,
                 one optimizer update (loss + L1/L2 penalty), and in-memory copies
  stack/         ... as K small models in batched tensors, stepped together: an
                 accelerator entered only through its __init__ (which configs it holds)
  batches.py     one model's rows: the shuffled gather, slices, stream blocks, rank slices
  padded.py      K models' own rows side by side, shuffled and batched per model
  partial.py     the unfinished epoch's per-batch losses (kept on interrupt, summed over ranks)
  precision.py   `train.precision` on CUDA: TF32 switches, bf16 autocast of the forward pass
  records.py     the plain records the loop and both axes share: `Member`, `Built`,
                 `Batch`, `StepResult`, `Settings` in; `Status`, `EpochRecord`, `Progress` out
  tracking.py    the end-of-epoch rules: divergence, the best epoch, early stopping
  rollback.py    the last finite epoch, to return to after a divergence
  optimizers.py  OPTIMIZERS and SCHEDULERS registries
  footprint.py   the memory a config needs, checked before anything is allocated
  rng.py         seeding, and generator states as checkpoint-safe data
  signals.py     Ctrl-C / SIGTERM: stop after the batch, so the run can be saved
  distributed.py torchrun: ranks, the process group, DDP with summed gradients, collectives

Imports config/ and models/; knows nothing of files (outputs/ saves what it hands out).
"""
