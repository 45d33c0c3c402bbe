"""Dataset readers, one module per dataset family, registered by name in REGISTRY (see base.py)."""
from clap_jax.eval.tasks.base import REGISTRY, Clip, DatasetError, Task  # noqa: F401
from clap_jax.eval.tasks import (  # noqa: F401  (importing registers the readers)
    builtin, esc50, urbansound, fsd50k, youtube, vocalsound, sesa, tut, gtzan, nsynth, beijing, speech,
    captions, hear, tfds,
)
