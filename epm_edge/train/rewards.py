"""Reward components for RL, in trl's reward-function form: `f(completions, **columns) -> [float]`.

format: the answer parses and fits the schema's grammar limits; label: its decision equals the
gold label; judge: a reasoning score from a judge (train/judge.py). trl weights and logs each
component per step under its function name.
"""

from __future__ import annotations

import re

from epm_edge import prompt
from epm_edge.train.evidence import MAX_LINES, MAX_VALUE

_ATTRIBUTE = re.compile(rf"[{prompt.ATTRIBUTE_CHARS}]{{1,{prompt.MAX_ATTRIBUTE_CHARS}}}")  # as prompt.GRAMMAR


def parse_strict(text: str) -> prompt.Answer | None:
    """The answer if it parses and fits the grammar (1..MAX_LINES evidence lines, attribute and value limits)."""
    try:
        answer = prompt.parse_answer(text)
    except prompt.AnswerFormatError:
        return None
    ok = 1 <= len(answer.evidence) <= MAX_LINES and all(
        _ATTRIBUTE.fullmatch(e.attribute) and len(e.a) <= MAX_VALUE and len(e.b) <= MAX_VALUE
        for e in answer.evidence)
    return answer if ok else None


def format_reward(completions: list[str], **_) -> list[float]:
    return [float(parse_strict(c) is not None) for c in completions]


def label_reward(completions: list[str], label: list[int], **_) -> list[float]:
    """1 when the decision line equals the gold label; the evidence need not parse for this."""
    first = [c.strip().split("\n", 1)[0].strip() for c in completions]
    return [float(f == (prompt.YES if int(y) else prompt.NO)) for f, y in zip(first, label)]


def judge_reward(completions: list[str], text_a: list[str], text_b: list[str], judge=None, **_) -> list[float]:
    return judge.score(completions, text_a, text_b)
