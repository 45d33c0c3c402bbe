"""The user-facing CLAP class: load weights, embed audio and text, score, classify zero-shot.

    from clap_jax import CLAP
    clap = CLAP("CLAP_weights_2023.pth")                   # or a clap_jax checkpoint directory
    a = clap.get_audio_embeddings(["dog.wav", "rain.flac"])  # (2, 1024), like msclap
    t = clap.get_text_embeddings(["a dog barking", "rain"])  # (2, 1024)
    sim = clap.compute_similarity(a, t)                      # (2, 2) = logit_scale * cosine
    probs = clap.classify(["dog.wav"], ["dog", "rain", "siren"])   # softmax over labels
    CLAP("clapcap_weights_2023.pth").generate_caption(["dog.wav"])  # captioner weights: ['A dog barks ']

Differences from msclap, each with msclap's behaviour one argument away:
  * audio may be file paths or arrays (1-D, or (channels, samples)) with `sample_rate`;
  * channels are averaged (`channel_mode='concat'` is msclap's time concatenation);
  * clips longer than the model's clip are centre-cropped (`crop='random'` draws the window from a generator seeded
    by `seed`; `crop='unseeded'` is msclap's own random crop);
  * embeddings are computed in fixed-size jitted batches sharded over all local devices.
"""
from __future__ import annotations

import functools
import logging
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from clap_jax.audio import io as audio_io
from clap_jax.convert import load_weights, save_checkpoint
from clap_jax.errors import UserError
from clap_jax.models import config as model_config
from clap_jax.models import registry
from clap_jax.scoring import similarity

log = logging.getLogger(__name__)
DEFAULT_PROMPT = "this is a sound of "


CPU_AUDIO_BATCH = 4    # clips per tower call on a single CPU device (see CLAP's cpu_micro_batches)
CPU_TEXT_BATCH = 16    # captions per tower call there


