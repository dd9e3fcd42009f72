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

import numpy as np

from epm_edge import __version__
from epm_edge.console import err
from epm_edge.errors import EpmError
from epm_edge.export.adapter_gguf import gguf_metadata
from epm_edge.export.imatrix import FILE_NAME as IMATRIX
from epm_edge.features.cascade import FEATURES_DIR
from epm_edge.export.recipe import Recipe, VariantSpec
from epm_edge.evaluate.gate import FAIL, INCONCLUSIVE
from epm_edge.model_settings import BOTH_ORDERS, file_cuts
from epm_edge.model_store import sha256_file
from epm_edge.runtime.provenance import read_sidecar, write_sidecar

REPORT_JSON, REPORT_MD, RECIPE_COPY = "report.json", "report.md", "recipe.toml"
SCORES_CSV = "verify-scores.csv"  # every verification pair with each scoring's P(match): which pairs flipped


class Steps:
    """Progress on stderr: each step with the time since the start."""

    def __init__(self):
        self.start = time.perf_counter()

    def __call__(self, msg: str) -> None:
        err.print(f"[dim]{time.perf_counter() - self.start:7.1f}s[/] {msg}")


# Runtime LoRA: the base alone per type (gguf/base-Q8_0.gguf), and the adapter once as a GGUF LoRA.
LORA_BASE_PREFIX, LORA_FILE = "base-", "adapter-lora.gguf"


def variant_path(root: Path, spec: VariantSpec) -> Path:
    if spec.format == "onnx":
        return root / "onnx" / spec.quant
    if spec.lora:
        return root / "gguf" / f"{LORA_BASE_PREFIX}{spec.quant}.gguf"
    return root / "gguf" / f"model-{spec.quant}{'-imatrix' if spec.imatrix else ''}.gguf"


def run_export(recipe: Recipe, out: Path, base: str | Path | None = None, adapter: Path | None = None,
               data: list[Path] | None = None, split: str | None = None, pairs: int | None = None,
               force: bool = False, threads: int | None = None, lora_gguf: bool = False) -> dict:
    """Build every variant of `recipe` into `out`, verify them, write reports; returns report.json's dict.
    `lora_gguf`: also write the adapter as a GGUF LoRA and verify runtime-LoRA twins of the GGUF types."""
    from epm_edge.export import gguf_convert, merge, onnx_export, quantize
    from epm_edge.export.recipe import with_runtime_lora

    out = Path(out)
    if out.exists() and not force:
        raise EpmError(f"{out}: already exists; pass --force to replace it")
    recipe = with_runtime_lora(recipe) if lora_gguf else recipe
    if not adapter and any(v.lora for v in recipe.variants):
        raise EpmError("runtime-LoRA variants (--lora-gguf, or `lora = true` in the recipe) need an adapter")
    trained = read_sidecar(adapter) if adapter else {}
    data = verify_data(data or _trained_data(trained), recipe)  # before minutes of building
    log = Steps()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        log("base model")
        base_model = merge.resolve_base(base, Path(adapter) if adapter else None)
        if any(v.format == "gguf" for v in recipe.variants):
            gguf_convert.architecture(base_model.hf_dir)  # one llama.cpp cannot convert stops here, not after the merge
        merge.check_prompt_fits(base_model)
        log(f"merging {'adapter ' + str(adapter) if adapter else 'no adapter'} into {base_model.hf_dir}")
        prov = merge.merge(base_model, adapter, tmp / "merged")
        meta = gguf_metadata(prov)
        gguf_specs = [v for v in recipe.variants if v.format == "gguf" and not v.lora]
        lora_specs = [v for v in recipe.variants if v.lora]
        onnx_specs = [v for v in recipe.variants if v.format == "onnx"]
        if gguf_specs or lora_specs:
            (tmp / "gguf").mkdir()
        if lora_specs:
            _runtime_lora(tmp, base_model, Path(adapter), meta, lora_specs, threads, log)
        if gguf_specs:
            f16 = tmp / "gguf" / "model-F16.gguf"
            log("converting to GGUF F16")
            gguf_convert.convert(tmp / "merged", f16, source_gguf=base_model.gguf, metadata={**meta, "quant": "F16"})
            calibration = (_importance_matrix(tmp, data, recipe, threads, log)
                           if any(s.imatrix for s in gguf_specs) else {})
            for spec in gguf_specs:
                if spec.quant != "F16":
                    log(f"quantizing GGUF {spec.quant}{' with the importance matrix' if spec.imatrix else ''}")
                    quantize.quantize(f16, variant_path(tmp, spec), spec.quant, threads=threads,
                                      imatrix=tmp / "gguf" / IMATRIX if spec.imatrix else None,
                                      provenance=calibration if spec.imatrix else None)
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
        report = verify_export(tmp, recipe, data=data, split=split, pairs=pairs,
                               threads=threads, log=log)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"export written to {out}")
    return report


