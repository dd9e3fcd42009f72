"""HF llama checkpoint -> GGUF (F16), written with the `gguf` package; provenance metadata in place.

Needs numpy and safetensors only (no torch). Architecture: llama (SmolLM2 and kin). Follows
llama.cpp's convert_hf_to_gguf for this architecture: q_proj/k_proj rows are permuted back to
llama.cpp's rotary layout, 2-D weights are stored as F16 and norms as F32, and a tied lm_head is
not written (llama.cpp reuses token_embd when `output.weight` is absent).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import gguf
import numpy as np

from epm_edge.errors import ModelError
from epm_edge.export.merge import PRE_TOKENIZERS

ARCHITECTURES = ("LlamaForCausalLM",)
EPM_PREFIX = "epm."


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo the rotary row order transformers uses (half-split) back to llama.cpp's (interleaved)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _load_tensors(hf_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{hf_dir}: no .safetensors weights to convert")
    tensors = {}
    for f in files:
        tensors.update(load_file(f))
    return tensors


def convert(hf_dir: Path, out_path: Path, source_gguf: Path | None = None, metadata: dict | None = None) -> Path:
    """Write `out_path` (F16 GGUF). Tokenizer metadata comes from `source_gguf` when the base was
    a GGUF (exactly what llama.cpp used before), else from the HF tokenizer files."""
    config = json.loads((hf_dir / "config.json").read_text())
    arch = (config.get("architectures") or ["?"])[0]
    if arch not in ARCHITECTURES:
        raise ModelError(f"{hf_dir}: architecture {arch} is not supported by the GGUF converter "
                         f"(supported: {', '.join(ARCHITECTURES)})")
    if config.get("rope_scaling"):
        raise ModelError(f"{hf_dir}: rope_scaling {config['rope_scaling']} is not supported by the GGUF converter")
    n_layer, n_head = config["num_hidden_layers"], config["num_attention_heads"]
    n_head_kv = config.get("num_key_value_heads", n_head)
    head_dim = config.get("head_dim") or config["hidden_size"] // n_head

    tmp = out_path.with_name(out_path.name + ".tmp")  # renamed when complete
    w = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    w.add_name(config.get("_name_or_path") or hf_dir.name)
    w.add_vocab_size(config["vocab_size"])
    w.add_context_length(config.get("max_position_embeddings", 2048))
    w.add_embedding_length(config["hidden_size"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_block_count(n_layer)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(float(config.get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-5)))
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if source_gguf:
        _copy_tokenizer(Path(source_gguf), w)
    else:
        _hf_tokenizer(hf_dir, config["vocab_size"], w)
    for key, value in (metadata or {}).items():
        _add_epm(w, key, value)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layer)
    tensors = _load_tensors(hf_dir)
    tied = config.get("tie_word_embeddings", False) or "lm_head.weight" not in tensors
    for name, data in tensors.items():
        if name == "lm_head.weight" and tied:
            continue
        if name.endswith("rotary_emb.inv_freq"):
            continue
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise ModelError(f"{hf_dir}: cannot map tensor '{name}' to a GGUF name")
        data = data.astype(np.float32)
        if name.endswith("q_proj.weight"):
            data = _permute(data, n_head)
        elif name.endswith("k_proj.weight"):
            data = _permute(data, n_head_kv)
        w.add_tensor(new, data.astype(np.float16) if data.ndim == 2 else data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.replace(out_path)
    return out_path


def _copy_tokenizer(source: Path, w: gguf.GGUFWriter) -> None:
    for field in gguf.GGUFReader(source).fields.values():
        if field.name.startswith("tokenizer."):
            sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
            w.add_key_value(field.name, field.contents(), field.types[0], sub_type=sub)


def _hf_tokenizer(hf_dir: Path, n_vocab: int, w: gguf.GGUFWriter) -> None:
    """A byte-level BPE tokenizer.json (the SmolLM2 kind) -> llama.cpp's gpt2 tokenizer metadata."""
    path = hf_dir / "tokenizer.json"
    if not path.exists():
        raise ModelError(f"{hf_dir}: no tokenizer.json to convert")
    tok = json.loads(path.read_text(encoding="utf-8"))
    model = tok["model"]
    if model.get("type") != "BPE":
        raise ModelError(f"{path}: tokenizer type {model.get('type')} is not supported (byte-level BPE only)")
    pre = next((k for k, v in PRE_TOKENIZERS.items() if _same_pre(v, tok.get("pre_tokenizer"))), None)
    if pre is None:
        raise ModelError(f"{path}: pre-tokenizer {tok.get('pre_tokenizer')} has no known llama.cpp "
                         f"equivalent (known: {', '.join(PRE_TOKENIZERS)})")
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [gguf.TokenType.UNUSED] * n_vocab
    for text, i in model["vocab"].items():
        tokens[i], types[i] = text, gguf.TokenType.NORMAL
    for added in tok.get("added_tokens", []):
        tokens[added["id"]] = added["content"]
        types[added["id"]] = gguf.TokenType.CONTROL if added["special"] else gguf.TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    gguf.SpecialVocab(hf_dir, load_merges=False, n_vocab=n_vocab).add_to_gguf(w, quiet=True)


