"""ONNX Runtime scorer for variants written by `epm-edge export` (graph: optimum
`text-generation-with-past`, logits of the last position only).

Same prompt and tokens as llama.cpp: the instruction prefix and the pair suffix are tokenized on
their own. The prefix is run once; each pair's suffix runs after its past key/values, at the
positions it has in llama.cpp. One pair per run: int8 variants quantize activations per tensor at
run time, so in a padded batch a pair's score moved with its neighbours (up to 0.08 in P(match) on
abt_buy test pairs, int4 0.035), and single runs were also faster (no padding): docs/batch-independence.md.
Needs onnxruntime and tokenizers, not torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from epm_edge import prompt
from epm_edge.errors import ModelError
from epm_edge.model_settings import one_order_cut
from epm_edge.runtime.chat_template import dir_chat_format
from epm_edge.runtime.provenance import read_sidecar

MODEL_FILE = "model.onnx"


def token_ids(tokenizer, text: str, template: bool = True) -> list[int]:
    """Ids of `text` from a `tokenizers.Tokenizer`; special-token text such as `<|im_end|>` becomes
    its special token in template text only (record text is data: ChatFormat.pair_segments)."""
    # The flag is tokenizer state, so every encode sets it (as transformers does for split_special_tokens).
    tokenizer.encode_special_tokens = not template
    return tokenizer.encode(text, add_special_tokens=False).ids


def pair_ids(tokenizer, fmt: prompt.ChatFormat, a: str, b: str) -> list[int]:
    """Ids of the pair suffix, as llama.cpp tokenizes it."""
    return [t for text, template in fmt.pair_segments(a, b) for t in token_ids(tokenizer, text, template)]


class OnnxScorer:
    name = "onnx"

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        path = Path(path)
        self.path = path.parent if path.suffix == ".onnx" else path
        model_file = path if path.suffix == ".onnx" else path / MODEL_FILE
        if not model_file.is_file():
            raise ModelError(f"{model_file}: ONNX model not found")
        if not (self.path / "tokenizer.json").exists():
            raise ModelError(f"{self.path}: tokenizer.json missing next to the ONNX model")
        self.metadata = read_sidecar(self.path)
        self.threshold = one_order_cut(self.metadata)

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ModelError(f"{model_file}: ONNX Runtime cannot load this model: {e}") from None
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.past_names = [n for n in inputs if n.startswith("past_key_values.")]
        if not self.past_names or "position_ids" not in inputs:
            raise ModelError(f"{model_file}: not a text-generation-with-past export (no past inputs)")
        _, self.kv_heads, _, self.head_dim = inputs[self.past_names[0]].shape
        self.present_names = [n.replace("past_key_values.", "present.") for n in self.past_names]

        self.tokenizer = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        self.format = dir_chat_format(self.path)
        self.prefix = token_ids(self.tokenizer, self.format.prefix)
        self.yes, self.no = self._single(prompt.YES), self._single(prompt.NO)
        self.prefix_past = self._run_prefix()

    def _single(self, text: str) -> int:
        ids = token_ids(self.tokenizer, text)
        if len(ids) != 1:
            raise ModelError(f"{self.path}: '{text}' is not a single token in this vocabulary")
        return ids[0]

    def _run_prefix(self) -> list[np.ndarray]:
        n = len(self.prefix)
        feed = {"input_ids": np.array([self.prefix], np.int64), "attention_mask": np.ones((1, n), np.int64),
                "position_ids": np.arange(n, dtype=np.int64)[None],
                **{name: np.zeros((1, self.kv_heads, 0, self.head_dim), np.float32) for name in self.past_names}}
        return self.session.run(self.present_names, feed)

    def _score_one(self, suffix: list[int]) -> float:
        start, n = len(self.prefix), len(suffix)
        feed = {"input_ids": np.array([suffix], np.int64), "attention_mask": np.ones((1, start + n), np.int64),
                "position_ids": np.arange(start, start + n, dtype=np.int64)[None],
                **dict(zip(self.past_names, self.prefix_past))}
        row = self.session.run(["logits"], feed)[0][0, -1]
        return prompt.match_probability(float(row[self.yes]), float(row[self.no]), self.path)

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        return np.array([self._score_one(pair_ids(self.tokenizer, self.format, a, b)) for a, b in pairs],
                        dtype=np.float64)

    def close(self) -> None:
        self.session = None
        self.prefix_past = None