def _runtime_lora(root: Path, base_model, adapter: Path, meta: dict, specs: list[VariantSpec], threads: int | None,
                  log) -> None:
    """The base alone as a GGUF of each type in `specs`, and the adapter as one GGUF LoRA for all of them."""
    from epm_edge.export import gguf_convert, quantize

    log("converting the base alone to GGUF F16 (runtime LoRA)")
    f16 = root / "gguf" / f"{LORA_BASE_PREFIX}F16.gguf"
    gguf_convert.convert(base_model.hf_dir, f16, source_gguf=base_model.gguf,
                         metadata={**meta, "adapter_sha256": "none", "quant": "F16"})
    for spec in specs:
        if spec.quant != "F16":
            log(f"quantizing the base to GGUF {spec.quant}")
            quantize.quantize(f16, variant_path(root, spec), spec.quant, threads=threads)
    if not any(s.quant == "F16" for s in specs):
        f16.unlink()
    log(f"converting the adapter to a GGUF LoRA ({LORA_FILE})")
    gguf_convert.convert_lora(adapter, base_model.hf_dir, root / "gguf" / LORA_FILE, metadata=meta)


def _importance_matrix(root: Path, data: list[Path], recipe: Recipe, threads: int | None, log) -> dict:
    """Compute the importance matrix from the merged model into <root>/gguf/imatrix.gguf; returns the
    provenance the calibrated GGUFs carry."""
    from epm_edge.console import progress_bar
    from epm_edge.export import imatrix

    pairs, names = imatrix.calibration_pairs(data, recipe.imatrix_split, recipe.imatrix_pairs, recipe.record_tokens)
    log(f"importance matrix from {len(pairs)} prompts of {', '.join(names)}")
    with progress_bar() as bar:
        task = bar.add_task("importance matrix", total=len(pairs))
        stats = imatrix.compute(root / "merged", pairs, threads=threads, on_pair=lambda: bar.advance(task))
    path = imatrix.write(root / "gguf" / IMATRIX, stats, names, len(pairs))
    return {"imatrix.data": ",".join(names), "imatrix.prompts": len(pairs), imatrix.PROVENANCE_KEY: sha256_file(path)}


def _trained_data(trained: dict) -> list[Path] | None:
    """The training data dirs an adapter's sidecar names (`data.config.dirs`, as `epm-edge train` writes
    it) that still exist: verification defaults to their valid splits."""
    data = trained.get("data")
    dirs = data.get("config", {}).get("dirs", []) if isinstance(data, dict) else [data] if data else []
    return [Path(d) for d in dirs if Path(d).is_dir()] or None


def verify_data(data: list[Path] | None, recipe: Recipe) -> list[Path]:
    """The labelled pair sets to verify on: `data`, else the recipe's."""
    if not (data or recipe.data):
        raise EpmError("no labelled data to verify on: pass --data DIR[,DIR...] (or set [verify] data in the recipe)")
    return list(data or recipe.data)