def _same_pre(known: dict, actual: dict | None) -> bool:
    """Compare pre-tokenizers on the fields that change how text is split."""
    def shape(p):
        if not p:
            return None
        if p["type"] == "Sequence":
            return tuple(shape(x) for x in p["pretokenizers"])
        return (p["type"], p.get("individual_digits"), p.get("add_prefix_space"), p.get("use_regex"))
    return shape(known) == shape(actual)


def _add_epm(w: gguf.GGUFWriter, key: str, value) -> None:
    key = key if key.startswith(EPM_PREFIX) else EPM_PREFIX + key
    if isinstance(value, bool):
        w.add_bool(key, value)
    elif isinstance(value, float):
        w.add_float32(key, value)
    elif isinstance(value, int):
        w.add_int64(key, value)
    else:
        w.add_string(key, str(value))


def set_metadata(path: Path, metadata: dict) -> None:
    """Rewrite a GGUF with `epm.*` keys added, replaced or (None) removed (the thresholds and verification scores
    are only known after verify). The tensors are copied byte for byte."""
    reader = gguf.GGUFReader(path)
    tmp = path.with_name(path.name + ".tmp")
    write_like(reader, tmp, metadata=metadata)
    del reader  # release the memory map before replacing the file
    os.replace(tmp, path)


def write_like(reader: gguf.GGUFReader, out: Path, tensors: list | None = None, metadata: dict | None = None) -> None:
    """Write `reader`'s metadata, with the `epm.*` keys of `metadata` added, replaced or (None) removed, and
    `tensors` (ReaderTensors, default the reader's own) byte for byte to `out`."""
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    new = {k if k.startswith(EPM_PREFIX) else EPM_PREFIX + k: v for k, v in (metadata or {}).items()}
    tensors = reader.tensors if tensors is None else tensors
    w = gguf.GGUFWriter(str(out), arch, endianess=reader.endianess)
    for field in reader.fields.values():
        # GGUF.* are virtual fields and general.architecture is written by the writer itself.
        if field.name.startswith("GGUF.") or field.name == gguf.Keys.General.ARCHITECTURE or field.name in new:
            continue
        sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(field.name, field.contents(), field.types[0], sub_type=sub)
    for key, value in new.items():
        if value is not None:  # None removes the key
            _add_epm(w, key, value)
    for t in tensors:
        w.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for t in tensors:
        w.write_tensor_data(t.data, tensor_endianess=reader.endianess)
    w.close()


def read_metadata(path: Path) -> dict:
    """The `epm.*` keys of a GGUF file, without the prefix."""
    fields = gguf.GGUFReader(path).fields
    return {k[len(EPM_PREFIX):]: f.contents() for k, f in fields.items() if k.startswith(EPM_PREFIX)}
