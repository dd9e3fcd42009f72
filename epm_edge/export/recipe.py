"""Export recipes (TOML): the variants to build and the accuracy budget of each."""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from epm_edge.errors import EpmError

FORMATS = ("gguf", "onnx")
DEFAULT_RECIPE = Path(__file__).with_name("default.toml")  # shipped in the package


@dataclass
class VariantSpec:
    name: str
    format: str  # gguf | onnx
    quant: str  # GGUF: Q8_0, Q4_K_M, ...; ONNX: fp32, int8, int4
    max_delta_f1: float  # F1 points
    max_flip_rate: float  # fraction of pairs

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Recipe:
    path: Path
    variants: list[VariantSpec]
    data: Path | None = None
    split: str = "valid"
    limit: int | None = 200
    record_tokens: int = 64
    text: str = field(default="", repr=False)  # the file as written, copied into each export


def load_recipe(path: str | Path | None = None) -> Recipe:
    from epm_edge.export import onnx_export, quantize

    path = Path(path) if path else DEFAULT_RECIPE
    try:
        text = path.read_text(encoding="utf-8")
        raw = tomllib.loads(text)
    except FileNotFoundError:
        raise EpmError(f"{path}: recipe not found") from None
    except tomllib.TOMLDecodeError as e:
        raise EpmError(f"{path}: not valid TOML ({e})") from None
    verify = raw.get("verify", {})
    variants = []
    for i, v in enumerate(raw.get("variants", []), start=1):
        where = f"{path}: variant {i}"
        missing = [k for k in ("name", "format", "quant", "max_delta_f1", "max_flip_rate") if k not in v]
        if missing:
            raise EpmError(f"{where}: missing {', '.join(missing)}")
        if v["format"] not in FORMATS:
            raise EpmError(f"{where}: format '{v['format']}' must be one of {', '.join(FORMATS)}")
        check = quantize.check_quant if v["format"] == "gguf" else onnx_export.check_quant
        variants.append(VariantSpec(v["name"], v["format"], check(v["quant"]), float(v["max_delta_f1"]),
                                    float(v["max_flip_rate"])))
    if not variants:
        raise EpmError(f"{path}: no [[variants]] to build")
    if len({v.name for v in variants}) != len(variants):
        raise EpmError(f"{path}: variant names must be unique")
    if len({(v.format, v.quant) for v in variants}) != len(variants):
        raise EpmError(f"{path}: each format/quant pair may appear once (it names the output file)")
    data = verify.get("data")
    return Recipe(path=path, variants=variants, data=(path.parent / data).resolve() if data else None,
                  split=verify.get("split", "valid"), limit=verify.get("limit", 200),
                  record_tokens=verify.get("record_tokens", 64), text=text)
