"""The audio captioner of msclap ('clapcap'): CLAP's audio encoder, a transformer mapper to a prefix of GPT-2
input embeddings, and GPT-2 with its language-model head (tied to the token embedding), plus batched, jitted
greedy / beam-search decoding with cached keys and values.

Module tree (mirrors msclap's `ClapCaptionModel` state dict):
  clap.base            HTSAT           waveform (B, N) -> latent (B, 768)
  clap.projection                      (B, 768) -> (B, d_proj); L2-normalised when caption.normalize_prefix
  clap_project         TransformerMapper  (B, d_proj) -> linear -> (B, clip_length, n_embd), concatenated with the
                       learned prefix_const (prefix_length, n_embd), 8 pre-LN layers, the last prefix_length rows
  gpt.transformer      GPT2            [prefix ; token embeddings] -> hidden; logits = hidden @ wte^T

Decoding follows msclap's `_generate_beam` step for step (msclap 1.3.4 has no separate greedy decoder: greedy is
beam size 1): log(softmax(logits / temperature)); the first step takes the top `beam_size` tokens; later steps
rank every (beam, token) extension by summed log-probability divided by the beam's length (a stopped beam only
extends by token 0 at no cost and its length stays), keep the best `beam_size`; a beam stops when it emits the
stop token (msclap's `tokenizer.encode(' <|endoftext|>')[0]`, GPT-2's bare-space token 220); a clip is finished
when all its beams have stopped or after `max_steps` tokens. Results are ordered by final score (sum / length),
best first. Here all clips of a batch decode together in one `lax.while_loop` (finished clips are frozen), with
static shapes, and GPT-2 runs one position per step on cached keys/values instead of re-running the sequence.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from clap_jax.models import config as model_config
from clap_jax.models import gpt2 as gpt2_lib
from clap_jax.models import registry
from clap_jax.models.clap import _example_inputs, _tokenizer   # the same inputs and GPT-2 tokenizer as CLAP 2023
from clap_jax.models.clap import AudioEncoder
from clap_jax.models.gpt2 import GPT2

FAMILY = "msclap-clapcap"
STOP_TOKEN = 220        # tokenizer.encode(' <|endoftext|>')[0] with GPT-2's tokenizer: the bare space 'Ġ'


# ----------------------------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------------------------
def caption_defaults() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.prefix_length = 40           # rows of the learned prefix_const = GPT-2 prefix length
    c.clip_length = 40             # rows the mapper's linear layer makes from the audio embedding
    c.num_layers = 8               # mapper transformer layers
    c.num_heads = 8                # mapper attention heads (fixed at 8 by msclap)
    c.mlp_ratio = 2.0              # mapper MLP hidden = n_embd * mlp_ratio
    c.normalize_prefix = True      # L2-normalise the audio embedding before the mapper
    c.prefix_batch_norm = False    # standardise each embedding feature over the batch (BatchNorm without scale or
    #                                bias, running statistics at inference) before the mapper. msclap has none. An
    #                                audio encoder trained from scratch through the LM loss alone otherwise
    #                                collapses to one output for every clip (the LM learns the answers' prior
    #                                first, and clip-to-clip differences in the prefix only add noise to it)
    c.beam_size = 5                # decoding defaults (msclap's generate_caption)
    c.max_steps = 67               # msclap's entry_length: most tokens generated
    c.temperature = 1.0
    c.stop_token = STOP_TOKEN
    return c


def clapcap_2023() -> ml_collections.ConfigDict:
    """msclap's `version='clapcap'`: the 2023 audio encoder, GPT-2 small, mapper of 8 layers and prefix 40."""
    c = model_config.clap_2023()
    c.family = FAMILY
    c.caption = caption_defaults()
    return c


def tiny() -> ml_collections.ConfigDict:
    """The same code paths at a size that runs in seconds on a CPU (tiny HTSAT, 2-layer GPT-2 of width 32)."""
    c = model_config.tiny()
    c.family = FAMILY
    c.text.n_positions = 128
    c.caption = caption_defaults()
    c.caption.prefix_length = 4
    c.caption.clip_length = 3
    c.caption.num_layers = 2
    return c


