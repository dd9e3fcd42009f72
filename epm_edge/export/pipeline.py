"""`epm-edge export` and `epm-edge verify`: merge, convert, quantize, verify, stamp, report.

An export is built in a temporary sibling dir and renamed into place at the end, so an
interrupted or failed build never leaves a directory that looks like a finished export.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from epm_edge import __version__
from epm_edge.console import err
from epm_edge.errors import EpmError
from epm_edge.export.adapter_gguf import gguf_metadata
from epm_edge.features.cascade import FEATURES_DIR
from epm_edge.export.recipe import Recipe, VariantSpec
from epm_edge.model_settings import file_cuts
from epm_edge.runtime.provenance import read_sidecar, write_sidecar

REPORT_JSON, REPORT_MD, RECIPE_COPY = "report.json", "report.md", "recipe.toml"


class Steps:
    """Progress on stderr: each step with the time since the start."""

    def __init__(self):
        self.start = time.perf_counter()

    def __call__(self, msg: str) -> None:
        err.print(f"[dim]{time.perf_counter() - self.start:7.1f}s[/] {msg}")


def variant_path(root: Path, spec: VariantSpec) -> Path:
    return root / "gguf" / f"model-{spec.quant}.gguf" if spec.format == "gguf" else root / "onnx" / spec.quant


def run_export(recipe: Recipe, out: Path, base: str | Path | None = None, adapter: Path | None = None,
               data: Path | None = None, split: str | None = None, limit: int | None = None,
               force: bool = False, threads: int | None = None) -> dict:
    """Build every variant of `recipe` into `out`, verify them, write reports; returns report.json's dict."""
    from epm_edge.export import gguf_convert, merge, onnx_export, quantize

    out = Path(out)
    if out.exists() and not force:
        raise EpmError(f"{out}: already exists; pass --force to replace it")
    trained = read_sidecar(adapter) if adapter else {}
    data = verify_data(data or _trained_data(trained), recipe)  # before minutes of building
    log = Steps()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        log("base model")
        base_model = merge.resolve_base(base)
        log(f"merging {'adapter ' + str(adapter) if adapter else 'no adapter'} into {base_model.hf_dir}")
        prov = merge.merge(base_model, adapter, tmp / "merged")
        meta = gguf_metadata(prov)
        gguf_specs = [v for v in recipe.variants if v.format == "gguf"]
        onnx_specs = [v for v in recipe.variants if v.format == "onnx"]
        if gguf_specs:
            (tmp / "gguf").mkdir()
            f16 = tmp / "gguf" / "model-F16.gguf"
            log("converting to GGUF F16")
            gguf_convert.convert(tmp / "merged", f16, source_gguf=base_model.gguf, metadata={**meta, "quant": "F16"})
            for spec in gguf_specs:
                if spec.quant != "F16":
                    log(f"quantizing GGUF {spec.quant}")
                    quantize.quantize(f16, variant_path(tmp, spec), spec.quant, threads=threads)
            if not any(s.quant == "F16" for s in gguf_specs):
                f16.unlink()
        if onnx_specs:
            fp32 = tmp / "onnx" / "fp32"
            log("exporting ONNX fp32 (optimum)")
            onnx_export.export_fp32(tmp / "merged", fp32)
            for spec in onnx_specs:
                if spec.quant != "fp32":
                    log(f"quantizing ONNX {spec.quant}")
                    onnx_export.quantize(fp32, variant_path(tmp, spec), spec.quant)
            if not any(s.quant == "fp32" for s in onnx_specs):
                shutil.rmtree(fp32)
            for spec in onnx_specs:
                write_sidecar(variant_path(tmp, spec), {**meta, "quant": spec.quant})
        (tmp / RECIPE_COPY).write_text(recipe.text)
        if adapter and (Path(adapter) / FEATURES_DIR).is_dir():  # the cascade travels with its LLM
            shutil.copytree(Path(adapter) / FEATURES_DIR, tmp / FEATURES_DIR)
        report = verify_export(tmp, recipe, data=data, split=split, limit=limit,
                               threads=threads, log=log)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"export written to {out}")
    return report


def _trained_data(trained: dict) -> Path | None:
    """The first training data dir an adapter's sidecar names (`data.config.dirs`, as
    `epm-edge train` writes it), if it still exists: verification defaults to its valid split."""
    data = trained.get("data")
    dirs = data.get("config", {}).get("dirs", []) if isinstance(data, dict) else [data] if data else []
    return next((Path(d) for d in dirs if Path(d).is_dir()), None)


def verify_data(data: Path | None, recipe: Recipe) -> Path:
    """The labelled pairs to verify on: `data`, else the recipe's."""
    if (data or recipe.data) is None:
        raise EpmError("no labelled data to verify on: pass --data DIR (or set [verify] data in the recipe)")
    return data or recipe.data