def verify_export(root: Path, recipe: Recipe, data: list[Path] | None = None, split: str | None = None,
                  pairs: int | None = None, sample: int = 1, threads: int | None = None, batch_size: int = 32,
                  log=None) -> dict:
    """Verify the variants of an export dir against its merged reference; stamp and report."""
    from epm_edge.data import load_pair_set
    from epm_edge.data.pairs import spread_sample
    from epm_edge.evaluate.scoring import serialize_pairs
    from epm_edge.evaluate.verify import Candidate, verify

    log = log or Steps()
    data = verify_data(data, recipe)
    split = split or recipe.split
    drawn = spread_sample([load_pair_set(d) for d in data], split, pairs or recipe.pairs, sample)
    texts = [t for ps, p in drawn for t in serialize_pairs(ps, p, recipe.record_tokens)]
    labels = np.concatenate([p.labels for _, p in drawn])
    reference = Candidate("merged", "hf", "f32", root / "merged")
    candidates = []
    for spec in recipe.variants:
        path = variant_path(root, spec)
        if not path.exists():
            raise EpmError(f"{path}: variant '{spec.name}' of the recipe is missing from this export")
        lora = root / "gguf" / LORA_FILE if spec.lora else None
        if lora and not lora.exists():
            raise EpmError(f"{lora}: the GGUF LoRA of variant '{spec.name}' is missing from this export")
        candidates.append(Candidate(spec.name, spec.format, spec.quant, path, spec.max_delta_f1, spec.max_flip_rate,
                                    spec.imatrix, lora))
    sets = ", ".join(f"{ps.name} {len(p)}" for ps, p in drawn)
    log(f"verifying {len(candidates)} variants on {len(texts)} {split} pairs (sample {sample}: {sets})")
    result = verify(reference, candidates, texts, labels, orders=recipe.orders, threads=threads,
                    batch_size=batch_size, log=log)
    log("writing thresholds and verification scores into the artifacts")
    sample_name = f"{split} sample {sample} of {', '.join(ps.name for ps, _ in drawn)}"
    _stamp(root, result, sample_name)
    _write_scores(root / SCORES_CSV, drawn, result.scores)
    report = _report(root, result, data, split, sample, recipe)
    (root / REPORT_JSON).write_text(json.dumps(report, indent=2) + "\n")
    (root / REPORT_MD).write_text(report_markdown(report))
    return report


def _write_scores(path: Path, drawn: list, scores: dict[str, np.ndarray]) -> None:
    import csv

    keys = [(ps.name, a, b, int(y)) for ps, p in drawn for a, b, y in zip(p.a_ids, p.b_ids, p.labels)]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["set", "ltable_id", "rtable_id", "label", *scores])
        for i, key in enumerate(keys):
            w.writerow([*key, *(f"{v[i]:.6f}" for v in scores.values())])


def _stamp(root: Path, result, data_name: str) -> None:
    """Each artifact's own thresholds and its verification scores into it (GGUF metadata, JSON sidecars);
    a runtime-LoRA variant's go into the GGUF LoRA, for its base type. Verified in one order, an artifact
    keeps no cut for both orders (an earlier one belonged to other pairs)."""
    from epm_edge.export.gguf_metadata import set_metadata
    from epm_edge.model_settings import lora_keys

    def cuts(v):
        found = file_cuts(v.threshold_one_order, v.threshold if result.orders == 2 else None)
        return {BOTH_ORDERS: None, **found}

    def updated(path: Path, new: dict) -> dict:
        return {k: v for k, v in {**read_sidecar(path), **new}.items() if v is not None}

    write_sidecar(root / "merged", updated(root / "merged", cuts(result.reference)))
    for v in result.variants:
        scores = {"verify.f1": v.f1, "verify.delta_f1": v.delta_f1, "verify.flip_rate": v.flip_rate,
                  "verify.verdict": v.verdict, "verify.data": data_name, "verify.n_pairs": result.n_pairs,
                  "verify.orders": result.orders}
        if v.lora:
            set_metadata(Path(v.lora), lora_keys(v.quant, {**cuts(v), **scores}))
        elif v.format == "gguf":
            set_metadata(Path(v.path), {**cuts(v), **scores})
        else:
            write_sidecar(Path(v.path), updated(Path(v.path), {**cuts(v), **scores}))


def _report(root: Path, result, data: list[Path], split: str, sample: int, recipe: Recipe) -> dict:
    from epm_edge.evaluate.gate import LEVEL, RESAMPLES, RULE

    def row(v):
        d = v.to_json()
        for key in ("path", "lora"):
            if d[key] and Path(d[key]).is_relative_to(root):
                d[key] = str(Path(d[key]).relative_to(root))
        return d

    return {"version": __version__, "threshold": result.threshold, "data": [str(d) for d in data], "split": split,
            "sample": sample, "n_pairs": result.n_pairs, "orders": result.orders,
            "interval": {"level": LEVEL, "resamples": RESAMPLES, "method": "paired percentile bootstrap"},
            "rule": RULE, "recipe": str(recipe.path), "provenance": read_sidecar(root / "merged"),
            "reference": row(result.reference), "variants": [row(v) for v in result.variants],
            "passed": not result.failed}


def verdict_names(report: dict, verdict: str) -> list[str]:
    return [v["name"] for v in report["variants"] if v["verdict"] == verdict]