def validate(c: ml_collections.ConfigDict) -> None:
    """Raise ValueError naming the field for inconsistent captioner settings (the CLAP fields are checked by
    clap_jax.models.config.validate)."""
    k, t = c.caption, c.text

    def need(ok, field, msg):
        if not ok:
            raise ValueError(f"model config: caption.{field}: {msg}")

    need(t.n_embd % k.num_heads == 0, "num_heads", f"must divide text.n_embd={t.n_embd}")
    need(k.prefix_length >= 1 and k.clip_length >= 1 and k.num_layers >= 0, "prefix_length/clip_length/num_layers",
         "must be positive")
    need(k.beam_size >= 1, "beam_size", "must be >= 1")
    need(k.max_steps >= 1, "max_steps", "must be >= 1")
    need(k.prefix_length + k.max_steps <= t.n_positions, "max_steps",
         f"prefix_length + max_steps = {k.prefix_length + k.max_steps} exceeds text.n_positions={t.n_positions}")
    need(0 <= k.stop_token < t.vocab_size, "stop_token", f"not a token id of a {t.vocab_size}-token vocabulary")


# ----------------------------------------------------------------------------------------------------------------
# Mapper (ClipCap's transformer mapper as msclap builds it)
# ----------------------------------------------------------------------------------------------------------------
def _torch_linear_init():
    return nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


class MapperAttention(nn.Module):
    """Self-attention without a mask: queries and keys/values without bias, output projection with bias."""
    num_heads: int

    @nn.compact
    def __call__(self, x):
        b, n, c = x.shape
        h = self.num_heads
        d = c // h
        dense = lambda f, name, bias: nn.Dense(f, use_bias=bias, name=name, kernel_init=_torch_linear_init())  # noqa
        q = dense(c, "to_queries", False)(x).reshape(b, n, h, d)
        kv = dense(2 * c, "to_keys_values", False)(x).reshape(b, n, 2, h, d)
        k, v = kv[:, :, 0], kv[:, :, 1]
        att = jnp.einsum("bnhd,bmhd->bnmh", q, k) * d ** -0.5
        att = jax.nn.softmax(att, axis=2)
        out = jnp.einsum("bnmh,bmhd->bnhd", att, v).reshape(b, n, c)
        return dense(c, "project", True)(out)


class MapperTransformer(nn.Module):
    num_layers: int
    num_heads: int
    mlp_ratio: float

    @nn.compact
    def __call__(self, x):
        for i in range(self.num_layers):
            x = _Layer(self.num_heads, self.mlp_ratio, name=f"layers_{i}")(x)
        return x


class _Mlp(nn.Module):
    hidden: int

    @nn.compact
    def __call__(self, x):
        y = nn.Dense(self.hidden, name="fc1", kernel_init=_torch_linear_init())(x)
        return nn.Dense(x.shape[-1], name="fc2", kernel_init=_torch_linear_init())(nn.relu(y))


class _Layer(nn.Module):
    """Pre-LN layer: x + attn(norm1(x)); x + mlp(norm2(x)) (ReLU MLP, no dropout at inference)."""
    num_heads: int
    mlp_ratio: float

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        x = x + MapperAttention(self.num_heads, name="attn")(nn.LayerNorm(epsilon=1e-5, name="norm1")(x))
        return x + _Mlp(int(c * self.mlp_ratio), name="mlp")(nn.LayerNorm(epsilon=1e-5, name="norm2")(x))


class TransformerMapper(nn.Module):
    """(B, d_proj) -> (B, prefix_length, n_embd)."""
    config: ml_collections.ConfigDict

    @nn.compact
    def __call__(self, x):
        k, e = self.config.caption, self.config.text.n_embd
        x = nn.Dense(k.clip_length * e, name="linear", kernel_init=_torch_linear_init())(x)
        x = x.reshape(x.shape[0], k.clip_length, e)
        const = self.param("prefix_const", nn.initializers.normal(1.0), (k.prefix_length, e))
        x = jnp.concatenate([x, jnp.broadcast_to(const[None], (x.shape[0],) + const.shape).astype(x.dtype)], axis=1)
        x = MapperTransformer(k.num_layers, k.num_heads, k.mlp_ratio, name="transformer")(x)
        return x[:, k.clip_length:]


class GPT2LM(nn.Module):
    """GPT-2 under 'transformer' and the LM head tied to its token embedding (msclap's `gpt`)."""
    config: ml_collections.ConfigDict

    def setup(self):
        self.transformer = GPT2(self.config.text, name="transformer")

    def __call__(self, input_ids, attention_mask=None, prefix_embeds=None):
        hidden = self.transformer(input_ids, attention_mask, False, prefix_embeds)
        return gpt2_lib.lm_logits(self.transformer.variables["params"], hidden)


