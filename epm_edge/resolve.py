"""Which model a command runs: the shipped default, or the model given, made runnable.

A trained adapter dir runs as a GGUF built from it once and cached (export.adapter_gguf); every
other model file or dir goes to its runtime as it is. Commands call `open_scorer`; the runtimes
only ever see files they can load.
"""

from __future__ import annotations

from pathlib import Path

from epm_edge import model_store
from epm_edge.errors import EpmError, ModelError
from epm_edge.runtime import load_scorer
from epm_edge.runtime.base import Scorer


def default_quant() -> str:
    """The GGUF type a trained adapter runs as unless `--quant` says otherwise, by what was measured
    (model card, "Quantization"; reports/scorer-speed*.md): BF16 where this llama.cpp build
    multiplies bfloat16 natively (AVX512_BF16) and has no AMX backend (on the AVX-512 EPYC measured,
    the fastest type in the scorer and as close to the fp32 model as F16); else Q8_0, the fastest
    type with AMX tiles, within 0.5 F1 point of fp32 wherever it was verified."""
    from epm_edge.runtime.llamacpp import amx_build, build_features

    return "BF16" if "AVX512_BF16" in build_features() and not amx_build() else "Q8_0"


def is_adapter(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").exists()


def runnable(model: str | Path, quant: str | None = None) -> Path:
    """`model` as a file its runtime loads: an adapter dir becomes its cached GGUF of type `quant`
    (default: default_quant())."""
    from epm_edge.export.adapter_gguf import cached_gguf

    return cached_gguf(Path(model), quant or default_quant()) if is_adapter(model) else Path(model)


def default_model(quant: str | None = None) -> Path:
    """The model commands use when none is given: the shipped adapter as a GGUF of type `quant`
    (built on first use, then cached), else the untrained base."""
    adapter = model_store.shipped_adapter()
    if adapter is None:
        from epm_edge.console import err

        err.print(f"[yellow]warning:[/] models/{model_store.DEFAULT_ADAPTER} not found: using the untrained base "
                  "model (zero-shot, weak); pass --model to choose one")
        return model_store.base_gguf()
    return runnable(adapter, quant)


def open_scorer(model: str | Path | None = None, backend: str | None = None, threads: int | None = None,
                batch_size: int = 32, quant: str | None = None, both_orders: bool = False,
                lora: str | Path | None = None, lora_scale: float = 1.0) -> tuple[Path, Scorer]:
    """(the model file run, its scorer) for `model` (default: default_model()). `quant` applies to
    trained adapter dirs only, which run on llama.cpp; `both_orders` scores every pair as A/B and B/A;
    `lora`: a GGUF LoRA applied to the .gguf `model` as it loads."""
    if model is not None and not Path(model).exists():
        raise ModelError(f"{model}: model not found")
    if lora and (model is None or is_adapter(model)):
        raise EpmError("--lora applies to a base model given with --model BASE.gguf (a trained adapter dir runs "
                       "merged into its base)")
    if model is not None and not is_adapter(model):
        if quant:
            raise EpmError(f"--quant applies to trained adapter dirs; {model} is not one")
        path = Path(model)
    elif backend not in (None, "llamacpp"):
        raise EpmError(f"{model or 'the default model'} is a trained adapter: it runs on llama.cpp, not {backend} "
                       "(`epm-edge export` makes ONNX and transformers variants of it)")
    else:
        path = runnable(model, quant) if model is not None else default_model(quant)
    scorer = load_scorer(path, backend=backend, threads=threads, batch_size=batch_size, lora=lora,
                         lora_scale=lora_scale)
    if both_orders:
        from epm_edge.runtime.orders import BothOrders

        scorer = BothOrders(scorer)
    return path, scorer


def feature_stage(mode: str, model: str | Path | None, both_orders: bool | None):
    """(the feature stage `--cascade MODE` gives `model`, or None; whether the LLM scores both orders:
    as the cascade was fitted, else as asked, by default yes)."""
    from epm_edge.features.cascade import Cascade, resolve_cascade

    stage = resolve_cascade(mode, Path(model) if model is not None else None)
    if isinstance(stage, Cascade):
        fitted = stage.settings.orders
        if both_orders is not None and (2 if both_orders else 1) != fitted:
            raise EpmError(f"the cascade of this model was fitted on {fitted} record order(s): "
                           f"drop --{'one-order' if fitted == 2 else 'both-orders'} or pass --cascade off")
        return stage, fitted == 2
    return stage, True if both_orders is None else both_orders
