"""The one prompt and output schema of epm-edge, shared by training, export checks and inference.

A prompt is a shared instruction prefix (identical for every pair, so runtimes compute it once)
followed by a pair suffix, framed by the model's own chat template (`ChatFormat`, read from the
model each runtime loads; ChatML for the shipped SmolLM2 model). The answer starts with the
decision token, so one forward pass scores a pair: P(match) = softmax over the logits of the `Yes`
and `No` tokens at the answer position.
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
from dataclasses import dataclass, field, replace

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

# The pair suffix is A's part then B's part: pairs that share an A record share its tokens too.
_HEAD = "A: {a}\n"
_RECORD_B = "B: {b}"
# Stand-ins rendered through a chat template to find where the pair and the answer go.
_PAIR_SLOT, _ANSWER_SLOT = "\u27e6pair\u27e7", "\u27e6answer\u27e7"


def pair_head(a: str) -> str:
    """The part of a pair suffix that depends on record A only."""
    return _HEAD.format(a=a)


@dataclass(frozen=True)
class ChatFormat:
    """The prompt as a model's chat template frames it: the shared prefix (template opening, system
    text, instruction), the pair, then `answer_start` (closing the user turn, opening the answer)."""

    prefix: str
    answer_start: str
    end_of_turn: str  # ends an answer

    def pair_tail(self, b: str) -> str:
        """The rest of a pair suffix: record B and the start of the answer."""
        return _RECORD_B.format(b=b) + self.answer_start

    def pair_suffix(self, a: str, b: str) -> str:
        """The per-pair part of the prompt; `a` and `b` are serialized records."""
        return pair_head(a) + self.pair_tail(b)

    def pair_segments(self, a: str, b: str) -> list[tuple[str, bool]]:
        """The pair suffix as (text, is_template) pieces, for tokenizers: record text is data.

        A CSV value or column name holding `<|im_end|>`, `<file_sep>` or any other special token of
        the vocabulary must not become that control token (it can end the turn and write the
        answer), so runtimes parse special tokens in the template pieces only. The data piece runs up
        to the first template marker, where whole-string special parsing splits the text too, so
        ordinary records get exactly the ids that tokenizing `pair_suffix` gives.
        """
        return [(pair_head(a) + _RECORD_B.format(b=b), False), (self.answer_start, True)]

    def full_prompt(self, a: str, b: str) -> str:
        return self.prefix + self.pair_suffix(a, b)

    def prompt_segments(self, text: str) -> list[tuple[str, bool]]:
        """A `full_prompt` string back as (text, is_template) pieces: trainers receive prompts as
        strings and must tokenize them as the runtimes do (`pair_segments`)."""
        if not (text.startswith(self.prefix) and text.endswith(self.answer_start)):
            raise ValueError("not a prompt of this schema: it must start with the prefix and end at the answer start")
        return [(self.prefix, True), (text[len(self.prefix):-len(self.answer_start)], False),
                (self.answer_start, True)]


# ChatML, the chat format of the SmolLM2 family that epm-edge ships, and what a model without a
# chat template gets.
CHATML = ChatFormat(prefix=f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{INSTRUCTION}\n",
                    answer_start="<|im_end|>\n<|im_start|>assistant\n", end_of_turn="<|im_end|>")
# The shipped model's format, for training and tools that work with it.
PREFIX, END_OF_TURN = CHATML.prefix, CHATML.end_of_turn
pair_suffix, pair_segments, full_prompt = CHATML.pair_suffix, CHATML.pair_segments, CHATML.full_prompt


def chat_format(template: str | None, bos_token: str = "", eos_token: str = "", model: object = "the model",
                add_bos: bool = False) -> ChatFormat:
    """The ChatFormat a Jinja chat template (a GGUF's `tokenizer.chat_template`, a tokenizer's
    `chat_template`) gives the prompt: rendered as transformers renders it, with the system text as a
    system turn, or at the head of the user turn where the template has no system role. No template
    (a base model): ChatML, after the BOS token where the tokenizer adds one (`add_bos`). A template
    that does not place the user text and the answer is a ModelError naming `model`."""
    if not template:
        return replace(CHATML, prefix=bos_token + CHATML.prefix) if add_bos and bos_token else CHATML
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception

    def render(messages, generation):
        return env.from_string(template).render(messages=messages, add_generation_prompt=generation,
                                                bos_token=bos_token, eos_token=eos_token)

    user = f"{INSTRUCTION}\n{_PAIR_SLOT}"
    answer = {"role": "assistant", "content": _ANSWER_SLOT}
    try:
        try:
            messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
            opening = render(messages, True)
        except jinja2.TemplateError:  # no system role (Gemma 2, Mistral): the system text leads the user turn
            messages = [{"role": "user", "content": f"{SYSTEM}\n\n{user}"}]
            opening = render(messages, True)
        closing = render(messages + [answer], False)
    except jinja2.TemplateError as e:
        raise ModelError(f"{model}: its chat template does not render: {e}") from None
    prefix, found, answer_start = opening.partition(_PAIR_SLOT)
    after_answer = closing.partition(_ANSWER_SLOT)[2]
    if not found or not answer_start or not after_answer.strip():
        raise ModelError(f"{model}: its chat template does not frame a user turn and an answer")
    return ChatFormat(prefix, answer_start, after_answer.strip().split()[0])


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