class ClapCapModel(nn.Module):
    config: ml_collections.ConfigDict

    def setup(self):
        validate(self.config)
        self.clap = AudioEncoder(self.config, name="clap")
        self.clap_project = TransformerMapper(self.config, name="clap_project")
        self.gpt = GPT2LM(self.config, name="gpt")
        if self.config.caption.get("prefix_batch_norm", False):
            self.prefix_norm = nn.BatchNorm(momentum=0.9, epsilon=1e-5, use_scale=False, use_bias=False,
                                            name="prefix_norm")

    def encode_audio(self, wav, train: bool = False):
        """(B, N) -> dict(embedding (B, d_proj), latent, clipwise, framewise): the CLAP audio embedding."""
        return self.clap(wav, train)

    def map_prefix(self, embedding, train: bool = False):
        """Audio embedding (B, d_proj) -> GPT-2 prefix (B, prefix_length, n_embd), normalised as configured (batch
        statistics when `train` and caption.prefix_batch_norm, their running averages otherwise)."""
        x = embedding.astype(jnp.float32)
        if self.config.caption.get("prefix_batch_norm", False):
            x = self.prefix_norm(x, use_running_average=not train)
        if self.config.caption.normalize_prefix:
            x = x / jnp.linalg.norm(x, axis=-1, keepdims=True)
        return self.clap_project(x)

    def prefix(self, wav):
        """(B, N) waveform -> (B, prefix_length, n_embd) GPT-2 prefix."""
        return self.map_prefix(self.clap(wav, False)["embedding"])

    def logits(self, prefix_embeds, input_ids=None):
        """GPT-2 logits (B, P + L, vocab) for [prefix ; tokens] (no tokens: the prefix alone)."""
        if input_ids is None:
            input_ids = jnp.zeros((prefix_embeds.shape[0], 0), jnp.int32)
        return self.gpt(input_ids, None, prefix_embeds)

    def encode_text(self, input_ids, attention_mask=None, train: bool = False):
        raise NotImplementedError("a captioner has no text encoder: it writes captions (generate_caption)")

    def __call__(self, wav, input_ids, attention_mask=None, train: bool = False):
        """Teacher-forced logits (B, prefix_length + L, vocab) of the captions `input_ids` after the audio prefix
        (msclap's ClapCaptionModel.forward)."""
        embedding = self.clap(wav, train)["embedding"]
        return self.gpt(input_ids, attention_mask, self.map_prefix(embedding, train))


# ----------------------------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------------------------
def _log_probs(logits, temperature):
    """msclap's log(softmax(logits / T)) (T <= 0 means 1), in float32. T may be traced."""
    t = jnp.where(temperature > 0, temperature, 1.0).astype(jnp.float32)
    return jnp.log(jax.nn.softmax(logits.astype(jnp.float32) / t, axis=-1))


def _take_beams(x, src):
    """x (B, K, ...) reordered along the beam axis by src (B, K)."""
    idx = src.reshape(src.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)


@functools.partial(jax.jit, static_argnames=("config", "beam_size", "max_steps", "stop_token"))
def _beam_search(gpt_params, prefix, temperature, *, config, beam_size, max_steps, stop_token):
    t = config
    b, p, e = prefix.shape
    k, v = beam_size, t.vocab_size
    wte = gpt_params["wte"]["embedding"]
    cache = gpt2_lib.init_cache(t, b, p + max_steps)
    hidden, cache = gpt2_lib.forward_cached(gpt_params, t, prefix.astype(jnp.float32), cache, 0)
    logp = _log_probs(gpt2_lib.lm_logits(gpt_params, hidden[:, -1]), temperature)          # (B, V)
    scores, tok = jax.lax.top_k(logp, k)                                                   # (B, K)
    tokens = jnp.zeros((b, k, max_steps), jnp.int32).at[:, :, 0].set(tok)
    lengths = jnp.ones((b, k), jnp.float32)
    stopped = tok == stop_token
    # cache (L, B, S, H, D) -> per beam (L, B, K, S, H, D)
    cache = jax.tree.map(lambda c: jnp.broadcast_to(c[:, :, None], c.shape[:2] + (k,) + c.shape[2:]), cache)
    vocab = jnp.arange(v)

    def cond(s):
        i, _, _, _, stopped, _, _ = s
        return (i < max_steps) & ~jnp.all(stopped)

    def body(s):
        i, tokens, lengths, scores, stopped, cache, tok = s
        flat = jax.tree.map(lambda c: c.reshape((c.shape[0], b * k) + c.shape[3:]), cache)
        x = jnp.take(wte, tok.reshape(b * k, 1), axis=0).astype(jnp.float32)
        hidden, flat = gpt2_lib.forward_cached(gpt_params, t, x, flat, p + i - 1)
        new_cache = jax.tree.map(lambda c: c.reshape((c.shape[0], b, k) + c.shape[2:]), flat)
        logp = _log_probs(gpt2_lib.lm_logits(gpt_params, hidden[:, 0]), temperature).reshape(b, k, v)
        # a stopped beam only continues with token 0 at no cost
        logp = jnp.where(stopped[..., None], jnp.where(vocab == 0, 0.0, -jnp.inf), logp)
        ssum = scores[..., None] + logp
        lens = lengths + (~stopped).astype(jnp.float32)
        avg = ssum / lens[..., None]
        top, idx = jax.lax.top_k(avg.reshape(b, k * v), k)
        src, nt = idx // v, (idx % v).astype(jnp.int32)
        n_len = jnp.take_along_axis(lens, src, axis=1)
        n_tokens = _take_beams(tokens, src).at[:, :, i].set(nt)
        n_cache = jax.tree.map(lambda c: jax.vmap(_take_beams, in_axes=(0, None))(c, src), new_cache)
        n_stopped = jnp.take_along_axis(stopped, src, axis=1) | (nt == stop_token)
        n_scores = top * n_len
        # clips whose beams had all stopped keep their state (msclap leaves the loop for them)
        done = jnp.all(stopped, axis=1)
        keep = lambda old, new: jnp.where(done.reshape((b,) + (1,) * (old.ndim - 1)), old, new)  # noqa: E731
        keep_c = lambda old, new: jnp.where(done.reshape((1, b) + (1,) * (old.ndim - 2)), old, new)  # noqa: E731
        return (i + 1, keep(tokens, n_tokens), keep(lengths, n_len), keep(scores, n_scores),
                keep(stopped, n_stopped), jax.tree.map(keep_c, cache, n_cache), keep(tok, nt))

    state = (jnp.int32(1), tokens, lengths, scores, stopped, cache, tok)
    _, tokens, lengths, scores, stopped, _, _ = jax.lax.while_loop(cond, body, state)
    final = scores / lengths
    order = jnp.argsort(-final, axis=1, stable=True)
    return {"tokens": _take_beams(tokens, order), "lengths": jnp.take_along_axis(lengths, order, 1).astype(jnp.int32),
            "scores": jnp.take_along_axis(final, order, 1)}


