"""Judges of reasoning quality: a score in [0, 1] for an answer's evidence, given the two listings.

`EvidenceJudge` (default) is deterministic and offline: cited values must occur in the listings,
`same`/`different` verdicts must agree with normalised comparison where it is clear-cut, and the
decision must follow from the evidence. `LlamaCppJudge` asks any local GGUF model a rubric
question and scores P(Yes); it plugs in where a stronger judge is at hand.
"""

from __future__ import annotations

import math
import os
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

from epm_edge import prompt
from epm_edge.train.evidence import compare, grounded
from epm_edge.train.rewards import parse_strict


class Judge(Protocol):
    name: str

    def score(self, answers: Sequence[str], texts_a: Sequence[str], texts_b: Sequence[str]) -> list[float]: ...


@dataclass
class EvidenceJudge:
    grounding: float = 0.4
    agreement: float = 0.3
    consistency: float = 0.3
    name: str = "evidence"

    def score_one(self, answer_text: str, text_a: str, text_b: str) -> float:
        answer = parse_strict(answer_text)
        if answer is None or not answer.evidence:
            return 0.0
        ev = answer.evidence
        cited = [(e.a, text_a) for e in ev if e.a] + [(e.b, text_b) for e in ev if e.b]
        grounding = sum(grounded(v, t) for v, t in cited) / len(cited) if cited else 0.0
        agreement = sum(compare(e.a, e.b) in (None, e.verdict) for e in ev) / len(ev)
        same = sum(e.verdict == "same" for e in ev)
        different = sum(e.verdict == "different" for e in ev)
        consistent = same > different if answer.match else different > 0
        return self.grounding * grounding + self.agreement * agreement + self.consistency * consistent

    def score(self, answers, texts_a, texts_b) -> list[float]:
        return [self.score_one(*x) for x in zip(answers, texts_a, texts_b)]


RUBRIC = """You grade the reasoning of a product matching model.
Listing A: {a}
Listing B: {b}
The model's answer (decision, then evidence lines `attribute: value A | value B | verdict`):
{answer}
Rubric: every value cited occurs in its listing; `same` needs equal values, `different` needs
conflicting values; the Yes/No decision follows from the evidence.
Does the answer meet the rubric? Reply Yes or No.
Reply:"""


class LlamaCppJudge:
    """P(Yes) of a local GGUF model asked `rubric` (with {a}, {b}, {answer}); malformed answers score 0."""

    name = "llamacpp"

    def __init__(self, path: str | Path, rubric: str = RUBRIC, threads: int | None = None, n_ctx: int = 2048):
        import llama_cpp as lc

        from epm_edge.errors import ModelError
        from epm_edge.runtime.llamacpp import load_model

        self.lc, self.rubric, self.n_ctx = lc, rubric, n_ctx
        self.model = load_model(Path(path))
        self.vocab = lc.llama_model_get_vocab(self.model)
        params = lc.llama_context_default_params()
        params.n_ctx = params.n_batch = n_ctx
        params.n_threads = params.n_threads_batch = threads or os.cpu_count() or 1
        self.ctx = lc.llama_init_from_model(self.model, params)
        if not self.ctx:
            raise ModelError(f"{path}: llama.cpp could not create a context for the judge")
        self.yes = {self._tokens(w)[0] for w in ("Yes", " Yes")}
        self.no = {self._tokens(w)[0] for w in ("No", " No")}

    def _tokens(self, text: str, special: bool = False) -> list[int]:
        raw = text.encode("utf-8")
        buf = (self.lc.llama_token * (len(raw) + 16))()
        n = self.lc.llama_tokenize(self.vocab, raw, len(raw), buf, len(buf), special, False)
        return list(buf[:max(n, 0)])

    def _rubric_tokens(self, fields: dict[str, str]) -> list[int]:
        """The rubric's own text may hold chat markers (special); listings and answers are data."""
        tokens = []
        for literal, name, _, _ in string.Formatter().parse(self.rubric):
            tokens += self._tokens(literal, special=True)
            if name is not None:
                tokens += self._tokens(fields[name])
        return tokens

    def score_one(self, answer_text: str, text_a: str, text_b: str) -> float:
        lc = self.lc
        if parse_strict(answer_text) is None:
            return 0.0
        fields = {"a": text_a, "b": text_b, "answer": answer_text.split(prompt.END_OF_TURN)[0].strip()}
        tokens = self._rubric_tokens(fields)[-(self.n_ctx - 1):]
        lc.llama_memory_clear(lc.llama_get_memory(self.ctx), True)
        arr = (lc.llama_token * len(tokens))(*tokens)
        if lc.llama_decode(self.ctx, lc.llama_batch_get_one(arr, len(tokens))) != 0:
            raise RuntimeError("llama_decode failed in the judge")
        logits = lc.llama_get_logits_ith(self.ctx, -1)
        d = max(logits[t] for t in self.yes) - max(logits[t] for t in self.no)
        return 1.0 / (1.0 + math.exp(-d)) if d > -700 else 0.0

    def score(self, answers, texts_a, texts_b) -> list[float]:
        return [self.score_one(*x) for x in zip(answers, texts_a, texts_b)]

    def close(self) -> None:
        if getattr(self, "ctx", None):
            self.lc.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            self.lc.llama_model_free(self.model)
            self.model = None


def make_judge(spec: str = "evidence", rubric: str | None = None, threads: int | None = None) -> Judge:
    """`evidence` for the offline judge, or the path of a .gguf for an LLM judge."""
    if spec == "evidence":
        return EvidenceJudge()
    return LlamaCppJudge(spec, rubric=rubric or RUBRIC, threads=threads)
