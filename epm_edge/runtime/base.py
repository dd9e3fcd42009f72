"""The scorer protocol every runtime implements."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence

import numpy as np


class Scorer(Protocol):
    name: str
    path: Path  # the artifact scored with (a trained adapter's: its cached GGUF)
    threshold: float | None  # decision threshold stored with the model, if any
    metadata: dict  # provenance read from the artifact (prompt version, hashes, quant, ...)

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """P(match) for each (serialized A, serialized B) pair, float64 in [0, 1]."""
        ...

    def close(self) -> None: ...
