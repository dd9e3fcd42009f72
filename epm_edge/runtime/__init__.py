"""Scorers: one small protocol, several runtimes (llama.cpp, ONNX Runtime, transformers).

Each backend module imports its heavy runtime inside the module, so importing this package is cheap.
"""

from __future__ import annotations

from pathlib import Path

from epm_edge.errors import ModelError
from epm_edge.runtime.base import Scorer

BACKENDS = ("llamacpp", "onnx", "transformers")


def detect_backend(model: str | Path) -> str:
    """Guess the backend from the model path: .gguf or adapter dir -> llamacpp, dir with *.onnx -> onnx,
    HF dir -> transformers."""
    path = Path(model)
    if path.suffix == ".gguf" or (path / "adapter_config.json").exists():
        return "llamacpp"
    if path.is_dir() and any(path.glob("*.onnx")):
        return "onnx"
    if path.is_dir() and (path / "config.json").exists():
        return "transformers"
    raise ModelError(f"{path}: not a .gguf file, a trained adapter dir, an ONNX export dir or a Hugging Face model dir")


def load_scorer(model: str | Path, backend: str | None = None, threads: int | None = None,
                batch_size: int = 32, lora: str | Path | None = None, lora_scale: float = 1.0) -> Scorer:
    """A scorer for the model file or dir `model` (a trained adapter dir runs through
    epm_edge.resolve.open_scorer, which builds its GGUF first); `lora`: a GGUF LoRA llama.cpp applies to
    the GGUF `model` as it loads, at `lora_scale`."""
    path = Path(model)
    if not path.exists():
        raise ModelError(f"{path}: model not found")
    backend = backend or detect_backend(path)
    if (path / "adapter_config.json").exists():
        raise ModelError(f"{path}: a trained adapter dir runs as a GGUF built from it (epm_edge.resolve.open_scorer)")
    if lora and (backend != "llamacpp" or path.suffix != ".gguf"):
        raise ModelError(f"{lora}: a GGUF LoRA applies to a .gguf base model on llama.cpp, not to {path}")
    if backend == "llamacpp":
        from epm_edge.runtime.llamacpp import LlamaCppScorer
        # one pair per decode: see its module
        return LlamaCppScorer(path, threads=threads, lora=lora, lora_scale=lora_scale)
    if backend == "onnx":
        from epm_edge.runtime.onnx import OnnxScorer
        return OnnxScorer(path, threads=threads)  # one pair per run: see its module
    if backend == "transformers":
        from epm_edge.runtime.hf import TransformersScorer
        return TransformersScorer(path, threads=threads, batch_size=batch_size)
    raise ModelError(f"unknown backend '{backend}' (choose from {', '.join(BACKENDS)})")