class CLAP:
    def __init__(self, weights: str | None = None, config: ml_collections.ConfigDict | None = None, *,
                 variables=None, tokenizer: str | None = None, channel_mode: str = "mean", crop: str = "center",
                 seed: int = 0, batch_size: int = 16, mesh: Mesh | None = None, cpu_micro_batches: bool | None = None,
                 dtype: str | None = None):
        """`weights`: clap_jax checkpoint dir or msclap .pth/.safetensors. With neither `weights` nor `variables`
        the model is randomly initialised from `config` (a baseline; a warning says so).

        `mesh`: embed on this (possibly multi-host) mesh, batches split over all its axes and `variables` kept in
        the shardings they have (the trainer's periodic eval passes its own mesh and FSDP-sharded params).
        Default: a 1-D mesh over this host's devices, variables replicated.

        `cpu_micro_batches` (default: on when the model runs on a single CPU device): run the towers on at most
        `CPU_AUDIO_BATCH` clips / `CPU_TEXT_BATCH` captions per call, whatever `batch_size` says: XLA:CPU is
        faster per item on small batches whose activations stay in cache (HTSAT at 4 clips: 14 clips/s, at 64: 9;
        GPT-2 at 16 captions: 25/s, at 64: 15/s, on a 2-core AMD EPYC). Results are the same.

        `dtype`: the towers' compute dtype ('float32', or 'bfloat16': matmuls and activations in bfloat16, weights,
        softmax, norms' statistics and outputs in float32). At full size, bfloat16 embeddings agree with msclap's
        float32 ones to a cosine of 0.99996 or better. Whether it is faster depends on the hardware: on TPUs and
        recent GPUs it is; on a 2-core AMD EPYC (Zen 5, AVX512_BF16) XLA:CPU ran the audio tower between 1.5x slower
        and as fast as float32, the text tower 1.25x faster (bench/bench_embed.py --dtype bfloat16 measures yours)."""
        audio_io.check_mode("channel_mode", channel_mode)
        audio_io.check_mode("crop", crop)
        if weights is not None:
            variables, config = load_weights(weights, config)
        elif variables is None:
            config = config or model_config.clap_2023()
            log.warning("CLAP: no weights given: randomly initialised model (seed %d)", seed)
            variables = registry.init_variables(config, seed)
        config = config or model_config.clap_2023()
        if dtype is not None and dtype != config.get("dtype", "float32"):
            config = config.copy_and_resolve_references()
            config.dtype = dtype
        model_config.validate(config)
        self.config = config
        self.model = registry.build_model(config)
        self.channel_mode, self.crop = channel_mode, crop
        self.batch_size = batch_size
        self._rng = np.random.default_rng(seed)
        self._laion_state = np.random.RandomState(seed)   # LAION-CLAP's crop draws (clap_jax.audio.fusion)
        self.tokenizer = registry.tokenizer(config, tokenizer)
        self._own_mesh = mesh is None
        self._micro = (mesh is None and jax.local_devices()[0].platform == "cpu" and len(jax.local_devices()) == 1
                       if cpu_micro_batches is None else bool(cpu_micro_batches) and mesh is None)
        self._mesh = Mesh(np.array(jax.local_devices()), ("data",)) if mesh is None else mesh
        self._batch_sharding = NamedSharding(self._mesh, P(tuple(self._mesh.axis_names)))
        replicated = NamedSharding(self._mesh, P())
        self.set_variables(variables)
        model = self.model

        # Outputs replicated: every host of a multi-host mesh reads whole results.
        def encode_audio(v, wave):
            return model.apply(v, wave, method=model.encode_audio)

        def encode_text(v, ids, mask):
            return model.apply(v, ids, mask, method=model.encode_text)

        self._audio_fn = jax.jit(encode_audio, out_shardings=replicated)
        # the embedding alone: the (B, 1024, 527) framewise output is neither computed nor copied back
        self._audio_embed_fn = jax.jit(lambda v, wave: {"embedding": encode_audio(v, wave)["embedding"]},
                                       out_shardings=replicated)
        self._text_fn = jax.jit(encode_text, out_shardings=replicated)

    def set_variables(self, variables) -> None:
        """Swap in new weights of the same shapes; the compiled towers are reused (no recompilation while the
        shardings stay the same). On a caller's mesh, arrays already on it keep their sharding."""
        if self._own_mesh or not all(isinstance(x, jax.Array) for x in jax.tree.leaves(variables)):
            variables = jax.device_put(variables, NamedSharding(self._mesh, P()))
        self.variables = variables

    # -- properties ---------------------------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return int(self.config.audio.sample_rate)

    @property
    def clip_samples(self) -> int:
        return audio_io.num_samples(self.config.audio.duration, self.config.audio.sample_rate)

    @property
    def logit_scale(self) -> float:
        """exp of the learned log-scale (msclap's `logit_scale.exp()`)."""
        p = self.variables["params"]
        return float(np.exp(np.asarray(p["logit_scale"] if "logit_scale" in p else p["logit_scale_a"])))  # LAION: a

    # -- preprocessing ------------------------------------------------------------------------------------------
    def preprocess_audio(self, audio, sample_rate: int | None = None) -> np.ndarray:
        """List of paths / arrays (or one of them) -> (B, clip_samples) float32 at the model rate."""
        if isinstance(audio, (str, np.ndarray)) or (hasattr(audio, "__fspath__")):
            audio = [audio]
        clips = []
        for i, a in enumerate(audio):
            clips.append(audio_io.load_clip(a, sample_rate, self.sample_rate, self.clip_samples,
                                            channel_mode=self.channel_mode, crop=self.crop, rng=self._rng,
                                            name=f"audio[{i}]"))
        return np.stack(clips) if clips else np.zeros((0, self.clip_samples), np.float32)

    # -- batched, sharded execution -----------------------------------------------------------------------------
    def _put_batch(self, x: np.ndarray) -> jax.Array:
        """Host batch (the same on every process) -> global array split over the mesh."""
        if self._own_mesh:
            return jax.device_put(x, self._batch_sharding)
        return jax.make_array_from_callback(x.shape, self._batch_sharding, lambda idx: x[idx])

    def _run_batched(self, fn, arrays: Sequence[np.ndarray], batch_size: int, cpu_cap: int = CPU_AUDIO_BATCH):
        n = arrays[0].shape[0]
        ndev = self._mesh.size
        bs = max(ndev, -(-batch_size // ndev) * ndev)   # a multiple of the device count: one compile
        if self._micro:
            bs = min(bs, max(ndev, cpu_cap // ndev * ndev))
        outs = []
        for s in range(0, n, bs):
            chunk = [a[s:s + bs] for a in arrays]
            k = chunk[0].shape[0]
            if k < bs:  # pad the last batch so the jitted function sees one shape
                chunk = [np.concatenate([c, np.repeat(c[-1:], bs - k, 0)]) for c in chunk]
            chunk = [self._put_batch(c) for c in chunk]
            res = fn(self.variables, *chunk)
            outs.append(jax.tree.map(lambda x: np.asarray(x)[:k], res))
        if not outs:
            raise ValueError("no inputs")
        return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)

    def get_audio_outputs(self, audio, sample_rate: int | None = None, batch_size: int | None = None) -> dict:
        """-> dict(embedding (N, d_proj), latent (N, 768), clipwise (N, 527), framewise (N, 1024, 527))."""
        if self.config.get("family") == "laion-clap":
            return self._laion_audio_outputs(audio, sample_rate, batch_size or self.batch_size)
        wav = self.preprocess_audio(audio, sample_rate)
        return self._run_batched(self._audio_fn, [wav], batch_size or self.batch_size)

    def _laion_audio_outputs(self, audio, sample_rate, batch_size) -> dict:
        """LAION-CLAP's clip rules instead of msclap's: the int16 round trip, whole repeats then zeros for short
        clips, and for long clips a crop (unfused) or the feature-fusion views (fused), drawn in laion_clap's order
        from a RandomState seeded with `seed` (clap_jax.audio.fusion)."""
        from clap_jax.audio import fusion

        if isinstance(audio, (str, np.ndarray)) or hasattr(audio, "__fspath__"):
            audio = [audio]
        a, items = self.config.audio, []
        for i, x in enumerate(audio):
            if isinstance(x, np.ndarray):   # any length: decode and resample only, no cut (load_clip would cut)
                if sample_rate is None:
                    raise UserError(f"audio[{i}]: arrays need a sample_rate")
                y = audio_io._to_rate_and_mono(audio_io.as_channels_first(x, f"audio[{i}]"), int(sample_rate),
                                               self.sample_rate, self.channel_mode, "soxr_hq")
            else:
                y = audio_io.decode(str(x), self.sample_rate, self.channel_mode)
            items.append(fusion.laion_audio_input(y, self._laion_state, self.clip_samples, fusion=bool(a.fusion),
                                                  sr=self.sample_rate, n_fft=a.n_fft, hop=a.hop_size,
                                                  n_mels=a.mel_bins, fmin=a.fmin, fmax=a.fmax))
        batch = fusion.batch_inputs(items)
        if not a.fusion:
            return self._run_batched(self._audio_fn, [batch["waveform"]], batch_size)
        model = self.model
        if not hasattr(self, "_fusion_fn"):
            self._fusion_fn = jax.jit(lambda v, m, lg: model.apply(v, {"mel_fusion": m, "longer": lg},
                                                                  method=model.encode_audio))
        return self._run_batched(self._fusion_fn, [batch["mel_fusion"], batch["longer"]], batch_size)

    def get_audio_embeddings(self, audio, sample_rate: int | None = None, batch_size: int | None = None) -> np.ndarray:
        """(N, d_proj) unnormalised audio embeddings (msclap's `get_audio_embeddings`)."""
        if self.config.get("family") == "laion-clap":
            return self.get_audio_outputs(audio, sample_rate, batch_size)["embedding"]
        wav = self.preprocess_audio(audio, sample_rate)
        return self._run_batched(self._audio_embed_fn, [wav], batch_size or self.batch_size)["embedding"]

    def get_text_embeddings(self, texts: str | Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """(N, d_proj) unnormalised text embeddings (msclap's `get_text_embeddings`)."""
        ids, mask = self.tokenizer([texts] if isinstance(texts, str) else list(texts))
        return self._run_batched(self._text_fn, [ids, mask], batch_size or max(self.batch_size, 64), CPU_TEXT_BATCH)

    def get_audio_embeddings_per_batch(self, audio, batch_size: int, sample_rate: int | None = None):
        """Generator of (<= batch_size, d_proj) arrays, as msclap's (every batch is yielded, the last one too)."""
        for s in range(0, len(audio), batch_size):
            yield self.get_audio_embeddings(audio[s:s + batch_size], sample_rate, batch_size)

    def get_text_embeddings_per_batch(self, texts: Sequence[str], batch_size: int):
        for s in range(0, len(texts), batch_size):
            yield self.get_text_embeddings(texts[s:s + batch_size], batch_size)

    # -- scoring ------------------------------------------------------------------------------------------------
    def compute_similarity(self, audio_embeddings, text_embeddings) -> np.ndarray:
        """(N_audio, N_text) = logit_scale * cosine similarity (as msclap)."""
        return similarity(audio_embeddings, text_embeddings, self.logit_scale)

    def classify(self, audio, labels: Sequence[str], prompt: str = DEFAULT_PROMPT, sample_rate: int | None = None,
                 multi_label: bool = False) -> np.ndarray:
        """Zero-shot class probabilities (N, K): softmax over `prompt + label` (sigmoid if `multi_label`)."""
        if not labels:
            raise ValueError("classify: no labels")
        sim = self.compute_similarity(self.get_audio_embeddings(audio, sample_rate),
                                      self.get_text_embeddings([prompt + l for l in labels]))
        if multi_label:
            return np.asarray(jax.nn.sigmoid(sim))
        return np.asarray(jax.nn.softmax(jnp.asarray(sim), axis=-1))

    # -- captioning (captioner weights: msclap's clapcap) ---------------------------------------------------------
    def generate_caption(self, audio, beam_size: int = 5, entry_length: int = 67, temperature: float = 1.0,
                         sample_rate: int | None = None, batch_size: int | None = None,
                         return_beams: bool = False):
        """Captions of clips (paths or arrays), as msclap's `generate_caption`: beam search (beam 1 = greedy), at
        most `entry_length` tokens, the best beam's text. All clips of a batch decode at once, jitted and split
        over the devices. `return_beams`: per clip the list of (caption, score) of every beam, best first."""
        from clap_jax.models import clapcap

        if self.config.get("family") != clapcap.FAMILY:
            raise UserError(f"generate_caption needs captioner weights (family {clapcap.FAMILY!r}, e.g. msclap's "
                            f"clapcap_weights_2023.pth); these weights are of family {self.config.get('family')!r}")
        if beam_size < 1 or entry_length < 1:
            raise UserError(f"generate_caption: beam_size ({beam_size}) and entry_length ({entry_length}) must be >= 1")
        if self.config.caption.prefix_length + entry_length > self.config.text.n_positions:
            raise UserError(f"generate_caption: entry_length {entry_length} + the prefix exceeds GPT-2's "
                            f"{self.config.text.n_positions} positions")
        key = (int(beam_size), int(entry_length))
        fns = self.__dict__.setdefault("_caption_fns", {})
        if key not in fns:
            fns[key] = jax.jit(functools.partial(clapcap.caption_tokens, self.model, beam_size=key[0],
                                                 max_steps=key[1]))
        fn = fns[key]
        wav = self.preprocess_audio(audio, sample_rate)
        out = self._run_batched(lambda v, w: fn(v, w, jnp.float32(temperature)), [wav],
                                batch_size or self.batch_size)
        beams = [[(clapcap.caption_text(self.tokenizer, t, n), float(s))
                  for t, n, s in zip(out["tokens"][i], out["lengths"][i], out["scores"][i])]
                 for i in range(len(wav))]
        return beams if return_beams else [b[0][0] for b in beams]

    def save(self, directory: str, overwrite: bool = False) -> str:
        """Write a clap_jax checkpoint directory (config.json + model.safetensors). A non-empty directory that is
        not a previous clap_jax checkpoint is refused unless `overwrite` (which still leaves its other files)."""
        return save_checkpoint(directory, jax.device_get(self.variables), self.config, overwrite=overwrite)
