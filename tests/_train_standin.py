"""A small flax module with CLAPModel's call signature and variable collections, for trainer tests that must not
depend on the real model (loss / sharding / optimizer / checkpoint unit tests)."""
import flax.linen as nn
import jax
import jax.numpy as jnp


class _Audio(nn.Module):
    d: int
    dropout: float = 0.1

    @nn.compact
    def __call__(self, audio, train):
        win = self.variable("constants", "window", lambda: jnp.hanning(32).astype(jnp.float32)).value
        b, n = audio.shape
        frames = audio[:, : (n // 32) * 32].reshape(b, -1, 32) * win.astype(audio.dtype)
        if train:  # stand-in for SpecAugment: needs the 'augment' rng
            noise = jax.random.normal(self.make_rng("augment"), frames.shape, jnp.float32).astype(frames.dtype)
            frames = frames * (1 + 0.01 * noise)
        x = jnp.tanh(nn.Dense(16, name="frame")(frames)).mean(axis=1)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn0")(x)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.d, name="projection")(x)


class _Text(nn.Module):
    d: int
    dropout: float = 0.1
    vocab: int = 50257

    @nn.compact
    def __call__(self, ids, mask, train):
        e = nn.Embed(self.vocab, 16, name="wte")(ids)
        m = mask[..., None].astype(e.dtype)
        x = (e * m).sum(1) / jnp.maximum(m.sum(1), 1)
        x = jnp.tanh(nn.Dense(16, name="hidden")(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.d, name="projection")(x)


class StandInCLAP(nn.Module):
    d: int = 8
    dropout: float = 0.1

    @nn.compact
    def __call__(self, audio, input_ids, attention_mask, train=False):
        a = _Audio(self.d, self.dropout, name="audio_encoder")(audio, train)
        t = _Text(self.d, self.dropout, name="caption_encoder")(input_ids, attention_mask, train)
        ls = self.param("logit_scale", lambda k: jnp.asarray(2.659260036932778, jnp.float32))
        return a, t, ls
