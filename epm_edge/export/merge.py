"""Merge: base model (HF dir or GGUF) + optional PEFT adapter -> one HF checkpoint (safetensors).

A GGUF base is dequantized by transformers once and cached under `model_store.home()/base-hf/`,
keyed by the GGUF's sha256, because loading a GGUF in transformers costs ~30 s.
torch, transformers and peft are imported inside the functions: importing this module is cheap.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from epm_edge import __version__, model_store, prompt
from epm_edge.errors import ModelError
from epm_edge.runtime.provenance import read_sidecar, write_sidecar

ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
BASE_HF_LAYOUT = 4  # part of the cache key of a dequantized base: bumped when what is saved there changes


@dataclass
class BaseModel:
    hf_dir: Path  # an HF checkpoint of the base
    sha256: str  # of the file the user named (the GGUF) or of the HF dir's weights
    gguf: Path | None  # the source GGUF, whose tokenizer metadata the GGUF converter carries over

    @property
    def name(self) -> str:
        """How provenance names the base (beside its sha256), never by a local path: the bundled
        base by package and file, another by its file or dir name."""
        if self.sha256 == model_store.BASE_SHA256:
            return f"{model_store.BASE_PACKAGE}/{model_store.BASE_FILE}"
        return (self.gguf or self.hf_dir).name


@dataclass
class Provenance:
    base: str
    base_sha256: str
    adapter: str
    adapter_sha256: str
    prompt_version: str
    version: str

    def to_json(self) -> dict:
        return asdict(self)


def dir_sha256(path: Path, patterns: tuple[str, ...]) -> str:
    """One hash over the named files of a directory (sorted names, each file's sha256)."""
    h = hashlib.sha256()
    files = sorted(f for p in patterns for f in path.glob(p) if f.is_file())
    for f in files:
        h.update(f.name.encode() + b"\0" + model_store.sha256_file(f).encode())
    return h.hexdigest()


def _weights_sha256(hf_dir: Path) -> str:
    return dir_sha256(hf_dir, ("*.safetensors", "*.bin", "config.json"))


def resolve_base(base: str | Path | None, adapter: Path | None = None) -> BaseModel:
    """An HF dir for the base: as given, or the dequantized (cached) form of a GGUF. Without one, the
    base `adapter` was trained on (model_store.known_base), else the bundled base."""
    path = Path(base) if base else _adapter_base(adapter) if adapter else model_store.base_gguf()
    if not path.exists():
        raise ModelError(f"{path}: base model not found")
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(f"{path}: not a Hugging Face model dir (no config.json)")
        return BaseModel(path, _weights_sha256(path), None)
    if path.suffix != ".gguf":
        raise ModelError(f"{path}: base must be a .gguf file or a Hugging Face model dir")
    digest = model_store.sha256_file(path)
    return BaseModel(_dequantized(path, digest), digest, path)


def _adapter_base(adapter: Path) -> Path:
    trained = read_sidecar(adapter) if adapter.is_dir() else {}
    digest = trained.get("base_sha256")
    if not digest:  # no provenance: the bundled base, as before training recorded one
        return model_store.base_gguf()
    found = model_store.known_base(digest)
    if found is None:
        raise ModelError(f"{adapter}: trained on base {trained.get('base', '?')} (sha256 {digest[:12]}...), which "
                         f"is neither the bundled base nor a GGUF in {model_store.home() / 'base'}: put that GGUF "
                         "there, or export with --base")
    return found


def _dequantized(gguf_path: Path, digest: str) -> Path:
    target = model_store.home() / "base-hf" / f"{digest[:16]}-{BASE_HF_LAYOUT}"
    if (target / "config.json").exists():
        return target
    import llama_cpp as lc
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from epm_edge.runtime.llamacpp import load_model

    lc.llama_model_free(load_model(gguf_path, vocab_only=True))  # clear error for a corrupt file
    try:
        src = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                   dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    except (ValueError, KeyError, RuntimeError, OSError) as e:
        raise ModelError(f"{gguf_path}: transformers cannot read this GGUF: {e}") from None
    # A model loaded from GGUF carries a quantizer flag and refuses save_pretrained: copy it into
    # a fresh model of the same config.
    model = type(src)(src.config)
    model.load_state_dict(src.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    _match_llamacpp_tokenizer(tmp, gguf_path)
    (tmp / "source.json").write_text(json.dumps({"gguf": str(gguf_path), "sha256": digest}) + "\n")
    tmp.replace(target)
    return target


# Pre-tokenizers of tokenizer.json for llama.cpp's `tokenizer.ggml.pre` names. transformers'
# GGUF reader drops the digit splitting of SmolLM's tokenizer, so numbers (model numbers!) would
# be tokenized differently from llama.cpp without this.
PRE_TOKENIZERS = {
    "smollm": {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]},
    "gpt2": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
}


GGUF_CONTROL, GGUF_USER_DEFINED, GGUF_BYTE = 3, 4, 6  # tokenizer.ggml.token_type values


def _match_llamacpp_tokenizer(hf_dir: Path, gguf_path: Path) -> None:
    """Make the saved HF tokenizer split and add BOS exactly as llama.cpp does for this GGUF."""
    import gguf

    fields = gguf.GGUFReader(gguf_path).fields

    def value(key, default):
        return fields[key].contents() if key in fields else default

    cfg = json.loads((hf_dir / "tokenizer_config.json").read_text())
    cfg["add_bos_token"] = bool(value("tokenizer.ggml.add_bos_token", False))
    if value("tokenizer.ggml.model", "gpt2") == "gpt2":  # byte-level BPE
        pre = value("tokenizer.ggml.pre", "gpt2")
        if pre not in PRE_TOKENIZERS:
            raise ModelError(f"{gguf_path}: tokenizer pre-type '{pre}' is not supported (known: "
                             f"{', '.join(PRE_TOKENIZERS)}); pass the base as a Hugging Face dir")
        tok = json.loads((hf_dir / "tokenizer.json").read_text())
        tok["pre_tokenizer"] = PRE_TOKENIZERS[pre]
        # transformers reads it as a sentencepiece-style Llama tokenizer (with byte fallback), which llama.cpp's
        # converter would convert as one: back to plain byte-level BPE.
        tok["model"]["byte_fallback"] = False
        tok["decoder"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
        if not cfg["add_bos_token"]:  # a GPT2Tokenizer adds what the post-processor says, whatever its config says
            tok["post_processor"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                                     "use_regex": True}
        (hf_dir / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
        cfg["tokenizer_class"] = "GPT2Tokenizer"
    elif value("tokenizer.ggml.model", "") == "llama" and "tokenizer.ggml.merges" not in fields:
        tok = json.loads((hf_dir / "tokenizer.json").read_text())
        if tok["model"]["type"] == "Unigram":
            types = [int(t) for t in value("tokenizer.ggml.token_type", [])]
            (hf_dir / "tokenizer.json").write_text(json.dumps(_spm_as_bpe(tok, types), ensure_ascii=False))
    # transformers saves a sentencepiece model beside it that sentencepiece cannot read: the converter would try to.
    (hf_dir / "tokenizer.model").unlink(missing_ok=True)
    (hf_dir / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False))


def _spm_as_bpe(tok: dict, token_types: list[int]) -> dict:
    """A sentencepiece vocabulary as llama.cpp tokenizes it, for transformers.

    transformers reads a GGUF sentencepiece vocabulary (Gemma 3) as a Unigram model, which segments
    by best total score (" So"+"ny"); llama.cpp merges the adjacent pair whose joined piece scores
    highest (" Sony"). That is BPE with every split of every piece as a merge, ranked by the joined
    piece's score. No pre-tokenizer splits at spaces (llama.cpp has none), and control and
    user-defined pieces are whole tokens, as llama.cpp parses them. Byte pieces keep their `<0xNN>`
    names, which byte fallback looks up (transformers renames `<0x09>` to a tab, a piece Gemma also has).
    """
    vocab = tok["model"]["vocab"]
    kinds = token_types + [0] * (len(vocab) - len(token_types))
    pieces = [(f"<0x{ord(piece):02X}>" if kind == GGUF_BYTE and len(piece) == 1 else piece, score)
              for (piece, score), kind in zip(vocab, kinds)]
    ids = {piece: i for i, (piece, _) in enumerate(pieces)}
    ranked = sorted(((-score, i) for i, (piece, score) in enumerate(pieces) if len(piece) > 1))
    merges = []
    for _, i in ranked:
        piece = pieces[i][0]
        merges += [[piece[:k], piece[k:]] for k in range(1, len(piece)) if piece[:k] in ids and piece[k:] in ids]
    unk = pieces[tok["model"].get("unk_id") or 0][0]
    tok["model"] = {"type": "BPE", "dropout": None, "unk_token": unk, "continuing_subword_prefix": None,
                    "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                    "vocab": ids, "merges": merges}
    tok["pre_tokenizer"] = None
    known = {a["id"] for a in tok["added_tokens"]}
    tok["added_tokens"] += [{"id": i, "content": pieces[i][0], "single_word": False, "lstrip": False, "rstrip": False,
                             "normalized": False, "special": kind == GGUF_CONTROL}
                            for i, kind in enumerate(kinds)
                            if kind in (GGUF_CONTROL, GGUF_USER_DEFINED) and i not in known]
    return tok


def check_prompt_fits(base: BaseModel) -> None:
    """ModelError unless the base's tokenizer can carry the prompt: its chat template frames a user turn
    and an answer, and the decision words are single tokens."""
    from transformers import AutoTokenizer

    from epm_edge.runtime.chat_template import dir_chat_format
    from epm_edge.runtime.hf import single_token

    dir_chat_format(base.hf_dir)
    tokenizer = AutoTokenizer.from_pretrained(base.hf_dir)
    for word in (prompt.YES, prompt.NO):
        single_token(tokenizer, word, base.gguf or base.hf_dir)


def adapter_sha256(adapter: Path) -> str:
    return dir_sha256(adapter, ("adapter_config.json",) + ADAPTER_WEIGHTS)


def check_adapter(adapter: Path, base: BaseModel, base_config) -> dict:
    """The adapter's own provenance (may be empty); ModelError for a missing, corrupt or mismatched adapter.

    An adapter dir may hold an `epm_edge.json` written at training time (base_sha256,
    prompt_version, data); where it exists, it is checked against this base and prompt.
    """
    if not adapter.is_dir():
        raise ModelError(f"{adapter}: adapter dir not found")
    cfg_path = adapter / "adapter_config.json"
    try:
        json.loads(cfg_path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{adapter}: not a PEFT adapter dir (no adapter_config.json)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{cfg_path}: corrupt adapter config ({e})") from None
    if not any((adapter / w).exists() for w in ADAPTER_WEIGHTS):
        raise ModelError(f"{adapter}: adapter weights missing (expected {ADAPTER_WEIGHTS[0]})")
    if (adapter / ADAPTER_WEIGHTS[0]).exists():
        _check_lora_shapes(adapter / ADAPTER_WEIGHTS[0], base_config)
    trained = read_sidecar(adapter)
    if trained.get("base_sha256") and trained["base_sha256"] != base.sha256:
        raise ModelError(f"{adapter}: trained on base sha256 {trained['base_sha256'][:12]}..., "
                         f"but the base given has {base.sha256[:12]}...: pass the matching --base")
    if trained.get("prompt_version") and trained["prompt_version"] != prompt.PROMPT_VERSION:
        raise ModelError(f"{adapter}: trained with prompt {trained['prompt_version']}, this epm-edge uses "
                         f"{prompt.PROMPT_VERSION}")
    return trained


def _check_lora_shapes(weights: Path, base_config) -> None:
    """LoRA A/B shapes must fit the base's hidden/intermediate sizes and layer count.

    peft would also fail on a mismatch, but with a long size-mismatch dump; this names the cause.
    """
    from safetensors import safe_open

    hidden, inter = base_config.hidden_size, base_config.intermediate_size
    head_dim = getattr(base_config, "head_dim", None) or hidden // base_config.num_attention_heads
    kv = base_config.num_key_value_heads * head_dim
    expected = {"q_proj": (hidden, base_config.num_attention_heads * head_dim), "k_proj": (hidden, kv),
                "v_proj": (hidden, kv), "o_proj": (base_config.num_attention_heads * head_dim, hidden),
                "gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden)}
    try:
        with safe_open(str(weights), "pt") as f:
            shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for truncated headers
        raise ModelError(f"{weights}: corrupt adapter weights ({e})") from None
    for key, shape in shapes.items():
        parts = key.split(".")
        if "layers" in parts:
            layer = int(parts[parts.index("layers") + 1])
            if layer >= base_config.num_hidden_layers:
                raise ModelError(f"{weights}: adapter has layer {layer}, the base only "
                                 f"{base_config.num_hidden_layers}: it was trained for a different base")
        module = next((p for p in parts if p in expected), None)
        if module is None or "lora_" not in key:
            continue
        n_in, n_out = expected[module]
        got = shape[1] if "lora_A" in key else shape[0]
        want = n_in if "lora_A" in key else n_out
        if got != want:
            raise ModelError(f"{weights}: {key} has shape {list(shape)} but the base's {module} is "
                             f"{n_in}->{n_out}: this adapter was trained for a different base")


def merge(base: BaseModel, adapter: Path | None, out_dir: Path) -> Provenance:
    """Write the merged checkpoint (fp32 safetensors, tokenizer, provenance) to out_dir."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(base.hf_dir)
    if adapter:
        check_adapter(adapter, base, config)
    model = AutoModelForCausalLM.from_pretrained(base.hf_dir, dtype=torch.float32)
    if adapter:
        from peft import PeftModel
        try:
            model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        except (ValueError, RuntimeError, KeyError, OSError) as e:
            raise ModelError(f"{adapter}: adapter does not load onto base {base.hf_dir}: "
                             f"{str(e).splitlines()[0]}") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(base.hf_dir).save_pretrained(out_dir)
    prov = Provenance(base=base.name, base_sha256=base.sha256, adapter=Path(adapter).name if adapter else "",
                      adapter_sha256=adapter_sha256(adapter) if adapter else "",
                      prompt_version=prompt.PROMPT_VERSION, version=__version__)
    write_sidecar(out_dir, prov.to_json())
    return prov
