"""Multi-task generative pretraining data (HTSAT-22, CLAP 2023 section 2.2, trained "similar to Pengi"): labelled
audio datasets turned into prompt/answer records, token rows whose loss covers the answer only, and the per-batch
task sampler that mixes the tasks by weight.

A task (a slot of configs/htsat22.py):

    name       'sound_events', 'vocal_sounds', 'scenes', ...
    dirs       TFRecord directories / manifests of the task's data (the user fills them)
    prompt     the text prompt naming the task, e.g. 'this is a sound of' / 'caption this audio'
    answer     how a record's answer is made: 'label' (one label: labels[label_key]), 'labels' (every label of a
               multi-label record, joined by ', '), 'caption' (one record per caption), 'text' (row['answer'])
    label_key  for 'label': index into a record's label list, or key of its label dict
    weight     share of training batches drawn from this task

Records are the preprocessing manifest's JSON lines (path, captions, labels, ...) with the task's "prompt" and
"answer" added and "captions" = [answer] (so the caption pipeline reads them as they are); `write_records` /
`read_records` round-trip them. `encode` makes the token row: [prompt tokens ; ' ' + answer + ' <|endoftext|>'],
'!' (0) padding, loss_mask = 1 on the answer tokens only (the end-of-text included: the decoder learns to stop).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

from clap_jax import files
from clap_jax.errors import UserError

ANSWER_FORMATS = ("label", "labels", "caption", "text")


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    prompt: str
    answer: str = "label"
    label_key: int | str | None = 0
    weight: float = 1.0
    dirs: tuple[str, ...] = ()

    def __post_init__(self):
        if self.answer not in ANSWER_FORMATS:
            raise UserError(f"task {self.name!r}: answer format {self.answer!r} is not one of {ANSWER_FORMATS}")
        if not self.weight >= 0:
            raise UserError(f"task {self.name!r}: weight must be >= 0, got {self.weight}")

    @classmethod
    def from_config(cls, d: Mapping) -> "Task":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"task {d.get('name', '?')!r}: unknown fields {unknown} (known: {sorted(known)})")
        d = dict(d)
        d["dirs"] = tuple(d.get("dirs", ()))
        return cls(**d)


def answers(row: Mapping, task: Task, where: str = "record") -> list[str]:
    """The answer texts one labelled row gives for `task` (several for 'caption': one per caption)."""
    try:
        if task.answer == "caption":
            out = [str(c) for c in row["captions"]]
        elif task.answer == "text":
            out = [str(row["answer"])]
        else:
            labels = row["labels"]
            if task.answer == "labels":
                values = labels.values() if isinstance(labels, Mapping) else labels
                out = [", ".join(str(v) for v in values)]
            else:
                out = [str(labels[task.label_key])]
    except (KeyError, IndexError, TypeError) as e:
        raise UserError(f"{where}: no {task.answer} answer for task {task.name!r} ({type(e).__name__}: {e})") \
            from None
    out = [a.strip() for a in out if a and a.strip()]
    if not out:
        raise UserError(f"{where}: empty answer for task {task.name!r}")
    return out


def to_records(rows: Iterable[Mapping], task: Task, where: str = "manifest") -> list[dict]:
    """Labelled rows (preprocessing manifest format) -> prompt/answer records of `task`."""
    out = []
    for i, row in enumerate(rows):
        texts = answers(row, task, f"{where}:{i + 1}")
        for k, a in enumerate(texts):
            rec = {k_: v for k_, v in row.items() if k_ not in ("captions", "answer")}
            rec.update(task=task.name, prompt=task.prompt, answer=a, captions=[a])
            if len(texts) > 1 and "id" in rec:     # one record per caption: ids stay unique for preprocessing
                rec["id"] = f"{rec['id']}#{k}"
            out.append(rec)
    return out


def write_records(path: str, records: Sequence[Mapping]) -> None:
    """JSON lines, written atomically."""
    files.write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def read_records(path: str) -> list[dict]:
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{i}: not JSON ({e.msg})") from None
            for k in ("prompt", "answer", "task"):
                if not isinstance(rec.get(k), str):
                    raise UserError(f"{path}:{i}: a prompt/answer record needs a string {k!r}")
            out.append(rec)
    return out


def encode(tokenizer, prompt: str, answer: str, max_length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (input_ids, attention_mask, loss_mask), int32 (max_length,). `tokenizer`: clap_jax's ClapTokenizer
    (GPT-2 BPE, '!' = 0 padding). The prompt is kept whole; a long answer is cut keeping its final
    <|endoftext|>."""
    from clap_jax.text.tokenizer import EOT, EOT_ID, PAD_ID

    bpe = tokenizer._tok
    p = list(bpe(prompt, add_special_tokens=True)["input_ids"]) if prompt else []
    a = list(bpe(" " + answer + " " + EOT, add_special_tokens=True)["input_ids"])
    room = max_length - len(p)
    if room < 2:
        raise UserError(f"prompt {prompt!r} takes {len(p)} of the {max_length} tokens: no room for an answer")
    if len(a) > room:
        a = a[:room - 1] + [EOT_ID]
    ids = np.full((max_length,), PAD_ID, np.int32)
    mask = np.zeros((max_length,), np.int32)
    loss = np.zeros((max_length,), np.int32)
    ids[:len(p) + len(a)] = p + a
    mask[:len(p) + len(a)] = 1
    loss[len(p):len(p) + len(a)] = 1
    return ids, mask, loss


