"""Held-out scores of a multi-task prompt/answer model (HTSAT-22 pretraining, configs/htsat22.py): per task, the
answer loss (mean cross-entropy per answer token, the training objective, on the held-out clips' true answers) and,
for classification tasks, the accuracy of answering the prompt: every candidate label is scored by the likelihood
the model gives its answer tokens (' ' + label + ' <|endoftext|>' after the prompt: the whole answer, so labels
of different token lengths compete fairly) and the most likely one is the prediction.

    from clap_jax.eval import multitask as mt_eval
    waves, clips = mt_eval.heldout_clips("runs/htsat22_demo/data", model_config)
    scores = mt_eval.evaluate(model, variables, model_config, waves, clips, tasks)
    # {'sound': {'answer_loss': 0.41, 'acc': 0.93, 'chance': 0.125, 'n': 400, 'classes': 8}, 'captioning': {...}}
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np

from clap_jax.errors import UserError


def heldout_clips(data_root: str, model_config, max_clips: int = 0) -> tuple[np.ndarray, list[dict]]:
    """The held-out clips of a built-in dataset (eval_tasks.json) as (N, samples) float32 at the model's clip
    length (the start of each clip, repeat-padded when short), and their entries (labels, captions)."""
    from clap_jax.audio import io as audio_io
    from clap_jax.models import config as model_config_lib

    path = os.path.join(data_root, "eval_tasks.json")
    if not os.path.isfile(path):
        raise UserError(f"{path}: not found (build the data with python -m clap_jax.data.synthetic)")
    with open(path) as f:
        meta = json.load(f)
    clips = meta["clips"][:max_clips] if max_clips else meta["clips"]
    if not clips:
        raise UserError(f"{path}: no held-out clips")
    n = model_config_lib.clip_samples(model_config)
    sr = int(model_config.audio.sample_rate)
    root = os.path.join(data_root, meta.get("audio_root", "."))
    waves = []
    for c in clips:
        x, got = audio_io.read_audio(os.path.join(root, c["path"]))
        x = audio_io.to_mono(audio_io.as_channels_first(x))
        if got != sr:
            x = audio_io.resample(x, got, sr)
        waves.append(audio_io.fit_length(x, n, crop="start"))
    return np.stack(waves).astype(np.float32), clips


def _scorers(model):
    import functools

    import jax
    import jax.numpy as jnp

    from clap_jax.models import gpt2 as gpt2_lib

    @jax.jit
    def prefix(variables, wav):
        return model.apply(variables, wav, method="prefix")

    @functools.partial(jax.jit, static_argnums=(4, 5))
    def answer_nll(variables, pre, ids, loss_mask, lo, hi):
        """Summed cross-entropy and count of the loss_mask tokens, which all lie in [lo, hi): the LM head (a
        matmul with the 50257-token embedding, most of the cost) runs on those positions only."""
        hidden = model.apply(variables, pre, ids, method=lambda m, p, i: m.gpt.transformer(i, None, False, p))
        p = pre.shape[1]
        logits = gpt2_lib.lm_logits(variables["params"]["gpt"]["transformer"], hidden[:, p - 1 + lo:p - 1 + hi])
        logp = jax.nn.log_softmax(logits, axis=-1)
        nll = -jnp.take_along_axis(logp, ids[:, lo:hi, None].astype(jnp.int32), axis=-1)[..., 0]
        w = loss_mask[:, lo:hi].astype(jnp.float32)
        return jnp.sum(nll * w, axis=-1), jnp.sum(w, axis=-1)

    def score(variables, pre, batch):
        cols = np.flatnonzero(batch["loss_mask"].any(0))
        return answer_nll(variables, pre, batch["input_ids"], batch["loss_mask"], int(cols[0]), int(cols[-1]) + 1)

    return prefix, score


def evaluate(model, variables, model_config, waves: np.ndarray, clips: Sequence[dict], tasks: Sequence,
             class_names: dict[str, Sequence[str]] | None = None, batch_size: int = 50) -> dict[str, dict]:
    """Per task (clap_jax.data.multitask.Task): {'answer_loss', 'n'} and for tasks with candidate labels
    (`class_names[task.name]`, default: the built-in dataset's) {'acc', 'chance', 'classes'}. The truth of a
    label task is clip['labels'][task.name]; a caption task's answer is the clip's first caption."""
    from clap_jax.data import multitask
    from clap_jax.text.tokenizer import ClapTokenizer

    length = int(model_config.text.max_length)
    tok = ClapTokenizer(max_length=length)
    prefix, answer_nll = _scorers(model)
    names = {t.name: (class_names or {}).get(t.name) or multitask.builtin_class_names(t) for t in tasks}
    sums = {t.name: [0.0, 0.0, 0] for t in tasks}       # nll, tokens, right
    for s in range(0, len(clips), batch_size):
        part = clips[s:s + batch_size]
        pad = batch_size - len(part)
        wav = waves[s:s + batch_size]
        if pad:                                            # one compiled shape: pad the last batch
            wav = np.concatenate([wav, np.repeat(wav[-1:], pad, 0)])
        pre = prefix(variables, wav)
        for t in tasks:
            if names[t.name] is None:
                truth = [c["captions"][0] for c in part]
            else:
                try:
                    truth = [str(c["labels"][t.name]) for c in part]
                except KeyError as e:
                    raise UserError(f"held-out clip {part[0].get('id', '?')}: no label {e} for task "
                                    f"{t.name!r}") from None
            truth += [truth[-1]] * pad
            b = multitask.encode_batch(tok, [t.prompt] * batch_size, truth, length)
            nll, ntok = (np.asarray(x) for x in answer_nll(variables, pre, b))
            sums[t.name][0] += float(nll[:len(part)].sum())
            sums[t.name][1] += float(ntok[:len(part)].sum())
            if names[t.name] is not None:
                cand = []
                for label in names[t.name]:
                    b = multitask.encode_batch(tok, [t.prompt] * batch_size, [label] * batch_size, length)
                    cand.append(np.asarray(answer_nll(variables, pre, b)[0]))
                pred = np.argmin(np.stack(cand, 1), axis=1)[:len(part)]
                sums[t.name][2] += int(sum(names[t.name][p] == y for p, y in zip(pred, truth)))
    out = {}
    for t in tasks:
        nll, ntok, right = sums[t.name]
        r = {"answer_loss": nll / max(ntok, 1.0), "n": len(clips)}
        if names[t.name] is not None:
            r.update(acc=right / len(clips), chance=1.0 / len(names[t.name]), classes=len(names[t.name]))
        out[t.name] = r
    return out
