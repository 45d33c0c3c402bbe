"""Data layer: manifests -> sharded TFRecords -> a deterministic, resumable Grain pipeline.

* ``tfrecord``   TF-free tf.train.Example / TFRecord codec, atomic shard writer, offset index, CRC-checked reads.
* ``audio``      decode / encode (pcm16, flac), msclap crop and repeat-padding.
* ``preprocess`` CLI ``python -m clap_jax.data.preprocess``: CSV/JSONL manifests -> shards + dataset.json.
* ``pipeline``   Grain pipeline: random-access source, shuffle, epochs, crops, tokenization, host sharding,
                 mixing, worker processes, global arrays, orbax iterator checkpoint args.
* ``synthetic``  CLI ``python -m clap_jax.data.synthetic``: the built-in learnable dataset + eval_tasks.json.
* ``testing``    tiny generated datasets for tests and benchmarks.
"""
