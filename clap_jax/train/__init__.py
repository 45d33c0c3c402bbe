"""Contrastive pretraining on a device mesh.

    python -m clap_jax.train --config configs/<name>.py[:args] --workdir DIR [--config.field=value ...]

  train.py           train_and_evaluate: the run top to bottom (checks, mesh, data, state, compiled step,
                     checkpoint load or weight init, evals, the loop with checkpoints and SIGTERM handling)
  config.py          every trainer field with its default (configs/*.py override it); config and data checks
  workdir.py         the run directory: write probe, the recorded model config a resume must match
  progress.py        logging setup, TensorBoard scalars, the per-step progress line (rates, ETA, MFU)
  data.py            the input iterator from config (real pipeline or random batches); SIGTERM-aware fetch
  state.py           model, optimizer, shape-first state init and shardings; pretrained weight initialisation
  step.py            forward + loss gradient (plain, 'cached' or 'independent' accumulation), the update step
  distributed.py     jax.distributed initialisation; preemption (SIGTERM) flag shared by all processes
  loss.py            symmetric contrastive loss: global, and row-sharded (shard_map, memory-lean)
  sharding.py        mesh from config (data / fsdp / tensor, multi-slice), (regex, tactic) parameter sharding rules
  optim.py           optax chain: Adam/AdamW, decay mask, clipping, schedules incl. reduce-on-plateau, tower
                     freezing and learning-rate multipliers
  checkpoint.py      orbax CheckpointManager: train state + data-iterator state per step; params-only restore
  flops.py           analytic FLOPs for MFU, peak FLOP/s per device kind
  compile.py         `python -m clap_jax.train.compile`: the step compiled ahead of time for a TPU slice (no TPU
                     needed): memory per chip against HBM, FLOPs, collectives, roofline step time and MFU
  random_batches.py  deterministic random batches for tests and benchmarks (config.data.kind = 'random')
"""