def encode_batch(tokenizer, prompts: Sequence[str], answers_: Sequence[str], max_length: int) -> dict:
    rows = [encode(tokenizer, p, a, max_length) for p, a in zip(prompts, answers_)]
    return {"input_ids": np.stack([r[0] for r in rows]), "attention_mask": np.stack([r[1] for r in rows]),
            "loss_mask": np.stack([r[2] for r in rows])}


# ============================================================================================ task mixture

class TaskSampler:
    """The task of each training batch: drawn with probability weight / sum(weights), a pure function of
    (seed, batch number), so a resumed run draws the same sequence."""

    def __init__(self, weights: Sequence[float], seed: int = 0):
        w = np.asarray(weights, np.float64)
        if w.ndim != 1 or len(w) == 0 or (w < 0).any() or w.sum() <= 0:
            raise UserError(f"task weights must be >= 0 with a positive sum, got {list(weights)}")
        self.p = w / w.sum()
        self.cdf = np.cumsum(self.p)
        self.seed = int(seed)

    def task(self, index: int) -> int:
        u = np.random.default_rng([self.seed, int(index), 0x7A5C]).random()
        return int(min(np.searchsorted(self.cdf, u, side="right"), len(self.p) - 1))


class MixtureIterator:
    """One batch at a time from the task the sampler draws for that batch: `iterators` (one per task, each with
    get_state / set_state like the data pipeline's) in the sampler's order. Its state is the batch count and
    every task iterator's state, so a restored mixture continues exactly."""

    def __init__(self, iterators: Sequence[Iterator], weights: Sequence[float], seed: int = 0):
        if len(iterators) != len(weights):
            raise UserError(f"{len(iterators)} task iterators for {len(weights)} weights")
        self.iterators, self.sampler, self.index = list(iterators), TaskSampler(weights, seed), 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        t = self.sampler.task(self.index)
        batch = next(self.iterators[t])
        self.index += 1
        return batch

    def get_state(self) -> dict:
        return {"index": self.index, "tasks": [it.get_state() for it in self.iterators]}

    def set_state(self, state: dict) -> None:
        if len(state["tasks"]) != len(self.iterators):
            raise ValueError(f"mixture state holds {len(state['tasks'])} tasks, this mixture has "
                             f"{len(self.iterators)}")
        self.index = int(state["index"])
        for it, s in zip(self.iterators, state["tasks"]):
            it.set_state(s)

    def close(self) -> None:
        for it in self.iterators:
            if hasattr(it, "close"):
                it.close()


# ============================================================================================ built-in data

# The built-in synthetic dataset (clap_jax.data.synthetic) as a task mixture: its four attributes as single-label
# classification prompts (labels[i] of its manifests: sound, pitch, loudness, rhythm) and its captions.
BUILTIN_TASKS = (
    Task("sound", "what sound is this?", "label", 0, 1.0),
    Task("pitch", "what is the pitch?", "label", 1, 1.0),
    Task("loudness", "how loud is it?", "label", 2, 1.0),
    Task("rhythm", "is it heard once or repeated?", "label", 3, 1.0),
    Task("captioning", "caption this audio.", "caption", None, 2.0),
)


def builtin_task_dir(data_root: str, name: str) -> str:
    return f"{str(data_root).rstrip('/')}/tasks/{name}"


def builtin_class_names(task: Task) -> list[str] | None:
    """The candidate answers of a built-in classification task (None for captioning)."""
    from clap_jax.data import synthetic

    if task.answer != "label":
        return None
    return [list(synthetic.SOUNDS), list(synthetic.PITCHES), list(synthetic.LOUDNESS),
            list(synthetic.RHYTHMS)][int(task.label_key)]


def build_builtin_tasks(data_root: str, tasks: Sequence[Task] = BUILTIN_TASKS, workers: int = 1,
                        sample_rate: int | None = None, progress: bool = False) -> dict[str, str]:
    """Prompt/answer records of `tasks` from a built-in dataset's manifests (train.jsonl and eval.jsonl under
    `data_root`, as clap_jax.data.synthetic writes them), preprocessed into <data_root>/tasks/<name> with splits
    'train' and 'eval' (the held-out clips). Returns {task name: TFRecord dir}. A finished task directory
    (its dataset.json written last by the preprocessing) is kept."""
    import os

    from clap_jax.data import pipeline, preprocess

    manifests = [os.path.join(data_root, f"{s}.jsonl") for s in ("train", "eval")]
    manifests = [m for m in manifests if os.path.isfile(m)]
    if not manifests:
        raise UserError(f"{data_root}: no train.jsonl / eval.jsonl (build it with python -m clap_jax.data.synthetic)")
    if sample_rate is None:
        meta = pipeline.read_metadata(os.path.join(data_root, "tfrecords")) or {}
        sample_rate = int((meta.get("settings") or {}).get("sample_rate") or 16000)
    out, rows = {}, None
    for task in tasks:
        d = builtin_task_dir(data_root, task.name)
        out[task.name] = d
        if pipeline.read_metadata(d) is not None:
            continue
        if rows is None:            # the manifests, read once for every task still to build
            rows = {}
            for m in manifests:
                with open(m, encoding="utf-8") as f:
                    rows[m] = [json.loads(line) for line in f if line.strip()]
        recs = [r for m in manifests for r in to_records(rows[m], task, where=m)]
        rec_path = os.path.join(data_root, "tasks", f"{task.name}.jsonl")
        os.makedirs(os.path.dirname(rec_path), exist_ok=True)
        write_records(rec_path, recs)
        preprocess.run([rec_path], d, root=data_root, workers=workers, progress=progress,
                       opts=preprocess.Options(sample_rate=sample_rate, audio_format="pcm16", label_captions="never",
                                               examples_per_shard=2000))
    return out