def _verdict_cell(v: dict, n_pairs: int) -> str:
    if v["verdict"] == FAIL:
        return "**FAIL**"
    if v["verdict"] == INCONCLUSIVE:
        need = v["pairs_to_decide"]
        if need is None or need > 100 * n_pairs:  # a point estimate at its budget: no sample size will do
            return "inconclusive (at its budget)"
        return f"inconclusive (~{need:,} pairs would decide)"
    return v["verdict"]


def report_markdown(report: dict) -> str:
    head = ("| variant | format | quant | imatrix | LoRA | size MB | pairs/s | threshold | one-order cut | F1 "
            "| ΔF1 pt [95 % CI] | flips [95 % CI] | mean abs ΔP | budget | verdict |\n|" + "---|" * 15 + "\n")
    lines = []
    for v in [report["reference"], *report["variants"]]:
        if v["max_delta_f1"] is None:
            budget = delta = flips = "reference"
        else:
            budget = f"ΔF1 ≥ -{v['max_delta_f1']:g} pt, flips ≤ {v['max_flip_rate']:.0%}"
            delta = (f"{v['delta_f1'] * 100:+.2f} [{v['delta_f1_low'] * 100:+.2f}, "
                     f"{v['delta_f1_high'] * 100:+.2f}]")
            flips = f"{v['flip_rate']:.1%} [{v['flip_rate_low']:.1%}, {v['flip_rate_high']:.1%}]"
        lines.append(f"| {v['name']} | {v['format']} | {v['quant']} | {'yes' if v['imatrix'] else ''} "
                     f"| {'at load' if v.get('lora') else ''} "
                     f"| {v['size_bytes'] / 1e6:.0f} | {v['pairs_per_second']:.1f} | {v['threshold']:.4f} "
                     f"| {v['threshold_one_order']:.4f} | {v['f1'] * 100:.1f} | {delta} | {flips} "
                     f"| {v['mean_abs_dp']:.4f} | {budget} | {_verdict_cell(v, report['n_pairs'])} |")
    prov = report["provenance"]
    order = "in both record orders combined, as `epm-edge match` does by default" if report["orders"] == 2 \
        else "in the A/B record order"
    inconclusive, failed = verdict_names(report, INCONCLUSIVE), verdict_names(report, FAIL)
    summary = ("Failed: " + ", ".join(failed) + ".\n" if failed else "No variant failed.\n")
    lora_note = ("LoRA \"at load\": the base alone at that type, with the adapter applied by llama.cpp as it loads "
                 f"(`--model gguf/{LORA_BASE_PREFIX}TYPE.gguf --lora gguf/{LORA_FILE}`); its size counts both "
                 "files.\n\n"
                 if any(v.get("lora") for v in report["variants"]) else "")
    if inconclusive:
        summary += "Inconclusive on these pairs: " + ", ".join(inconclusive) + ".\n"
    return (f"# epm-edge export report\n\n"
            f"Verified on {report['n_pairs']} {report['split']} pairs (sample {report['sample']}, drawn evenly "
            f"from {', '.join(Path(d).name for d in report['data'])} with a fixed seed), each scored {order}. "
            f"Each variant's threshold maximizes its own F1 on these pairs and is stored in it (quantization "
            f"shifts scores), with the cut for the A/B scores alone (`match --one-order`); flips count decisions, "
            f"each at its own threshold, that differ from the reference's. Intervals: 95 % paired bootstrap "
            f"({report['interval']['resamples']} resamples of the pairs, each scoring at its stored cut).\n\n"
            f"Rule: {report['rule']}\n\n"
            f"Base `{prov.get('base', '?')}` (sha256 {prov.get('base_sha256', '?')[:12]}...), adapter "
            f"`{prov.get('adapter') or 'none'}`, prompt {prov.get('prompt_version', '?')}, "
            f"epm-edge {report['version']}.\n\n" + lora_note + head + "\n".join(lines) + "\n\n" + summary)


def load_export_recipe(root: Path) -> Recipe:
    """The recipe an export was built with (copied into it), for `epm-edge verify --model`."""
    from epm_edge.export.recipe import load_recipe

    if not (root / "merged").is_dir():
        raise EpmError(f"{root}: not an epm-edge export dir (no merged/ reference)")
    recipe = load_recipe(root / RECIPE_COPY)
    if (root / REPORT_JSON).exists():  # the copy's relative data paths no longer resolve: reuse the last ones
        data = json.loads((root / REPORT_JSON).read_text())["data"]
        recipe.data = [Path(d) for d in ([data] if isinstance(data, str) else data)]
    return recipe
