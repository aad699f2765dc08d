"""Stage 4, training: the loop over epochs and batches, and what it needs.

  loop.py        `Loop.run`: epochs of batches, then validation and score-keeping
  step.py        `Step`: one optimizer update (loss + L1/L2 penalty); the loop's seam
  records.py     `Settings` in; `Status`, `EpochRecord`, `Progress` out
  tracking.py    the end-of-epoch rules: divergence, the best epoch, early stopping
  rollback.py    the last finite epoch, to return to after a divergence
  snapshot.py    cheap in-memory copies of weights and optimizer state
  optimizers.py  OPTIMIZERS and SCHEDULERS registries
  footprint.py   the memory a config needs, checked before anything is allocated
  packed.py      many small models trained side by side as one stack (cv, sweeps)
  rng.py         seeding, and generator states as checkpoint-safe data
  signals.py     Ctrl-C / SIGTERM: stop after the batch, so the run can be saved
  distributed.py torchrun: ranks, the process group, DDP with summed gradients, collectives

Imports config/ and models/; knows nothing of files (outputs/ saves what it hands out).
"""
