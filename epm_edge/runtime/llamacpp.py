"""llama.cpp scorer on the low-level API: batched, with the shared instruction prefix reused.

The prefix (identical for every pair) is decoded once into sequence 0 and kept. For each batch,
every pair gets its own sequence id; `llama_memory_seq_cp` shares the prefix cells with it (no
recomputation, no copy of the tensors in a unified KV cache), the pair's suffix tokens are added
with logits requested only at the last position, and one `llama_decode` scores the whole batch.
Afterwards the pair sequences are removed again and the prefix stays.

Pairs that share record A (a matching run scores each A against its top-k candidates) share one
more level: A's tokens are decoded once after the prefix, into a sequence of their own, and each
pair adds only B's tokens on top of a copy of it.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import llama_cpp as lc
import numpy as np

from epm_edge import prompt
from epm_edge.errors import ModelError

_LOG_SINK = lc.llama_log_callback(lambda level, text, data: None)  # kept alive: llama.cpp holds it
_backend_ready = False


def _init_backend(verbose: bool = False) -> None:
    global _backend_ready
    if not _backend_ready:
        if not verbose:
            lc.llama_log_set(_LOG_SINK, ctypes.c_void_p(0))
        lc.llama_backend_init()
        _backend_ready = True


def read_gguf_metadata(model) -> dict[str, str]:
    """All GGUF key/value pairs of a loaded llama.cpp model, as strings."""
    meta, buf = {}, ctypes.create_string_buffer(1 << 16)
    for i in range(lc.llama_model_meta_count(model)):
        if lc.llama_model_meta_key_by_index(model, i, buf, len(buf)) < 0:
            continue
        key = buf.value.decode("utf-8", "replace")
        if lc.llama_model_meta_val_str(model, key.encode(), buf, len(buf)) >= 0:
            meta[key] = buf.value.decode("utf-8", "replace")
    return meta


@functools.cache
def build_features() -> tuple[str, ...]:
    """CPU features this llama.cpp build uses: the names set to 1 in its `CPU : AVX2 = 1 | ...` line."""
    _init_backend()
    parts = [p.split("=") for p in lc.llama_print_system_info().decode().split(":", 1)[-1].split("|")]
    return tuple(p[0].strip() for p in parts if len(p) == 2 and p[1].strip() == "1")


@functools.cache
def amx_build() -> bool:
    """Whether this llama.cpp build has its AMX backend compiled in."""
    _init_backend()
    return "AMX" in lc.llama_print_system_info().decode()


def load_model(path: Path, vocab_only: bool = False):
    """Load a GGUF with llama.cpp; a clear ModelError when the file is missing or not loadable."""
    _init_backend()
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelError(f"{path}: not a GGUF file (bad magic); pass a .gguf model")
    params = lc.llama_model_default_params()
    params.vocab_only = vocab_only
    # Extra buffer types hold the weights in the layout of the fast matmuls: repacked for AVX-512,
    # or AMX tiles in an AMX build (the Makefile builds it; bench/reports/scorer-speed.md).
    params.use_extra_bufts = True
    model = lc.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise ModelError(f"{path}: llama.cpp could not load this GGUF (truncated, corrupt or unsupported)")
    return model


class LlamaCppScorer:
    name = "llamacpp"

    # Defaults measured on 2 cores (abt_buy pairs, ~135 suffix tokens): 512 tokens per decode and
    # flash attention gave 1.84 pairs/s vs 1.09 at 2048 tokens without it (Q4_1 base): every
    # token attends over all cells of the shared cache, so smaller decodes keep attention cheap.
    def __init__(self, path: str | Path, threads: int | None = None, batch_size: int = 32,
                 max_batch_tokens: int = 512, n_ubatch: int = 512, flash_attn: bool = True,
                 share_records: bool = True):
        self.path = Path(path)
        self.model = load_model(self.path)
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.metadata = {k[4:]: v for k, v in read_gguf_metadata(self.model).items() if k.startswith("epm.")}
        self.threshold = float(self.metadata["threshold"]) if "threshold" in self.metadata else None
        self.batch_size = batch_size
        self.prefix = self.tokenize(prompt.PREFIX)
        self.yes, self.no = self._single_token(prompt.YES), self._single_token(prompt.NO)
        self.max_batch_tokens = max_batch_tokens
        self.share_records = share_records
        self.head_seq = batch_size + 1  # holds a shared record A; 0 is the prefix, 1..batch_size the pairs
        threads = threads or os.cpu_count() or 1

        params = lc.llama_context_default_params()
        params.n_ctx = len(self.prefix) + max_batch_tokens + 512  # + room for generation in explain()
        params.n_batch = max_batch_tokens
        params.n_ubatch = min(n_ubatch, max_batch_tokens)
        params.n_seq_max = batch_size + 2
        params.kv_unified = True  # all sequences share one cache, so seq_cp of the prefix is free
        params.n_threads = params.n_threads_batch = threads
        params.flash_attn_type = 1 if flash_attn else 0
        self.ctx = lc.llama_init_from_model(self.model, params)
        if not self.ctx:
            raise ModelError(f"{self.path}: llama.cpp could not create a context")
        self.mem = lc.llama_get_memory(self.ctx)
        self.n_vocab = lc.llama_vocab_n_tokens(self.vocab)
        self.batch = lc.llama_batch_init(max(max_batch_tokens, len(self.prefix)), 0, 1)
        self._decode([(self.prefix, 0, 0)], logits_last=False)
        self._samplers: dict[bool, object] = {}

    # -- tokens ---------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        raw = text.encode("utf-8")
        buf = (lc.llama_token * (len(raw) + 8))()
        n = lc.llama_tokenize(self.vocab, raw, len(raw), buf, len(buf), False, True)
        if n < 0:
            raise ValueError(f"tokenization failed for {text[:40]!r}")
        return list(buf[:n])

    def _single_token(self, text: str) -> int:
        ids = self.tokenize(text)
        if len(ids) != 1:
            raise ModelError(f"{self.path}: '{text}' is not a single token in this vocabulary")
        return ids[0]

    def piece(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = lc.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        return buf.raw[:max(n, 0)]

    # -- decoding -------------------------------------------------------------------------
    def _decode(self, seqs: list[tuple[list[int], int, int]], logits_last: bool = True) -> list[int]:
        """Add (tokens, seq_id, start_pos) runs to one batch and decode; return output indices."""
        b, n, outputs = self.batch, 0, []
        for tokens, seq, pos in seqs:
            for j, tok in enumerate(tokens):
                b.token[n], b.pos[n], b.n_seq_id[n] = tok, pos + j, 1
                b.seq_id[n][0] = seq
                b.logits[n] = logits_last and j == len(tokens) - 1
                n += 1
            outputs.append(n - 1)
        b.n_tokens = n
        rc = lc.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with code {rc} (batch of {n} tokens)")
        return outputs

    def _logit_pair(self, index: int) -> tuple[float, float]:
        row = lc.llama_get_logits_ith(self.ctx, index)
        return row[self.yes], row[self.no]

    def _groups(self, items: list[tuple[int, list[int]]]):
        """Split (pair index, tokens) items into decode batches within the sequence and token budgets."""
        group, tokens = [], 0
        for item in items:
            n = len(item[1])
            if n > self.max_batch_tokens:
                raise ValueError(f"pair {item[0]} has {n} prompt tokens, above the batch budget "
                                 f"of {self.max_batch_tokens}; lower the record token budget")
            if group and (len(group) == self.batch_size or tokens + n > self.max_batch_tokens):
                yield group
                group, tokens = [], 0
            group.append(item)
            tokens += n
        if group:
            yield group

    def _score_from(self, base_seq: int, start: int, items: list[tuple[int, list[int]]], out: np.ndarray):
        """Score (pair index, tokens) items, each continuing sequence `base_seq` at position `start`."""
        for group in self._groups(items):
            seqs = []
            for k, (_, tokens) in enumerate(group, start=1):
                lc.llama_memory_seq_cp(self.mem, base_seq, k, -1, -1)
                seqs.append((tokens, k, start))
            try:
                for (i, _), idx in zip(group, self._decode(seqs)):
                    out[i] = prompt.match_probability(*self._logit_pair(idx))
            finally:
                for k in range(1, len(group) + 1):
                    lc.llama_memory_seq_rm(self.mem, k, -1, -1)

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        out = np.empty(len(pairs), dtype=np.float64)
        start = len(self.prefix)
        by_a: dict[str, list[int]] = defaultdict(list)
        for i, (a, _) in enumerate(pairs):
            by_a[a].append(i)
        alone: list[tuple[int, list[int]]] = []  # pairs scored from their whole suffix
        shared: list[tuple[list[int], list[tuple[int, list[int]]]]] = []  # (A's tokens, B's parts)
        for a, idx in by_a.items():
            suffixes = [self.tokenize(prompt.pair_suffix(a, pairs[i][1])) for i in idx]
            if self.share_records and len(idx) > 1:
                head = self.tokenize(prompt.pair_head(a))
                # Only where the tokens split at the A/B boundary; BPE could merge across it.
                tails = [(i, s[len(head):]) for i, s in zip(idx, suffixes) if s[:len(head)] == head]
                if len(tails) == len(idx) and len(head) <= self.max_batch_tokens:
                    shared.append((head, tails))
                    continue
            alone += zip(idx, suffixes)
        self._score_from(0, start, alone, out)
        for head, tails in shared:
            lc.llama_memory_seq_cp(self.mem, 0, self.head_seq, -1, -1)
            try:
                self._decode([(head, self.head_seq, start)], logits_last=False)
                self._score_from(self.head_seq, start + len(head), tails, out)
            finally:
                lc.llama_memory_seq_rm(self.mem, self.head_seq, -1, -1)
        return out

    # -- explanations ---------------------------------------------------------------------
    def _sampler(self, match: bool):
        """Greedy sampling under the answer grammar, with the decision fixed to `match`."""
        if match not in self._samplers:
            decision = prompt.YES if match else prompt.NO
            grammar = prompt.GRAMMAR.replace('decision ::= "Yes" | "No"', f'decision ::= "{decision}"')
            chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
            g = lc.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root")
            if not g:
                raise RuntimeError("llama.cpp rejected the answer grammar")
            lc.llama_sampler_chain_add(chain, g)
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
            self._samplers[match] = chain
        return self._samplers[match]

    def generate(self, a: str, b: str, match: bool, max_tokens: int = 160) -> str:
        """The decision plus a grammar-constrained rationale for one pair.

        Stops at the end of turn or after `max_tokens`; a cut-off last line is dropped. Since one
        evidence line is at most prompt.MAX_LINE_CHARS characters (>= 1 char per token), a budget
        above that always leaves at least one complete line, so the result always parses.
        """
        sampler = self._sampler(match)
        lc.llama_sampler_reset(sampler)
        suffix = self.tokenize(prompt.pair_suffix(a, b))
        pos = len(self.prefix)
        lc.llama_memory_seq_cp(self.mem, 0, 1, -1, -1)
        text, finished = b"", False
        try:
            idx = self._decode([(suffix, 1, pos)])[0]
            pos += len(suffix)
            for _ in range(max_tokens):
                tok = lc.llama_sampler_sample(sampler, self.ctx, idx)  # also accepts the token
                if lc.llama_vocab_is_eog(self.vocab, tok):
                    finished = True
                    break
                text += self.piece(tok)
                idx = self._decode([([tok], 1, pos)])[0]
                pos += 1
        finally:
            lc.llama_memory_seq_rm(self.mem, 1, -1, -1)
        text = text.decode("utf-8", "replace")
        return text if finished else prompt.complete_lines(text)

    def explain(self, pairs: Sequence[tuple[str, str]], matches: Sequence[bool]) -> list[prompt.Answer]:
        """A rationale per pair for the decision already taken on its score (at the caller's cut,
        from however the caller scored it)."""
        return [prompt.parse_answer(self.generate(a, b, bool(m))) for (a, b), m in zip(pairs, matches)]

    def close(self) -> None:
        for s in self._samplers.values():
            lc.llama_sampler_free(s)
        self._samplers.clear()
        if getattr(self, "batch", None) is not None:
            lc.llama_batch_free(self.batch)
            self.batch = None
        if getattr(self, "ctx", None):
            lc.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            lc.llama_model_free(self.model)
            self.model = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