def verify_export(root: Path, recipe: Recipe, data: Path | None = None, split: str | None = None,
                  limit: int | None = None, threads: int | None = None, batch_size: int = 32,
                  log=None) -> dict:
    """Verify the variants of an export dir against its merged reference; stamp and report."""
    from epm_edge.data import load_pair_set
    from epm_edge.evaluate.verify import Candidate, verify

    log = log or Steps()
    data = verify_data(data, recipe)
    split = split or recipe.split
    limit = limit if limit is not None else recipe.limit
    ps = load_pair_set(data)
    pairs = ps.split(split).head(limit)
    reference = Candidate("merged", "hf", "f32", root / "merged")
    candidates = []
    for spec in recipe.variants:
        path = variant_path(root, spec)
        if not path.exists():
            raise EpmError(f"{path}: variant '{spec.name}' of the recipe is missing from this export")
        candidates.append(Candidate(spec.name, spec.format, spec.quant, path, spec.max_delta_f1, spec.max_flip_rate))
    log(f"verifying {len(candidates)} variants on {ps.name}/{split} ({len(pairs)} pairs)")
    result = verify(reference, candidates, ps, pairs, record_tokens=recipe.record_tokens, threads=threads,
                    batch_size=batch_size, log=log)
    log("writing threshold and verification scores into the artifacts")
    _stamp(root, result, f"{ps.name}/{split}")
    report = _report(root, result, data, split, recipe)
    (root / REPORT_JSON).write_text(json.dumps(report, indent=2) + "\n")
    (root / REPORT_MD).write_text(report_markdown(report))
    return report


def _stamp(root: Path, result, data_name: str) -> None:
    """Each artifact's own thresholds (one order, both orders) and its verification scores into it (GGUF
    metadata, JSON sidecars)."""
    from epm_edge.export.gguf_convert import set_metadata

    def cuts(v):
        return file_cuts(v.threshold_one_order, v.threshold)

    write_sidecar(root / "merged", {**read_sidecar(root / "merged"), **cuts(result.reference)})
    for v in result.variants:
        scores = {"verify.f1": v.f1, "verify.delta_f1": v.delta_f1, "verify.flip_rate": v.flip_rate,
                  "verify.passed": v.passed, "verify.data": data_name, "verify.n_pairs": result.n_pairs}
        if v.format == "gguf":
            set_metadata(Path(v.path), {**cuts(v), **scores})
        else:
            write_sidecar(Path(v.path), {**read_sidecar(Path(v.path)), **cuts(v), **scores})


def _report(root: Path, result, data: Path, split: str, recipe: Recipe) -> dict:
    def row(v):
        d = v.to_json()
        d["path"] = str(Path(v.path).relative_to(root)) if Path(v.path).is_relative_to(root) else v.path
        return d

    return {"version": __version__, "threshold": result.threshold, "data": str(data), "split": split,
            "n_pairs": result.n_pairs, "recipe": str(recipe.path), "provenance": read_sidecar(root / "merged"),
            "reference": row(result.reference), "variants": [row(v) for v in result.variants],
            "passed": not result.failed}


def report_markdown(report: dict) -> str:
    head = ("| variant | format | quant | size MB | load s | pairs/s | threshold | one-order cut | P | R | F1 "
            "| ΔF1 pt | flips | mean abs ΔP | budget | result |\n|" + "---|" * 16 + "\n")
    lines = []
    for v in [report["reference"], *report["variants"]]:
        budget = ("reference" if v["max_delta_f1"] is None
                  else f"≤{v['max_delta_f1']:g} pt, ≤{v['max_flip_rate']:.0%}")
        lines.append(f"| {v['name']} | {v['format']} | {v['quant']} | {v['size_bytes'] / 1e6:.0f} "
                     f"| {v['load_seconds']:.1f} | {v['pairs_per_second']:.1f} | {v['threshold']:.4f} "
                     f"| {v['threshold_one_order']:.4f} "
                     f"| {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['delta_f1'] * 100:+.2f} "
                     f"| {v['flip_rate']:.1%} | {v['mean_abs_dp']:.4f} | {budget} "
                     f"| {'pass' if v['passed'] else '**FAIL**'} |")
    prov = report["provenance"]
    return (f"# epm-edge export report\n\n"
            f"Verified on {report['n_pairs']} pairs of `{report['data']}` ({report['split']}), each scored in both "
            f"record orders as `epm-edge match` does by default (pairs/s counts a pair once). Each variant's "
            f"threshold maximizes its own F1 on these pairs and is stored in it (quantization shifts scores), "
            f"with the cut for the A/B scores alone (`match --one-order`); "
            f"flips count decisions, each at its own threshold, that differ from the reference's.\n\n"
            f"Base `{prov.get('base', '?')}` (sha256 {prov.get('base_sha256', '?')[:12]}...), adapter "
            f"`{prov.get('adapter') or 'none'}`, prompt {prov.get('prompt_version', '?')}, "
            f"epm-edge {report['version']}.\n\n" + head + "\n".join(lines) + "\n\n"
            + ("All variants are within their budgets.\n" if report["passed"] else
               "Failed: " + ", ".join(v["name"] for v in report["variants"] if not v["passed"]) + "\n"))


def load_export_recipe(root: Path) -> Recipe:
    """The recipe an export was built with (copied into it), for `epm-edge verify --model`."""
    from epm_edge.export.recipe import load_recipe

    if not (root / "merged").is_dir():
        raise EpmError(f"{root}: not an epm-edge export dir (no merged/ reference)")
    recipe = load_recipe(root / RECIPE_COPY)
    if (root / REPORT_JSON).exists():  # the copy's relative data path no longer resolves: reuse the last one
        recipe.data = Path(json.loads((root / REPORT_JSON).read_text())["data"])
    return recipe
