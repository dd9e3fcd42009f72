"""HF checkpoint -> GGUF, and PEFT adapter -> GGUF LoRA, through llama.cpp's own converters.

`convert_hf_to_gguf.py` (its `conversion` package) and `convert_lora_to_gguf.py` come from the
llama.cpp source that llama-cpp-python is built from, with the matching `gguf-py`: `make install`
installs both from that source, so the converter always belongs to the llama.cpp that runs the
model. Every architecture it registers converts; ours is the part it lacks: the tokenizer of a GGUF
base carried over exactly, and the `epm.*` provenance keys.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from epm_edge.errors import ModelError
from epm_edge.export.gguf_metadata import add_epm, set_metadata

INSTALL_HINT = ("install it from llama-cpp-python's llama.cpp source with `make install`, or: pip install --no-deps "
                "LLAMA_CPP_SRC/gguf-py LLAMA_CPP_SRC (LLAMA_CPP_SRC: vendor/llama.cpp of the llama-cpp-python sdist)")


def _conversion():
    """llama.cpp's `conversion` package (the body of convert_hf_to_gguf.py)."""
    try:
        import conversion
    except ImportError as e:
        raise ModelError(f"llama.cpp's GGUF converter is not installed ({e}): {INSTALL_HINT}") from None
    if not os.environ.get("EPM_EDGE_VERBOSE"):  # set by -v
        conversion.logger.setLevel(logging.WARNING)
    return conversion


def converter_info() -> str:
    """Which converter export uses: where it is installed from, and its gguf-py version."""
    from importlib import metadata

    conversion = _conversion()
    try:
        url = json.loads(metadata.distribution("llama-cpp-scripts").read_text("direct_url.json") or "{}").get("url")
    except metadata.PackageNotFoundError:
        url = None
    return (f"llama.cpp convert_hf_to_gguf / convert_lora_to_gguf from {url or Path(conversion.__file__).parent}, "
            f"gguf-py {metadata.version('gguf')}; the runtime: llama-cpp-python {metadata.version('llama-cpp-python')}")


def architecture(hf_dir: Path) -> str:
    """The model's architecture, as its config names it; ModelError (one line) where llama.cpp's converter
    has no class for it."""
    conversion = _conversion()
    hparams = conversion.ModelBase.load_hparams(Path(hf_dir), False)
    arch = conversion.get_model_architecture(hparams, conversion.ModelType.TEXT)
    try:
        conversion.get_model_class(arch, mmproj=False)
    except NotImplementedError:
        raise ModelError(f"{hf_dir}: architecture {arch} is not supported by llama.cpp's GGUF converter") from None
    return arch


def convert(hf_dir: Path, out_path: Path, source_gguf: Path | None = None, metadata: dict | None = None) -> Path:
    """Write `out_path` (F16 GGUF) from the HF checkpoint `hf_dir`. Tokenizer metadata comes from
    `source_gguf` when the base was a GGUF (exactly what llama.cpp tokenized with before, chat template
    included), else from the HF tokenizer files as llama.cpp's converter reads them."""
    import gguf
    import torch

    conversion = _conversion()
    model_class = conversion.get_model_class(architecture(hf_dir), mmproj=False)

    class Converter(model_class):
        model_arch = model_class.model_arch

        def set_vocab(self):
            if source_gguf:
                copy_tokenizer(Path(source_gguf), self.gguf_writer)
            else:
                super().set_vocab()
            for key, value in (metadata or {}).items():
                add_epm(self.gguf_writer, key, value)

    tmp = out_path.with_name(out_path.name + ".tmp")  # renamed when complete
    try:
        with torch.inference_mode():
            Converter(Path(hf_dir), gguf.LlamaFileType.MOSTLY_F16, tmp).write()
    except (ValueError, KeyError, NotImplementedError, AssertionError, RuntimeError) as e:
        tmp.unlink(missing_ok=True)
        raise ModelError(f"{hf_dir}: llama.cpp's converter failed: {e}") from None
    tmp.replace(out_path)
    return out_path


def convert_lora(adapter: Path, base_hf_dir: Path, out_path: Path, metadata: dict | None = None) -> Path:
    """Write the PEFT adapter `adapter` as a GGUF LoRA (F32) for the base whose config is in `base_hf_dir`,
    with `metadata` as `epm.*` keys. convert_lora_to_gguf is a script: it runs in a child process."""
    architecture(base_hf_dir)
    tmp = out_path.with_name(out_path.name + ".tmp")
    cmd = [sys.executable, "-m", "convert_lora_to_gguf", "--base", str(base_hf_dir), "--outtype", "f32",
           "--outfile", str(tmp), str(adapter)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_LOCAL_GGUF": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0 or not tmp.exists():
        tmp.unlink(missing_ok=True)
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise ModelError(f"{adapter}: llama.cpp's convert_lora_to_gguf failed:\n{tail}")
    if metadata:
        set_metadata(tmp, metadata)
    tmp.replace(out_path)
    return out_path


def copy_tokenizer(source: Path, w) -> None:
    """Every `tokenizer.*` key of the GGUF `source` into the writer `w`."""
    import gguf

    for field in gguf.GGUFReader(source).fields.values():
        if field.name.startswith("tokenizer."):
            sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
            w.add_key_value(field.name, field.contents(), field.types[0], sub_type=sub)
