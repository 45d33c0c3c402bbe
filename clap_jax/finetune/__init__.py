"""Fine-tuning: a family's audio tower + a classification head, trained per fold on a task of the eval suite.

    python -m clap_jax.finetune --weights W --task esc50 --data-root D [--workdir runs/ft] [--config cfg.py]

`clap_jax.finetune.run.run(config)` is the Python entry; `clap_jax.finetune.config.defaults()` lists every setting.
"""
