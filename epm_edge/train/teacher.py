"""Teacher rationales: LLM-written structured rationales converted into the project's answer schema.

Input: a CSV with columns `prompt` and `completion` (the layout of WDC Products'
`rationales_gpt4.csv`). The prompt names the two titles (`Entity 1: '...'. Entity 2: '...'.`);
the completion holds the decision and one line per attribute:

    Yes. attribute=brand|||importance=0.8|||values=Sony###Sony|||similarity=1.00
    attribute=model|||importance=0.9|||values=FE 24-240mm###FE 24-240mm|||similarity=0.98
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from epm_edge.data.csvfile import read_csv
from epm_edge.errors import InputError
from epm_edge.prompt import Answer, Evidence
from epm_edge.train.evidence import MAX_LINES, clean_value, grounded

SAME_SIMILARITY = 0.8  # teacher similarity at or above this reads as `same`
_ENTITIES = re.compile(r"Entity 1: '(.*)'\. Entity 2: '(.*)'\.\s*$", re.S)
_DECISION = re.compile(r"^\s*(Yes|No)\.\s*")


@dataclass
class TeacherLine:
    attribute: str
    importance: float
    a: str
    b: str
    similarity: float

    def evidence(self) -> Evidence:
        a, b = clean_value(self.a), clean_value(self.b)
        verdict = "missing" if not (a and b) else ("same" if self.similarity >= SAME_SIMILARITY else "different")
        return Evidence(self.attribute, a, b, verdict)


@dataclass
class TeacherRationale:
    title_a: str
    title_b: str
    match: bool
    lines: list[TeacherLine]

    def swapped(self) -> "TeacherRationale":
        return TeacherRationale(self.title_b, self.title_a, self.match,
                                [TeacherLine(ln.attribute, ln.importance, ln.b, ln.a, ln.similarity) for ln in self.lines])

    def answer(self, text_a: str, text_b: str) -> Answer | None:
        """The rationale in the schema: most important lines whose values occur in the listings.

        Lines citing values the listings do not show (GPT-4 sometimes cites currencies or specs
        from fields it was not given) are dropped; None when no line is left.
        """
        ranked = sorted(self.lines, key=lambda ln: -ln.importance)
        evidence = [e for e in (ln.evidence() for ln in ranked) if grounded(e.a, text_a) and grounded(e.b, text_b)]
        return Answer(self.match, evidence[:MAX_LINES]) if evidence else None


def _attribute(name: str) -> str:
    # The answer grammar allows `[a-z_ ]{1,24}`.
    return re.sub(r"[^a-z]+", "_", name.lower()).strip("_")[:24].strip("_") or "attribute"


def _parse_line(path: Path, row: int, line: str) -> TeacherLine | None:
    fields = dict(part.split("=", 1) for part in line.split("|||") if "=" in part)
    if "###" not in fields.get("values", "###"):
        return None  # a few teacher lines cite one value only: nothing to compare, skip the line
    try:
        a, b = fields["values"].split("###", 1)
        return TeacherLine(_attribute(fields["attribute"]), float(fields.get("importance", 0)), a, b,
                           float(fields["similarity"]))
    except (KeyError, ValueError):
        raise InputError(path, f"rationale line does not fit `attribute=..|||importance=..|||values=A###B|||"
                               f"similarity=..`: {line[:80]!r}", row=row, column="completion") from None


def read_teacher_rationales(path: str | Path) -> list[TeacherRationale]:
    path = Path(path)
    header, rows = read_csv(path)
    for col in ("prompt", "completion"):
        if col not in header:
            raise InputError(path, "required column missing from header", row=1, column=col)
    out = []
    for number, row in rows:
        entities = _ENTITIES.search(row["prompt"])
        if not entities:
            raise InputError(path, "prompt does not name `Entity 1: '...'. Entity 2: '...'.`", row=number, column="prompt")
        decision = _DECISION.match(row["completion"])
        if not decision:
            raise InputError(path, "completion must start with `Yes.` or `No.`", row=number, column="completion")
        body = row["completion"][decision.end():]
        lines = [_parse_line(path, number, ln.strip()) for ln in body.splitlines() if ln.strip()]
        out.append(TeacherRationale(entities[1], entities[2], decision[1] == "Yes", [ln for ln in lines if ln]))
    return out
