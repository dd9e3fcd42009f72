"""llama.cpp scorer on the low-level API, with the shared instruction prefix reused.

The prefix (identical for every pair) is decoded once into sequence 0 and kept. Each pair is then
decoded on its own: `llama_memory_seq_cp` shares the prefix cells with the pair's sequence (no
recomputation, no copy in a unified KV cache), the pair's tokens are added with logits requested
only at the last position, and the pair's cells are freed again.

One pair per decode keeps a pair's score independent of the other pairs scored with it: in a
multi-pair decode, where a pair's tokens land in the shared cache depends on its neighbours, and
attention summed over other cell positions moved scores by up to 0.3 logit (flash attention,
Q8_0). Alone, a pair's cells always start where the prefix (or its record A) ends. It costs little:
the tokens of all the other pairs in a decode are masked out of each pair's attention but still
visited, so on 2 cores one pair per decode ran as fast as 16 (docs/batch-independence.md).

Pairs that share record A (a matching run scores each A against its top-k candidates) share one
more level: A's tokens are decoded once after the prefix, into a sequence of their own, and each
pair adds only B's tokens on top of it. Every pair whose tokens split at the A/B boundary takes
this path, alone or not, so its score does not depend on whether its A has other candidates.
"""

from __future__ import annotations

import ctypes
import functools
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import llama_cpp as lc
import numpy as np

from epm_edge import model_settings, prompt
from epm_edge.errors import ModelError

_LOG_SINK = lc.llama_log_callback(lambda level, text, data: None)  # kept alive: llama.cpp holds it
_backend_ready = False


def _init_backend() -> None:
    global _backend_ready
    if not _backend_ready:
        if not os.environ.get("EPM_EDGE_VERBOSE"):  # set by -v (console.quiet_third_party)
            lc.llama_log_set(_LOG_SINK, ctypes.c_void_p(0))
        lc.llama_backend_init()
        _backend_ready = True


def free_cores(window: float = 0.3) -> int:
    """Cores not kept busy by other processes, from /proc/stat over `window` seconds (all cores
    where that cannot be read).

    llama.cpp's threads meet at a barrier after every op, so one thread that shares its core with
    another process stalls them all: on 2 cores beside one spinning process, 2 threads scored 0.86
    pairs/s and 1 thread 1.65 (experiments/threads_contention.py, docs/threads.md)."""
    cores = os.cpu_count() or 1

    def idle_total() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return values[3] + values[4], sum(values[:8])  # idle + iowait; user..steal

    try:
        idle0, total0 = idle_total()
        time.sleep(window)
        idle1, total1 = idle_total()
    except (OSError, ValueError, IndexError):
        return cores
    if total1 <= total0:
        return cores
    return max(1, min(cores, round(cores * (idle1 - idle0) / (total1 - total0))))


def read_gguf_metadata(model, adapter: bool = False) -> dict[str, str]:
    """All GGUF key/value pairs of a loaded llama.cpp model (or LoRA adapter), as strings."""
    count, key_at, value_at = ((lc.llama_adapter_meta_count, lc.llama_adapter_meta_key_by_index,
                                lc.llama_adapter_meta_val_str_by_index) if adapter else
                               (lc.llama_model_meta_count, lc.llama_model_meta_key_by_index,
                                lc.llama_model_meta_val_str_by_index))
    meta, buf = {}, ctypes.create_string_buffer(1 << 16)
    for i in range(count(model)):
        if key_at(model, i, buf, len(buf)) < 0:
            continue
        key = buf.value.decode("utf-8", "replace")
        if value_at(model, i, buf, len(buf)) >= 0:
            meta[key] = buf.value.decode("utf-8", "replace")
    return meta


def token_piece(vocab, token: int, special: bool = False) -> bytes:
    """The bytes of a token; a control token's text (`<bos>`) only with `special`."""
    buf = ctypes.create_string_buffer(64)
    n = lc.llama_token_to_piece(vocab, token, buf, len(buf), 0, special)
    return buf.raw[:max(n, 0)]


def _special_text(vocab, token: int) -> str:
    """A control token's text (`<bos>`), for chat templates that write it; "" where there is none."""
    return token_piece(vocab, token, special=True).decode("utf-8", "replace") if token >= 0 else ""


def model_chat_format(model, path: Path, gguf_metadata: dict[str, str] | None = None) -> prompt.ChatFormat:
    """The chat format of a loaded llama.cpp model: its GGUF's chat template, with its BOS/EOS text."""
    vocab = lc.llama_model_get_vocab(model)
    metadata = read_gguf_metadata(model) if gguf_metadata is None else gguf_metadata
    bos, eos = (_special_text(vocab, t) for t in (lc.llama_vocab_bos(vocab), lc.llama_vocab_eos(vocab)))
    return prompt.chat_format(metadata.get("tokenizer.chat_template"), bos, eos, path,
                              add_bos=lc.llama_vocab_get_add_bos(vocab))


