"""Contrastive pretraining on a device mesh.

    python -m clap_jax.train --config configs/<name>.py[:args] --workdir DIR [--config.field=value ...]

  train.py       the trainer, top to bottom: config checks, logging, distributed init, mesh, input pipeline,
                 model and optimizer (shape-first init), update step (compiled once), checkpoint load /
                 weight init, evals, train loop
  loss.py        symmetric contrastive loss: global, and row-sharded (shard_map, memory-lean)
  sharding.py    mesh from config (data / fsdp / tensor, multi-slice), (regex, tactic) parameter sharding rules
  optim.py       optax chain: Adam/AdamW, decay mask, clipping, schedules incl. reduce-on-plateau, tower
                 freezing and learning-rate multipliers
  checkpoint.py  orbax CheckpointManager: train state + data-iterator state per step; params-only restore
  flops.py       analytic FLOPs for MFU, peak FLOP/s per device kind
  random_batches.py  deterministic random batches for tests and benchmarks (config.data.kind = 'random')
  config_base.py every trainer field with its default; configs/*.py override it
"""
