"""Training examples in the one prompt/answer schema, from DeepMatcher-layout benchmark dirs.

Each example is a prompt (`ChatFormat.full_prompt(A, B)`, in the base model's chat format) and a completion (decision
line, evidence lines, end of turn). Evidence comes from a teacher rationale where the set dir
holds one (`rationales_*.csv`) and agrees with the gold label, else from the records (silver).

Sampling keeps every positive up to a per-set cap, all hard negatives that fit, and fills the
remaining negatives at random, so each set and both classes get a fair share of the steps.
The test split is never read here.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from epm_edge import prompt
from epm_edge.data import load_pair_set, serialize_record
from epm_edge.data.augment import noisy_pair
from epm_edge.errors import EpmError
from epm_edge.train.evidence import silver_answer
from epm_edge.train.teacher import TeacherRationale, read_teacher_rationales

TRAINING_SPLITS = ("train", "valid")


@dataclass
class DataConfig:
    dirs: list[Path]
    neg_ratio: float = 2.0  # sampled negatives per positive
    max_per_set: int | None = None  # examples per set and split; None: as many as the ratio allows
    noise: float = 0.3  # share of training examples given seller noise; 0 switches it off
    # share of training examples shown as B/A: the model reads one order, and catalogs come either way
    swap: float = 0.0
    teacher: bool = True  # use teacher rationales found in the set dirs
    record_tokens: int = 64  # token budget per serialized record, as in `epm-edge match`
    # False: the completion is the decision alone. The decision only emerged after ~150 steps here;
    # 2-token answers make those steps ~2x faster than answers with ~45 evidence tokens.
    rationale: bool = True
    seed: int = 0

    def to_json(self) -> dict:
        return {**self.__dict__, "dirs": [str(d) for d in self.dirs]}


@dataclass
class _Candidate:
    a: dict[str, str]
    b: dict[str, str]
    label: bool
    hard: bool = False
    teacher: TeacherRationale | None = field(default=None, repr=False)


def _title(record: dict[str, str]) -> str:
    value = next((v for k, v in record.items() if k.lower() in ("title", "name")), "")
    return " ".join(value.split())


def _teacher_index(root: Path) -> dict[tuple[str, str], TeacherRationale]:
    """Teacher rationales of a set, keyed by (title A, title B) in both orders."""
    index = {}
    for path in sorted(root.glob("rationales_*.csv")):
        for r in read_teacher_rationales(path):
            index[(" ".join(r.title_a.split()), " ".join(r.title_b.split()))] = r
            index.setdefault((" ".join(r.title_b.split()), " ".join(r.title_a.split())), r.swapped())
    return index


def _candidates(root: Path, split: str, use_teacher: bool) -> list[_Candidate]:
    if split not in TRAINING_SPLITS:
        raise EpmError(f"training data comes from {' or '.join(TRAINING_SPLITS)}, never '{split}': "
                       "the test split is for the final evaluation only")
    ps = load_pair_set(root)
    pairs = ps.split(split)
    teachers = _teacher_index(root) if use_teacher else {}
    out = []
    for a_id, b_id, label, hard in zip(pairs.a_ids, pairs.b_ids, pairs.labels, pairs.hard_negative):
        a, b = ps.a.records[a_id], ps.b.records[b_id]
        out.append(_Candidate(a, b, bool(label), bool(hard), teachers.get((_title(a), _title(b)))))
    if split == "train" and teachers:
        out += _standalone_teacher(ps, teachers)
    return out


def _standalone_teacher(ps, teachers: dict) -> list[_Candidate]:
    """Teacher pairs whose titles are not both in the catalogs: offers outside every split.

    Every labelled pair references catalog records, so a pair with a title unknown to both
    catalogs cannot be a valid or test pair; those pairs train on their titles alone.
    """
    known = {_title(r) for r in ps.a.records.values()} | {_title(r) for r in ps.b.records.values()}
    seen, out = set(), []
    for (ta, tb), r in teachers.items():
        if (ta in known and tb in known) or (tb, ta) in seen:
            continue
        seen.add((ta, tb))
        out.append(_Candidate({"title": ta}, {"title": tb}, r.match, False, r))
    return out


def _sample(cands: list[_Candidate], cfg: DataConfig, rng: random.Random) -> list[_Candidate]:
    pos = [c for c in cands if c.label]
    hard = [c for c in cands if not c.label and c.hard]
    other = [c for c in cands if not c.label and not c.hard]
    n_pos = len(pos) if cfg.max_per_set is None else min(len(pos), round(cfg.max_per_set / (1 + cfg.neg_ratio)))
    n_neg = round(n_pos * cfg.neg_ratio)
    chosen_hard = rng.sample(hard, min(len(hard), n_neg))
    return (rng.sample(pos, n_pos) + chosen_hard
            + rng.sample(other, min(len(other), n_neg - len(chosen_hard))))


def _swapped(c: _Candidate) -> _Candidate:
    return _Candidate(c.b, c.a, c.label, c.hard, c.teacher.swapped() if c.teacher is not None else None)


def _example(c: _Candidate, set_name: str, cfg: DataConfig, rng: random.Random, noise: bool, swap: bool,
             fmt: prompt.ChatFormat) -> dict:
    c = _swapped(c) if swap else c
    a, b = noisy_pair(c.a, c.b, rng) if noise else (c.a, c.b)
    text_a, text_b = serialize_record(a, cfg.record_tokens), serialize_record(b, cfg.record_tokens)
    teacher = c.teacher.answer(text_a, text_b) if c.teacher is not None and c.teacher.match == c.label else None
    # silver evidence reads the clean records: noise must not become evidence
    answer = teacher or silver_answer(c.label, c.a, c.b, text_a, text_b)
    source = "teacher" if teacher else "silver"
    if not cfg.rationale:
        answer.evidence = []
    return {"prompt": fmt.full_prompt(text_a, text_b), "completion": answer.text() + fmt.end_of_turn,
            "label": int(c.label), "set": set_name, "source": source, "noise": noise, "swapped": swap,
            "text_a": text_a, "text_b": text_b}


def build_examples(cfg: DataConfig, split: str = "train", limit: int | None = None,
                   fmt: prompt.ChatFormat = prompt.CHATML) -> list[dict]:
    """Balanced, shuffled examples of `split` from every dir in cfg.dirs (seeded: same config, same list),
    framed in the base model's chat format `fmt`.

    Seller noise and swapped order are applied to the train split only, so validation measures
    clean pairs in the catalogs' order.
    """
    # Separate streams: switching noise or swapping on or off leaves the sampled pairs and their
    # order unchanged (and which pairs get noise, as swapping draws from a stream of its own).
    rng, noise_rng = random.Random(f"{cfg.seed}-{split}"), random.Random(f"{cfg.seed}-{split}-noise")
    swap_rng = random.Random(f"{cfg.seed}-{split}-swap")
    examples = []
    for root in cfg.dirs:
        root = Path(root)
        for c in _sample(_candidates(root, split, cfg.teacher), cfg, rng):
            noisy = split == "train" and noise_rng.random() < cfg.noise
            swap = split == "train" and swap_rng.random() < cfg.swap
            examples.append(_example(c, root.name, cfg, noise_rng, noisy, swap, fmt))
    rng.shuffle(examples)
    return examples[:limit] if limit else examples


def summary(examples: list[dict]) -> dict:
    """Counts per set, label, evidence source, noise and order: what the provenance JSON records."""
    return {"examples": len(examples),
            "per_set": dict(Counter(e["set"] for e in examples)),
            "positives": sum(e["label"] for e in examples),
            "per_source": dict(Counter(e["source"] for e in examples)),
            "with_noise": sum(e["noise"] for e in examples),
            "swapped": sum(e["swapped"] for e in examples)}
