"""transformers scorer: the fp32 reference that exported variants are checked against.

The plainest correct path on purpose: every pair is the full prompt (prefix + suffix, each
tokenized on its own exactly as llama.cpp does), left-padded into a batch, one forward pass with
`logits_to_keep=1` so only the last position's logits are computed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from epm_edge import prompt
from epm_edge.errors import ModelError
from epm_edge.model_settings import one_order_cut
from epm_edge.runtime.chat_template import dir_chat_format
from epm_edge.runtime.provenance import read_sidecar


def single_token(tokenizer, text: str, where: Path) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ModelError(f"{where}: '{text}' is not a single token in this vocabulary: the matcher decides a "
                         f"pair by the logits of the '{prompt.YES}' and '{prompt.NO}' tokens, so this tokenizer "
                         "cannot carry it")
    return ids[0]


def segment_ids(tokenizer, segments: Sequence[tuple[str, bool]]) -> list[int]:
    """Ids of (text, is_template) pieces, as llama.cpp tokenizes them: special-token text such as
    `<|im_end|>` becomes its special token in the template pieces only (record text is data)."""
    return [t for text, template in segments
            for t in tokenizer(text, add_special_tokens=False, split_special_tokens=not template)["input_ids"]]


def pair_ids(tokenizer, fmt: prompt.ChatFormat, a: str, b: str) -> list[int]:
    """Ids of the pair suffix (ChatFormat.pair_segments)."""
    return segment_ids(tokenizer, fmt.pair_segments(a, b))


class TransformersScorer:
    name = "transformers"

    def __init__(self, path: str | Path, threads: int | None = None, batch_size: int = 32):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.path = Path(path)
        if not (self.path / "config.json").exists():
            raise ModelError(f"{self.path}: not a Hugging Face model dir (no config.json)")
        self.torch = torch
        if threads:
            torch.set_num_threads(threads)
        self.metadata = read_sidecar(self.path)
        self.threshold = one_order_cut(self.metadata)
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModelForCausalLM.from_pretrained(self.path, dtype=torch.float32).eval()
        self.format = dir_chat_format(self.path)
        self.prefix = self.tokenizer(self.format.prefix, add_special_tokens=False)["input_ids"]
        self.yes = single_token(self.tokenizer, prompt.YES, self.path)
        self.no = single_token(self.tokenizer, prompt.NO, self.path)
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        torch = self.torch
        out = np.empty(len(pairs), dtype=np.float64)
        for lo in range(0, len(pairs), self.batch_size):
            chunk = pairs[lo:lo + self.batch_size]
            seqs = [self.prefix + pair_ids(self.tokenizer, self.format, a, b) for a, b in chunk]
            width = max(map(len, seqs))
            ids = torch.full((len(seqs), width), self.pad, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for i, s in enumerate(seqs):
                ids[i, width - len(s):] = torch.tensor(s)
                mask[i, width - len(s):] = 1
            # Positions count from the first real token so padding does not shift the rotary phase.
            pos = (mask.cumsum(1) - 1).clamp(min=0)
            with torch.inference_mode():
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos,
                                    logits_to_keep=1, use_cache=False).logits[:, -1, :]
            for i, row in enumerate(logits.float()):
                out[lo + i] = prompt.match_probability(float(row[self.yes]), float(row[self.no]), self.path)
        return out

    def close(self) -> None:
        self.model = None
