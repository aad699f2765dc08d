"""Stage 4, training: the loop over epochs and batches, and what it needs.

  loop.py        `Loop.run`: the one loop, for K >= 1 models: epochs of batches, then
                 validation and score-keeping per model (a run is K = 1)
  axis.py        `Models`: what the loop steps, K >= 1 models at a time
  solo.py        the model axis as one module with its torch optimizer (K = 1)
  stack.py       ... as K small models in batched tensors, stepped together
  stack_embeddings.py  the numeric embeddings with a model axis, backward by hand
  stack_optimizer.py   SGD, Adam and AdamW for K models at once, as torch steps them
  batches.py     one model's rows: the shuffled gather, slices, stream blocks, rank slices
  padded.py      K models' own rows side by side, shuffled and batched per model
  partial.py     the unfinished epoch's per-batch losses (kept on interrupt, summed over ranks)
  step.py        `Step`: one optimizer update (loss + L1/L2 penalty) of a module
  precision.py   `train.precision` on CUDA: TF32 switches, bf16 autocast of the forward pass
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