def beam_search(gpt_params, prefix, config: ml_collections.ConfigDict, beam_size: int | None = None,
                max_steps: int | None = None, temperature: float | None = None, stop_token: int | None = None):
    """Decode every clip of `prefix` (B, P, n_embd) as msclap's `_generate_beam` does, all clips at once.

    `gpt_params`: the GPT-2 parameters (variables['params']['gpt']['transformer']); `config`: the captioner's
    model config (its caption.* fields are the defaults). -> dict of arrays, beams best first:
    tokens (B, beam, max_steps) int32 (valid up to each length; the stop token included), lengths (B, beam),
    scores (B, beam) = summed log-probability / length. Beam size 1 is greedy decoding."""
    k = config.caption
    temperature = float(temperature if temperature is not None else k.temperature)
    return _beam_search(gpt_params, prefix, jnp.float32(temperature), config=_Frozen(config.text),
                        beam_size=int(beam_size if beam_size is not None else k.beam_size),
                        max_steps=int(max_steps if max_steps is not None else k.max_steps),
                        stop_token=int(stop_token if stop_token is not None else k.stop_token))


def caption_tokens(model, variables, wav, temperature, *, beam_size: int, max_steps: int):
    """Waveforms (B, N) -> beam_search's dict for every clip (prefix from the audio, then decoding). Jit it with
    beam_size / max_steps static."""
    prefix = model.apply(variables, wav, method=model.prefix)
    k = model.config.caption
    return _beam_search(variables["params"]["gpt"]["transformer"], prefix, temperature,
                        config=_Frozen(model.config.text), beam_size=beam_size, max_steps=max_steps,
                        stop_token=int(k.stop_token))


def caption_text(tokenizer, tokens, length: int) -> str:
    """One beam's tokens -> msclap's caption string: the tokens up to its length (the stop token included)
    decoded, then Python's str.capitalize (first letter upper case, the rest lower case)."""
    return tokenizer.decode([int(t) for t in tokens[:int(length)]]).capitalize()


class _Frozen:
    """A hashable, read-only view of a text config (a static argument of the jitted decoder)."""

    def __init__(self, cfg: ml_collections.ConfigDict):
        self._items = tuple(sorted((key, tuple(val) if isinstance(val, list) else val)
                                   for key, val in cfg.to_dict().items()))
        for key, val in self._items:
            object.__setattr__(self, key, val)

    def __hash__(self):
        return hash(self._items)

    def __eq__(self, other):
        return isinstance(other, _Frozen) and self._items == other._items


registry.register(registry.Family(
    name=FAMILY, configs={"msclap-clapcap": clapcap_2023, "msclap-clapcap-tiny": tiny},
    build=ClapCapModel, tokenizer=_tokenizer, example_inputs=_example_inputs, objective="prefix_lm"))