def epm_keys(gguf_metadata: dict[str, str]) -> dict[str, str]:
    return {k[4:]: v for k, v in gguf_metadata.items() if k.startswith("epm.")}


def weight_type(gguf_metadata: dict[str, str]) -> str | None:
    """The GGUF type of a model's weights as llama-quantize names it (`Q4_K_M`, `BF16`), from the header's
    `general.file_type`; None where it has none."""
    import gguf

    try:
        return gguf.LlamaFileType(int(gguf_metadata["general.file_type"])).name.split("_", 1)[1]
    except (KeyError, ValueError):
        return None


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
    # or AMX tiles in an AMX build (the Makefile builds it; reports/scorer-speed.md).
    params.use_extra_bufts = True
    model = lc.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise ModelError(f"{path}: llama.cpp could not load this GGUF (truncated, corrupt or unsupported)")
    return model


PREFIX_SEQ, HEAD_SEQ, PAIR_SEQ = 0, 1, 2  # the instruction prefix, a shared record A, the pair scored


class LlamaCppScorer:
    name = "llamacpp"

    # Measured on 2 cores (abt_buy pairs, ~135 suffix tokens): flash attention scored 1.84 pairs/s
    # vs 1.09 without it (Q4_1 base, multi-pair decodes); one pair per decode is as fast with or
    # without it.
    def __init__(self, path: str | Path, threads: int | None = None, max_pair_tokens: int = 512,
                 flash_attn: bool = True, share_records: bool = True, lora: str | Path | None = None,
                 lora_scale: float = 1.0):
        self.path = Path(path)
        self.model = load_model(self.path)
        self.vocab = lc.llama_model_get_vocab(self.model)
        gguf_metadata = read_gguf_metadata(self.model)
        self.metadata = epm_keys(gguf_metadata)
        self.lora_path, self.lora_scale, self.lora = (Path(lora) if lora else None), lora_scale, None
        if lora:
            self.lora = self._load_lora()
            # The cuts belong to this adapter on this type of base: the adapter stores them per type.
            adapter = epm_keys(read_gguf_metadata(self.lora, adapter=True))
            self.metadata = model_settings.lora_metadata(self.metadata, adapter, weight_type(gguf_metadata))
        self.threshold = model_settings.one_order_cut(self.metadata)
        self.format = model_chat_format(self.model, self.path, gguf_metadata)
        self.prefix = self.tokenize(self.format.prefix)
        self.yes, self.no = self._single_token(prompt.YES), self._single_token(prompt.NO)
        self.max_pair_tokens = max_pair_tokens
        self.share_records = share_records
        threads = threads or free_cores()

        params = lc.llama_context_default_params()
        params.n_ctx = len(self.prefix) + max_pair_tokens + 512  # + room for generation in explain()
        params.n_batch = params.n_ubatch = max(max_pair_tokens, len(self.prefix))
        params.n_seq_max = 3
        params.kv_unified = True  # all sequences share one cache, so seq_cp of the prefix is free
        params.n_threads = params.n_threads_batch = threads
        params.flash_attn_type = 1 if flash_attn else 0
        self.ctx = lc.llama_init_from_model(self.model, params)
        if not self.ctx:
            raise ModelError(f"{self.path}: llama.cpp could not create a context")
        if self.lora:
            adapters, scales = (lc.llama_adapter_lora_p_ctypes * 1)(self.lora), (ctypes.c_float * 1)(lora_scale)
            if lc.llama_set_adapters_lora(self.ctx, adapters, 1, scales) != 0:
                raise ModelError(f"{self.lora_path}: llama.cpp could not apply this LoRA adapter")
        self.mem = lc.llama_get_memory(self.ctx)
        self.batch = lc.llama_batch_init(params.n_batch, 0, 1)
        self._decode(self.prefix, PREFIX_SEQ, 0, logits=False)
        self._samplers: dict[bool, object] = {}

    def _load_lora(self):
        """The GGUF LoRA at `lora_path` on this model (freed with the model)."""
        if not self.lora_path.is_file():
            raise ModelError(f"{self.lora_path}: LoRA adapter file not found")
        adapter = lc.llama_adapter_lora_init(self.model, str(self.lora_path).encode())
        if not adapter:
            raise ModelError(f"{self.lora_path}: llama.cpp could not load this LoRA adapter onto {self.path} (not a "
                             "GGUF LoRA, corrupt, or made for another base model)")
        return adapter

    # -- tokens ---------------------------------------------------------------------------
    def tokenize(self, text: str | Sequence[tuple[str, bool]], special: bool = True) -> list[int]:
        """Token ids of `text`, or of (text, is_template) pieces joined (ChatFormat.pair_segments).

        Special-token text such as `<|im_end|>` becomes its control token only where `special` is
        set, for pieces only in the template ones: record text is data and stays plain text.
        """
        if not isinstance(text, str):
            return [t for piece, template in text for t in self.tokenize(piece, special=template)]
        raw = text.encode("utf-8")
        buf = (lc.llama_token * (len(raw) + 8))()
        n = lc.llama_tokenize(self.vocab, raw, len(raw), buf, len(buf), False, special)
        if n < 0:
            raise ValueError(f"tokenization failed for {text[:40]!r}")
        return list(buf[:n])

    def _single_token(self, text: str) -> int:
        ids = self.tokenize(text)
        if len(ids) != 1:
            raise ModelError(f"{self.path}: '{text}' is not a single token in this vocabulary")
        return ids[0]

    # -- decoding -------------------------------------------------------------------------
    def _decode(self, tokens: list[int], seq: int, pos: int, logits: bool = True) -> int:
        """Decode `tokens` as sequence `seq` from position `pos`; the output index of the last one."""
        if len(tokens) > self.max_pair_tokens and seq != PREFIX_SEQ:
            raise ValueError(f"a pair has {len(tokens)} prompt tokens, above the budget of "
                             f"{self.max_pair_tokens}; lower the record token budget")
        b = self.batch
        for j, tok in enumerate(tokens):
            b.token[j], b.pos[j], b.n_seq_id[j] = tok, pos + j, 1
            b.seq_id[j][0] = seq
            b.logits[j] = logits and j == len(tokens) - 1
        b.n_tokens = len(tokens)
        rc = lc.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with code {rc} ({len(tokens)} tokens)")
        return len(tokens) - 1

    def _probability(self, index: int) -> float:
        row = lc.llama_get_logits_ith(self.ctx, index)
        return prompt.match_probability(row[self.yes], row[self.no], self.path)

    def _score_after(self, base_seq: int, pos: int, tokens: list[int]) -> float:
        """P(match) of `tokens` continuing sequence `base_seq` at position `pos`."""
        lc.llama_memory_seq_cp(self.mem, base_seq, PAIR_SEQ, -1, -1)
        try:
            return self._probability(self._decode(tokens, PAIR_SEQ, pos))
        finally:
            lc.llama_memory_seq_rm(self.mem, PAIR_SEQ, -1, -1)

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        out = np.empty(len(pairs), dtype=np.float64)
        start = len(self.prefix)
        by_a: dict[str, list[int]] = defaultdict(list)
        for i, (a, _) in enumerate(pairs):
            by_a[a].append(i)
        for a, idx in by_a.items():
            # Data, as the data piece that each suffix starts with: the comparison below needs both alike.
            head = self.tokenize(prompt.pair_head(a), special=False) if self.share_records else []
            tails = []  # pairs continuing A's decoded tokens
            for i in idx:
                suffix = self.tokenize(self.format.pair_segments(a, pairs[i][1]))
                # Only where the tokens split at the A/B boundary; BPE could merge across it.
                if head and suffix[:len(head)] == head and len(suffix) > len(head):
                    tails.append((i, suffix[len(head):]))
                else:
                    out[i] = self._score_after(PREFIX_SEQ, start, suffix)
            if not tails:
                continue
            lc.llama_memory_seq_cp(self.mem, PREFIX_SEQ, HEAD_SEQ, -1, -1)
            try:
                self._decode(head, HEAD_SEQ, start, logits=False)
                for i, tail in tails:
                    out[i] = self._score_after(HEAD_SEQ, start + len(head), tail)
            finally:
                lc.llama_memory_seq_rm(self.mem, HEAD_SEQ, -1, -1)
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
        suffix = self.tokenize(self.format.pair_segments(a, b))
        pos = len(self.prefix)
        lc.llama_memory_seq_cp(self.mem, PREFIX_SEQ, PAIR_SEQ, -1, -1)
        text, finished = b"", False
        try:
            idx = self._decode(suffix, PAIR_SEQ, pos)
            pos += len(suffix)
            for _ in range(max_tokens):
                tok = lc.llama_sampler_sample(sampler, self.ctx, idx)  # also accepts the token
                if lc.llama_vocab_is_eog(self.vocab, tok):
                    finished = True
                    break
                text += token_piece(self.vocab, tok)
                idx = self._decode([tok], PAIR_SEQ, pos)
                pos += 1
        finally:
            lc.llama_memory_seq_rm(self.mem, PAIR_SEQ, -1, -1)
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
