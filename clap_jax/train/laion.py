"""Training the LAION-CLAP family: its objective ('laion'), feature-fusion batches and laion_clap's MLP loss.

Batch: {'audio', 'input_ids', 'attention_mask'} as for the other CLAP families, where 'audio' is
  unfused models   the waveform (B, clip samples)
  fused models     {'mel_fusion': float32 (B, 4, clip // hop + 1, n_mels), 'longer': bool (B,)}: laion_clap's
                   fusion input, made per clip by the data pipeline from the whole clip (clap_jax.data.pipeline,
                   `fusion=`), with static shapes whatever the clips' lengths. Random batches (tests, benchmarks)
                   get theirs on the devices from their waveforms: the HTK log-mel four times, longer = False.

Loss (`config.loss.mlp`):
  False   laion_clap's ClipLoss without its MLP loss: the symmetric contrastive loss of the normalised
          embeddings with logit_scale_a (clap_jax.train.loss), the transforms and logit_scale_t untrained.
  True    laion_clap's `ClipLoss(mlp_loss=True)`: with a, t the normalised embeddings and a', t' their
          audio_transform / text_transform outputs, s_a = exp(logit_scale_a), s_t = exp(logit_scale_t),
              A = s_a * a @ t'^T      T = s_t * a' @ t^T
              loss = (CE(A) + CE(A^T) + CE(T) + CE(T^T)) / 4        (CE: cross-entropy against the diagonal)
          both log scales clamped at config.loss.max_log_scale (laion clamps them to [0, ln 100] after each step).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from clap_jax.audio import fusion as fusion_lib
from clap_jax.models import registry
from clap_jax.train import data as data_lib
from clap_jax.train import loss as loss_lib
from clap_jax.train import objective as objective_lib
from clap_jax.train import sharding as shd

FUSION_KEYS = ("mel_fusion", "longer")


def fused(config_model) -> bool:
    return fusion_lib.settings(config_model) is not None


def mlp_clip_loss(audio_n, text_n, audio_mlp, text_mlp, logit_scale_a_log, logit_scale_t_log,
                  max_log_scale: float = loss_lib.MAX_LOG_SCALE):
    """laion_clap's ClipLoss(mlp_loss=True) on one global batch (see the module docstring). `audio_n`, `text_n`:
    the normalised embeddings (B, d); `audio_mlp`, `text_mlp`: their transforms. -> (loss, metrics)."""
    f32 = lambda x: x.astype(jnp.float32) if x.dtype != jnp.float64 else x  # noqa: E731
    a, t, am, tm = f32(audio_n), f32(text_n), f32(audio_mlp), f32(text_mlp)
    # exp of the clamped log scales in the embeddings' precision (float32 in training; float64 exact in tests)
    sa = jnp.exp(jnp.minimum(jnp.asarray(logit_scale_a_log).astype(a.dtype), max_log_scale))
    st = jnp.exp(jnp.minimum(jnp.asarray(logit_scale_t_log).astype(a.dtype), max_log_scale))
    logits_a = sa * a @ tm.T
    logits_t = st * am @ t.T
    labels = jnp.arange(a.shape[0])
    ce_a, acc_a2t = loss_lib._ce_rows(logits_a, labels)
    ce_at, acc_t2a = loss_lib._ce_rows(logits_a.T, labels)
    ce_t, _ = loss_lib._ce_rows(logits_t, labels)
    ce_tt, _ = loss_lib._ce_rows(logits_t.T, labels)
    loss = (ce_a.mean() + ce_at.mean() + ce_t.mean() + ce_tt.mean()) / 4
    return loss, dict(loss=loss, acc_a2t=acc_a2t.mean(), acc_t2a=acc_t2a.mean(), logit_scale=sa,
                      logit_scale_t=st)


def prepare(batch: dict) -> dict:
    """An iterator's batch -> the step's inputs: fusion batches' views and flags as 'audio', else
    `to_model_batch` (int16 waveforms made float32 on the devices)."""
    if "mel_fusion" in batch:
        return {"audio": {k: batch[k] for k in FUSION_KEYS}, "input_ids": batch["input_ids"],
                "attention_mask": batch["attention_mask"]}
    return data_lib.to_model_batch(batch)


def abstract_batch(config_model, batch_size: int) -> dict:
    wave, ids, mask = registry.family_of(config_model).example_inputs(config_model, batch_size)
    audio = wave
    if fused(config_model):
        a = config_model.audio
        frames = wave.shape[1] // a.hop_size + 1
        audio = {"mel_fusion": jax.ShapeDtypeStruct((batch_size, 4, frames, a.mel_bins), jnp.float32),
                 "longer": jax.ShapeDtypeStruct((batch_size,), jnp.bool_)}
    return {"audio": audio, "input_ids": ids, "attention_mask": mask}


def make_grad_fn(model, config, mesh, param_shardings=None):
    """The contrastive gradient functions of clap_jax.train.step (gradient accumulation included) without the
    MLP loss; with it, value_and_grad of `mlp_clip_loss` over the global batch (no accumulation)."""
    if not config.loss.get("mlp", False):
        return objective_lib._contrastive_grad_fn(model, config, mesh, param_shardings)
    if config.optim.grad_accum_steps != 1:
        raise ValueError("config.loss.mlp: laion's MLP loss is implemented for the whole batch at once; set "
                         f"optim.grad_accum_steps=1 (got {config.optim.grad_accum_steps})")
    from clap_jax.train import step as step_lib

    embed = step_lib.make_embed_fn(model, config, mesh, param_shardings, method="train_outputs")
    max_log = config.loss.max_log_scale

    def forward_loss(params, batch_stats, constants, batch, rng):
        (a, t, am, tm, ls_a, ls_t), new_bs = embed(params, batch_stats, constants, batch, rng)
        loss, metrics = mlp_clip_loss(a, t, am, tm, ls_a, ls_t, max_log)
        return loss, (metrics, new_bs)

    return jax.value_and_grad(forward_loss, has_aux=True)


objective_lib.register(objective_lib.Objective(
    name="laion", batch_keys=objective_lib.CONTRASTIVE_KEYS, make_grad_fn=make_grad_fn, prepare=prepare,
    abstract_batch=abstract_batch, metric_names=("acc_a2t", "acc_t2a", "logit_scale")))


class FusionViews:
    """Random batches (waveforms) for a fused model: each batch gets 'mel_fusion' and 'longer' made on the
    devices, the short-clip input laion_clap gives a clip of at most the clip length (its HTK log-mel as all four
    views, longer = False); the waveform is dropped. Iterator state as the wrapped iterator's."""

    def __init__(self, it, config_model, mesh=None):
        self.it = it
        st = fusion_lib.settings(config_model)
        fb = jnp.asarray(fusion_lib.htk_mel_filterbank(st["sr"], st["n_fft"], st["n_mels"], st["fmin"],
                                                       st["fmax"]))
        from clap_jax.audio import frontend

        def views(wave):
            power = frontend.power_spectrogram_fft(wave.astype(jnp.float32), st["n_fft"], st["hop"])
            mel = frontend.log_mel(power, fb)
            return (jnp.broadcast_to(mel[:, None], (mel.shape[0], 4) + mel.shape[1:]),
                    jnp.zeros((wave.shape[0],), jnp.bool_))
        out_sh = None
        if mesh is not None:
            sh = shd.batch_sharding(mesh)
            out_sh = (sh, sh)
        self._views = jax.jit(views, out_shardings=out_sh)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = dict(next(self.it))
        batch["mel_fusion"], batch["longer"] = self._views(batch.pop("audio"))
        return batch

    def get_state(self):
        return self.it.get_state()

    def set_state(self, state) -> None:
        self.it.set_state(state)
