"""Stage 4, training: the loop over epochs and batches, and what it needs.

  loop.py        `Loop.run`: the one loop, for K >= 1 models: epochs of batches, then
                 validation and score-keeping per model (a run is K = 1)
  solo.py        the loop's model axis as one module with its torch optimizer (K = 1)
  stack.py       ... as K small models in batched tensors, stepped together
  padded.py      K models' own rows side by side, shuffled and batched per model
  step.py        `Step`: one optimizer update (loss + L1/L2 penalty) of a module
  records.py     `Settings` in; `Status`, `EpochRecord`, `Progress` out
  tracking.py    the end-of-epoch rules: divergence, the best epoch, early stopping
  rollback.py    the last finite epoch, to return to after a divergence
  snapshot.py    cheap in-memory copies of weights and optimizer state
  optimizers.py  OPTIMIZERS and SCHEDULERS registries
  footprint.py   the memory a config needs, checked before anything is allocated
  packed.py      which configs train as a stack, and which can share one (cv, sweeps)
  rng.py         seeding, and generator states as checkpoint-safe data
  signals.py     Ctrl-C / SIGTERM: stop after the batch, so the run can be saved
  distributed.py torchrun: ranks, the process group, DDP with summed gradients, collectives

Imports config/ and models/; knows nothing of files (outputs/ saves what it hands out).
"""
