"""Export recipes (TOML): the variants to build and the accuracy budget of each."""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from epm_edge.errors import EpmError

FORMATS = ("gguf", "onnx")
RECIPES = Path(__file__).with_name("recipes")  # shipped in the package, chosen by name
DEFAULT_RECIPE = RECIPES / "default.toml"
VERIFY_KEYS = ("data", "split", "pairs", "orders", "record_tokens")
IMATRIX_KEYS = ("split", "pairs")


@dataclass
class VariantSpec:
    name: str
    format: str  # gguf | onnx
    quant: str  # GGUF: Q8_0, Q4_K_M, ...; ONNX: fp32, int8, int4
    max_delta_f1: float  # F1 points
    max_flip_rate: float  # fraction of pairs
    imatrix: bool = False  # GGUF: quantized with the importance matrix of the matcher's prompts
    lora: bool = False  # GGUF: the base alone at this type, with the adapter applied at load time (GGUF LoRA)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Recipe:
    path: Path
    variants: list[VariantSpec]
    data: list[Path] | None = None
    split: str = "valid"
    pairs: int = 1000  # sampled evenly across the data's sets
    orders: int = 1  # 1: A/B scores; 2: both record orders combined, as `match` scores by default
    record_tokens: int = 64
    imatrix_split: str = "train"
    imatrix_pairs: int = 128
    text: str = field(default="", repr=False)  # the file as written, copied into each export


def recipe_path(name_or_path: str | Path | None) -> Path:
    """A packaged recipe's file by its name (`default`, `imatrix-comparison`), else the path given."""
    if name_or_path is None:
        return DEFAULT_RECIPE
    packaged = RECIPES / f"{name_or_path}.toml"
    return packaged if not Path(name_or_path).exists() and packaged.exists() else Path(name_or_path)


def _section(raw: dict, name: str, known: tuple[str, ...], path: Path) -> dict:
    section = raw.get(name, {})
    unknown = sorted(set(section) - set(known))
    if unknown:
        raise EpmError(f"{path}: unknown key(s) {', '.join(unknown)} in [{name}] (known: {', '.join(known)})")
    return section


def load_recipe(path: str | Path | None = None) -> Recipe:
    from epm_edge.export import onnx_export, quantize

    path = recipe_path(path)
    try:
        text = path.read_text(encoding="utf-8")
        raw = tomllib.loads(text)
    except FileNotFoundError:
        raise EpmError(f"{path}: recipe not found") from None
    except tomllib.TOMLDecodeError as e:
        raise EpmError(f"{path}: not valid TOML ({e})") from None
    verify = _section(raw, "verify", VERIFY_KEYS, path)
    calibration = _section(raw, "imatrix", IMATRIX_KEYS, path)
    variants = []
    for i, v in enumerate(raw.get("variants", []), start=1):
        where = f"{path}: variant {i}"
        missing = [k for k in ("name", "format", "quant", "max_delta_f1", "max_flip_rate") if k not in v]
        if missing:
            raise EpmError(f"{where}: missing {', '.join(missing)}")
        if v["format"] not in FORMATS:
            raise EpmError(f"{where}: format '{v['format']}' must be one of {', '.join(FORMATS)}")
        check = quantize.check_quant if v["format"] == "gguf" else onnx_export.check_quant
        if v.get("imatrix") and (v["format"] != "gguf" or v["quant"].upper() in ("F16", "BF16")):
            raise EpmError(f"{where}: imatrix applies to quantized GGUF types only")
        if v.get("lora") and (v["format"] != "gguf" or v.get("imatrix")):
            raise EpmError(f"{where}: lora (runtime LoRA on the base) applies to GGUF variants without imatrix")
        variants.append(VariantSpec(v["name"], v["format"], check(v["quant"]), float(v["max_delta_f1"]),
                                    float(v["max_flip_rate"]), bool(v.get("imatrix", False)),
                                    bool(v.get("lora", False))))
    if not variants:
        raise EpmError(f"{path}: no [[variants]] to build")
    if len({v.name for v in variants}) != len(variants):
        raise EpmError(f"{path}: variant names must be unique")
    if len({(v.format, v.quant, v.imatrix, v.lora) for v in variants}) != len(variants):
        raise EpmError(f"{path}: each format/quant/imatrix/lora combination may appear once (it names the output file)")
    if verify.get("orders", 1) not in (1, 2):
        raise EpmError(f"{path}: [verify] orders must be 1 (A/B) or 2 (both record orders)")
    for where, section in (("verify", verify), ("imatrix", calibration)):
        if not (isinstance(section.get("pairs", 1), int) and section.get("pairs", 1) >= 1):
            raise EpmError(f"{path}: [{where}] pairs must be a whole number of at least 1")
    data = verify.get("data")
    dirs = [data] if isinstance(data, str) else data
    return Recipe(path=path, variants=variants,
                  data=[(path.parent / d).resolve() for d in dirs] if dirs else None,
                  split=verify.get("split", "valid"), pairs=verify.get("pairs", 1000),
                  orders=verify.get("orders", 1), record_tokens=verify.get("record_tokens", 64),
                  imatrix_split=calibration.get("split", "train"), imatrix_pairs=calibration.get("pairs", 128),
                  text=text)


def with_runtime_lora(recipe: Recipe) -> Recipe:
    """`recipe` with a runtime-LoRA twin (base of the same type + the adapter as a GGUF LoRA, same budget)
    of each GGUF variant without imatrix, unless it lists runtime-LoRA variants of its own. The twins
    are appended to the recipe's text too, so the copy in the export re-verifies them."""
    if any(v.lora for v in recipe.variants):
        return recipe
    twins = [replace(v, name=f"{v.name}-lora", lora=True) for v in recipe.variants
             if v.format == "gguf" and not v.imatrix]
    text = (recipe.text + "\n# Added by --lora-gguf: each GGUF type above as the base alone + the adapter as a "
            "GGUF LoRA.\n")
    for v in twins:
        text += (f'\n[[variants]]\nname = "{v.name}"\nformat = "gguf"\nquant = "{v.quant}"\nlora = true\n'
                 f"max_delta_f1 = {v.max_delta_f1:g}\nmax_flip_rate = {v.max_flip_rate:g}\n")
    return replace(recipe, variants=recipe.variants + twins, text=text)
