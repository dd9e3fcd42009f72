"""The one prompt and output schema of epm-edge, shared by training, export checks and inference.

A prompt is a shared instruction prefix (identical for every pair, so runtimes compute it once)
followed by a pair suffix. The answer starts with the decision token, so one forward pass scores a
pair: P(match) = softmax over the logits of the `Yes` and `No` tokens at the answer position.
A structured rationale may follow the decision, one line of evidence per attribute:

    Yes
    brand: sony | sony | same
    model: pslx350h | ps-lx350h | same

Bump PROMPT_VERSION whenever any text here changes: trained adapters and exported artifacts
record it, and a mismatch is reported.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from epm_edge.errors import ModelError

PROMPT_VERSION = "epm-v1"

YES, NO = "Yes", "No"
VERDICTS = ("same", "different", "missing")

SYSTEM = "You are a product matching expert for e-commerce catalogs."
INSTRUCTION = (
    "Do listing A and listing B refer to the same real-world product? Ignore promotions, shop "
    "tags, shipping and bundle wording; compare brand, model, variant, capacity and pack size. "
    "Answer Yes or No, then list the evidence as `attribute: value A | value B | same|different|missing`."
)

# ChatML, the chat format of the SmolLM2 family that epm-edge ships.
PREFIX = (
    f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
    f"<|im_start|>user\n{INSTRUCTION}\n"
)
# The pair suffix is A's part then B's part: pairs that share an A record share its tokens too.
_HEAD = "A: {a}\n"
_RECORD_B = "B: {b}"
_ANSWER_START = "<|im_end|>\n<|im_start|>assistant\n"
_TAIL = _RECORD_B + _ANSWER_START
END_OF_TURN = "<|im_end|>"


def pair_head(a: str) -> str:
    """The part of a pair suffix that depends on record A only."""
    return _HEAD.format(a=a)


def pair_tail(b: str) -> str:
    """The rest of a pair suffix: record B and the start of the answer."""
    return _TAIL.format(b=b)


def pair_suffix(a: str, b: str) -> str:
    """The per-pair part of the prompt; `a` and `b` are serialized records."""
    return pair_head(a) + pair_tail(b)


def pair_segments(a: str, b: str) -> list[tuple[str, bool]]:
    """The pair suffix as (text, is_template) pieces, for tokenizers: record text is data.

    A CSV value or column name holding `<|im_end|>`, `<file_sep>` or any other special token of the
    vocabulary must not become that control token (it can end the turn and write the answer), so
    runtimes parse special tokens in the template pieces only. The data piece runs up to the first
    template marker, where whole-string special parsing splits the text too, so ordinary records
    get exactly the ids that tokenizing `pair_suffix` gives.
    """
    return [(pair_head(a) + _RECORD_B.format(b=b), False), (_ANSWER_START, True)]


def full_prompt(a: str, b: str) -> str:
    return PREFIX + pair_suffix(a, b)


def prompt_segments(text: str) -> list[tuple[str, bool]]:
    """A `full_prompt` string back as (text, is_template) pieces: trainers receive prompts as strings
    and must tokenize them as the runtimes do (`pair_segments`)."""
    if not (text.startswith(PREFIX) and text.endswith(_ANSWER_START)):
        raise ValueError("not a prompt of this schema: it must start with PREFIX and end at the answer start")
    return [(PREFIX, True), (text[len(PREFIX):-len(_ANSWER_START)], False), (_ANSWER_START, True)]


def match_probability(logit_yes: float, logit_no: float, model: object = "the model") -> float:
    """P(match) from the two decision logits (a two-way softmax). Non-finite logits (garbled or badly
    quantized weights) are a ModelError naming `model`, never a score."""
    d = logit_yes - logit_no
    if not math.isfinite(d):
        raise ModelError(f"{model}: the model gave non-finite logits (corrupt or badly quantized weights)")
    return 1.0 / (1.0 + math.exp(-d)) if d > -700 else 0.0


@dataclass
class Evidence:
    attribute: str
    a: str
    b: str
    verdict: str  # one of VERDICTS

    def line(self) -> str:
        return f"{self.attribute}: {self.a} | {self.b} | {self.verdict}"


@dataclass
class Answer:
    match: bool
    evidence: list[Evidence] = field(default_factory=list)

    def text(self) -> str:
        lines = [YES if self.match else NO] + [e.line() for e in self.evidence]
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"match": self.match,
                "evidence": [{"attribute": e.attribute, "a": e.a, "b": e.b, "verdict": e.verdict}
                             for e in self.evidence]}


class AnswerFormatError(ValueError):
    pass


_LINE = re.compile(r"^([^:\n|]{1,40}): ([^|\n]*) \| ([^|\n]*) \| (same|different|missing)$")


def parse_answer(text: str) -> Answer:
    """Parse a model answer; raises AnswerFormatError if it does not fit the schema."""
    text = text.split(END_OF_TURN)[0].strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines or lines[0] not in (YES, NO):
        raise AnswerFormatError(f"answer must start with '{YES}' or '{NO}' on its own line: {text[:60]!r}")
    evidence = []
    for ln in lines[1:]:
        m = _LINE.match(ln)
        if not m:
            raise AnswerFormatError(f"evidence line does not fit `attribute: a | b | verdict`: {ln[:80]!r}")
        evidence.append(Evidence(m[1].strip(), m[2].strip(), m[3].strip(), m[4]))
    return Answer(lines[0] == YES, evidence)


# The answer schema's limits: the generation grammar, the training data builder (train/evidence.py)
# and the RL format reward (train/rewards.py) all read them from here.
MAX_EVIDENCE = 4  # evidence lines
MAX_ATTRIBUTE_CHARS = 24
MAX_VALUE_CHARS = 40
ATTRIBUTE_CHARS = "a-z_ "  # the characters of an attribute name, as a regex class body
# Bounded lengths keep one evidence line under MAX_LINE_CHARS, so a generation budget above that
# always holds one complete line.
MAX_LINE_CHARS = MAX_ATTRIBUTE_CHARS + 2 + MAX_VALUE_CHARS + 3 + MAX_VALUE_CHARS + 3 + len("different")
# Constrains generation to the schema above (llama.cpp GBNF).
GRAMMAR = rf"""
root     ::= decision ("\n" evidence){{1,{MAX_EVIDENCE}}}
decision ::= "Yes" | "No"
evidence ::= attr ": " value " | " value " | " verdict
attr     ::= [{ATTRIBUTE_CHARS}]{{1,{MAX_ATTRIBUTE_CHARS}}}
value    ::= [^|\n]{{0,{MAX_VALUE_CHARS}}}
verdict  ::= "same" | "different" | "missing"
"""


def complete_lines(text: str) -> str:
    """A generation cut off by its token budget, without its unfinished last line."""
    lines = text.split("\n")
    return "\n".join(lines[:-1]) if len(lines) > 2 else text
