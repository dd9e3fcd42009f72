"""Export: merge, GGUF conversion and quantization, ONNX, verification gate, provenance, errors.

The whole pipeline runs on a tiny randomly initialised llama (hidden 64, 2 layers) that uses the
real SmolLM2 tokenizer (taken from the bundled GGUF), so tokenization, the prompt and the Yes/No
tokens are the real ones while every runtime stays fast. The GGUF converter is also checked on
the real SmolLM2 model against transformers.
"""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from epm_edge import prompt
from epm_edge.errors import EpmError, ModelError

TINY_RECIPE = """
[verify]
split = "valid"
pairs = 16
orders = 2
record_tokens = 32

[imatrix]
pairs = 8
{variants}
"""
VARIANTS = [("gguf-f16", "gguf", "F16"), ("gguf-bf16", "gguf", "BF16"), ("gguf-q8_0", "gguf", "Q8_0"),
            ("gguf-q4_k_m", "gguf", "Q4_K_M"), ("gguf-q4_0", "gguf", "Q4_0"), ("gguf-iq4_nl", "gguf", "IQ4_NL"),
            ("gguf-q4_0-imatrix", "gguf", "Q4_0"),
            ("onnx-fp32", "onnx", "fp32"),
            ("onnx-int8", "onnx", "int8"), ("onnx-int8-block", "onnx", "int8-block"), ("onnx-int4", "onnx", "int4")]


def recipe_text() -> str:
    """Every variant kind, with budgets a random model always meets (the gate is tested apart)."""
    variants = "".join(f'\n[[variants]]\nname = "{n}"\nformat = "{f}"\nquant = "{q}"\n'
                       f"imatrix = {'true' if n.endswith('-imatrix') else 'false'}\n"
                       "max_delta_f1 = 100\nmax_flip_rate = 1\n" for n, f, q in VARIANTS)
    return TINY_RECIPE.format(variants=variants)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory, base_gguf) -> Path:
    """A random 2-layer llama with the SmolLM2 tokenizer, saved as an HF dir."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from epm_edge.export.merge import _match_llamacpp_tokenizer

    out = tmp_path_factory.mktemp("tiny-base")
    torch.manual_seed(0)
    # A larger init scale than the default 0.02 so P(match) varies between pairs.
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         rope_theta=100000.0, tie_word_embeddings=True, initializer_range=0.1,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2)
    LlamaForCausalLM(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(base_gguf.parent, gguf_file=base_gguf.name).save_pretrained(out)
    _match_llamacpp_tokenizer(out, base_gguf)
    return out


@pytest.fixture(scope="module")
def tiny_adapter(tiny_base, tmp_path_factory) -> Path:
    """A LoRA adapter for the tiny base with non-zero B, so merging changes the outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("tiny-adapter")
    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_export(tiny_base, tiny_adapter, tiny_data, tmp_path_factory) -> Path:
    from epm_edge.cli import main

    root = tmp_path_factory.mktemp("export")
    recipe = root / "recipe.toml"
    recipe.write_text(recipe_text())
    out = root / "exp"
    result = CliRunner().invoke(main, ["export", "--recipe", str(recipe), "--base", str(tiny_base), "--adapter",
                                       str(tiny_adapter), "--out", str(out), "--data", str(tiny_data)])
    assert result.exit_code == 0, result.output
    return out


def test_export_layout_and_report(tiny_export):
    report = json.loads((tiny_export / "report.json").read_text())
    assert {v["name"] for v in report["variants"]} == {n for n, _, _ in VARIANTS}
    for v in report["variants"]:
        assert {"name", "format", "quant", "imatrix", "path", "f1", "delta_f1", "delta_f1_low", "delta_f1_high",
                "flip_rate", "flip_rate_low", "flip_rate_high", "size_bytes", "pairs_per_second", "verdict",
                "pairs_to_decide"} <= v.keys()
        assert (tiny_export / v["path"]).exists()
        assert v["verdict"] == "pass" and v["size_bytes"] > 0 and v["pairs_per_second"] > 0
        assert v["delta_f1_low"] <= v["delta_f1"] <= v["delta_f1_high"]
        assert v["flip_rate_low"] <= v["flip_rate"] <= v["flip_rate_high"]
    assert 0.0 <= report["threshold"] <= 1.0 and report["n_pairs"] == 16 and report["orders"] == 2
    assert report["rule"] in (tiny_export / "report.md").read_text()
    with open(tiny_export / "verify-scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 16 and list(rows[0])[:5] == ["set", "ltable_id", "rtable_id", "label", "merged"]
    assert set(rows[0]) >= {v["name"] for v in report["variants"]}
    assert sorted(p.name for p in (tiny_export / "gguf").iterdir()) == [
        "imatrix.gguf", "model-BF16.gguf", "model-F16.gguf", "model-IQ4_NL.gguf", "model-Q4_0-imatrix.gguf",
        "model-Q4_0.gguf", "model-Q4_K_M.gguf", "model-Q8_0.gguf"]
    assert sorted(p.name for p in (tiny_export / "onnx").iterdir()) == ["fp32", "int4", "int8", "int8-block"]
    assert (tiny_export / "merged" / "model.safetensors").exists()
    assert "| onnx-int4 |" in (tiny_export / "report.md").read_text()
    assert not list(tiny_export.parent.glob(".exp.tmp-*"))  # the temp build dir was renamed away


def test_full_precision_variants_agree_with_reference(tiny_export):
    """F16 GGUF in llama.cpp and fp32 ONNX in ORT score like the merged model in transformers."""
    report = json.loads((tiny_export / "report.json").read_text())
    by_name = {v["name"]: v for v in report["variants"]}
    # fp32 ONNX: same arithmetic up to kernel order. F16 GGUF: weights rounded to 11 bits, BF16 to 8.
    assert by_name["onnx-fp32"]["mean_abs_dp"] < 1e-4
    assert by_name["gguf-f16"]["mean_abs_dp"] < 5e-3
    assert by_name["gguf-bf16"]["mean_abs_dp"] < 1e-2
    assert by_name["onnx-fp32"]["flip_rate"] == 0


@pytest.mark.parametrize("variant", ["merged", "onnx/fp32", "onnx/int8", "onnx/int8-block", "onnx/int4"])
def test_batch_neighbours_do_not_move_a_score(tiny_export, variant):
    """A pair scores the same alone, in a batch of others and in another order (issue: dynamic
    int8 activation scales and padding are per batch in ONNX Runtime)."""
    from epm_edge.runtime import load_scorer

    pairs = [(f"{b} model {100 + i}x black" + " extra words" * (i % 4), f"{b.upper()} {100 + i}X")
             for i, b in enumerate(["sony", "samsung", "lg", "philips", "canon", "nikon", "bose", "jbl"])]
    scorer = load_scorer(tiny_export / variant, batch_size=8)
    try:
        alone = np.array([scorer.score([p])[0] for p in pairs])
        together = scorer.score(pairs)
        reordered = scorer.score(pairs[::-1])[::-1]
    finally:
        scorer.close()
    assert np.abs(together - alone).max() < 1e-5 and np.abs(reordered - alone).max() < 1e-5


def test_int4_onnx_is_small(tiny_export):
    """The tied embedding/lm_head is quantized and stored once: the fp32 export holds it twice, so
    int4 (4 bits + a 32-bit scale per 32 weights) must come in under a tenth of fp32; block int8
    quantizes the embedding Gather too (both copies at ~9 bits: under a third)."""
    import onnx

    fp32 = (tiny_export / "onnx" / "fp32" / "model.onnx").stat().st_size
    int4 = tiny_export / "onnx" / "int4" / "model.onnx"
    assert int4.stat().st_size < fp32 / 10
    assert "epm_shared_embedding" in {n.name for n in onnx.load(str(int4)).graph.node}
    assert (tiny_export / "onnx" / "int8-block" / "model.onnx").stat().st_size < fp32 / 3


def test_each_variant_stores_its_own_best_threshold(tiny_export, tiny_data):
    """A quantized variant ships with the cuts that maximize its own F1 on the verification pairs
    (its scores can shift as a whole), for both record orders and for A/B alone; its reported F1
    and flips are measured on both orders (match's default) at its cut."""
    from epm_edge.data import load_pair_set
    from epm_edge.evaluate.metrics import best_threshold, compute_metrics, flip_rate
    from epm_edge.evaluate.scoring import score_texts, serialize_pairs
    from epm_edge.runtime import load_scorer
    from epm_edge.runtime.orders import combine, stored_threshold, swapped

    report = json.loads((tiny_export / "report.json").read_text())
    ps = load_pair_set(tiny_data)
    pairs = ps.split("valid")
    texts = serialize_pairs(ps, pairs, record_tokens=32)
    got = {}  # name -> (both-orders scores, their stored cut, A/B scores, their stored cut)
    for name, path in (("merged", tiny_export / "merged"), ("gguf-q4_0", tiny_export / "gguf" / "model-Q4_0.gguf")):
        scorer = load_scorer(path)
        try:
            ab, ba = score_texts(scorer, texts)[0], score_texts(scorer, swapped(texts))[0]
            got[name] = (combine(ab, ba), stored_threshold(scorer, both_orders=True), ab, scorer.threshold)
        finally:
            scorer.close()
        assert not np.allclose(ab, ba)  # the orders score differently: both really were scored
    (ref, ref_cut, _, ref_one_cut), (q4, q4_cut, q4_ab, q4_one_cut) = got["merged"], got["gguf-q4_0"]
    row = next(v for v in report["variants"] if v["name"] == "gguf-q4_0")
    assert ref_cut == pytest.approx(report["threshold"], abs=1e-6)
    assert ref_one_cut == pytest.approx(report["reference"]["threshold_one_order"], abs=1e-6)
    assert q4_cut == pytest.approx(row["threshold"], abs=1e-6)
    assert q4_cut == pytest.approx(best_threshold(pairs.labels, q4), abs=1e-6)
    assert q4_one_cut == pytest.approx(best_threshold(pairs.labels, q4_ab), abs=1e-6)
    assert row["threshold_one_order"] == pytest.approx(q4_one_cut, abs=1e-6)
    assert row["f1"] == pytest.approx(compute_metrics(pairs.labels, q4, q4_cut).f1, abs=1e-6)
    assert row["flip_rate"] == pytest.approx(flip_rate(ref, q4, ref_cut, q4_cut))


def test_provenance_in_artifacts(tiny_export, tiny_adapter):
    from epm_edge.export.merge import adapter_sha256
    from epm_edge.runtime import load_scorer

    report = json.loads((tiny_export / "report.json").read_text())
    cuts = {v["name"]: (v["threshold_one_order"], v["threshold"]) for v in report["variants"]}
    scorer = load_scorer(tiny_export / "gguf" / "model-Q4_K_M.gguf")
    try:
        assert (scorer.threshold, float(scorer.metadata["threshold_both_orders"])) == pytest.approx(
            cuts["gguf-q4_k_m"], abs=1e-6)
        meta = scorer.metadata
    finally:
        scorer.close()
    assert meta["quant"] == "Q4_K_M"
    assert meta["prompt_version"] == prompt.PROMPT_VERSION
    assert meta["adapter_sha256"] == adapter_sha256(tiny_adapter)
    assert len(meta["base_sha256"]) == 64 and meta["version"]
    assert meta["verify.verdict"] == "pass" and float(meta["verify.f1"]) >= 0
    assert "epm.imatrix.sha256" not in meta  # quantized without the importance matrix
    onnx = load_scorer(tiny_export / "onnx" / "int8")
    assert (onnx.threshold, onnx.metadata["threshold_both_orders"]) == cuts["onnx-int8"]
    assert onnx.metadata["quant"] == "int8"
    assert onnx.metadata["adapter_sha256"] == meta["adapter_sha256"]
    onnx.close()


def test_importance_matrix_is_the_mean_square_input_of_each_weight(tiny_export, tiny_data):
    """imatrix.gguf holds, per block weight llama.cpp multiplies by (as llama-imatrix collects: not the
    output / tied token embedding), the mean x^2 of its inputs over the calibration prompts: checked for
    the first attention projections against layer 0's input norm in transformers, computed apart from
    the hooks that wrote it."""
    import gguf
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from epm_edge.export import imatrix
    from epm_edge.runtime.hf import pair_ids

    means = imatrix.load(tiny_export / "gguf" / "imatrix.gguf")
    f16 = gguf.GGUFReader(tiny_export / "gguf" / "model-F16.gguf")
    matrices = {t.name: int(t.shape[0]) for t in f16.tensors if len(t.shape) == 2 and t.name.startswith("blk.")}
    assert set(means) == set(matrices) and len(means) == 14  # 7 per layer
    assert all(means[n].shape == (cols,) for n, cols in matrices.items())
    pairs, names = imatrix.calibration_pairs([tiny_data], "train", 8, 32)
    assert names == [f"{tiny_data.name}/train"] and len(pairs) == 8
    tok = AutoTokenizer.from_pretrained(tiny_export / "merged")
    model = AutoModelForCausalLM.from_pretrained(tiny_export / "merged").eval()
    prefix = tok(prompt.PREFIX, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        embedded = [model(torch.tensor([prefix + pair_ids(tok, prompt.CHATML, a, b)]), output_hidden_states=True).hidden_states[0][0]
                    for a, b in pairs]
        normed = torch.cat([model.model.layers[0].input_layernorm(h) for h in embedded])
    want = (normed.double() ** 2).mean(0).numpy()
    for name in ("blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight"):
        assert np.allclose(means[name], want, rtol=1e-4)


def test_calibrated_quantization_weights_the_error_by_the_matrix(tiny_export):
    """llama.cpp's quantizer got the matrix: the calibrated Q4_0 differs from the plain one and its
    rounding error, weighted by the matrix, is lower on the tensors both store as Q4_0; the file
    records which matrix it was quantized with."""
    import gguf

    from epm_edge.export import imatrix
    from epm_edge.model_store import sha256_file
    from epm_edge.runtime import load_scorer

    means = imatrix.load(tiny_export / "gguf" / "imatrix.gguf")

    def tensors(name):
        return {t.name: t for t in gguf.GGUFReader(tiny_export / "gguf" / name).tensors}

    f16, plain, calibrated = tensors("model-F16.gguf"), tensors("model-Q4_0.gguf"), tensors("model-Q4_0-imatrix.gguf")
    q4 = gguf.GGMLQuantizationType.Q4_0
    both = [n for n in means if plain[n].tensor_type == q4 and calibrated[n].tensor_type == q4]
    assert len(both) >= 8

    def weighted_error(t, name):
        w = np.array(f16[name].data, dtype=np.float32)
        wq = gguf.quants.dequantize(t.data, q4).reshape(w.shape)
        return float(np.sum(means[name] * (w - wq) ** 2))

    plain_err = np.array([weighted_error(plain[n], n) for n in both])
    calibrated_err = np.array([weighted_error(calibrated[n], n) for n in both])
    assert calibrated_err.sum() < plain_err.sum() and np.mean(calibrated_err < plain_err) > 0.5
    from epm_edge.bench.variants import discover

    names = [v.name for v in discover(tiny_export)]  # bench tells the two apart, and skips the matrix itself
    assert "gguf-q4_0-imatrix" in names and "gguf-q4_0" in names and len(names) == len(set(names))
    scorer = load_scorer(tiny_export / "gguf" / "model-Q4_0-imatrix.gguf")
    try:
        assert scorer.metadata["imatrix.sha256"] == sha256_file(tiny_export / "gguf" / "imatrix.gguf")
        assert scorer.metadata["imatrix.prompts"] == "8" and "verify.verdict" in scorer.metadata
    finally:
        scorer.close()


def test_broken_importance_matrix_is_a_clear_error(tmp_path):
    from epm_edge.export import imatrix

    bad = tmp_path / "imatrix.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 40)
    with pytest.raises(ModelError, match="imatrix.gguf"):
        imatrix.load(bad)


def test_merge_equals_peft_model(tiny_base, tiny_adapter, tiny_export):
    """The merged checkpoint computes what base + adapter computes in peft."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[1, 200, 300, 400, 500]])
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), tiny_adapter).eval()
    merged = AutoModelForCausalLM.from_pretrained(tiny_export / "merged").eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    with torch.no_grad():
        want, got, plain = peft_model(ids).logits, merged(ids).logits, base(ids).logits
    assert torch.allclose(want, got, atol=1e-4)
    assert not torch.allclose(plain, got, atol=1e-2)  # the adapter really changed the model


def test_verify_fails_over_budget_and_names_variant(tiny_export):
    """`epm-edge verify --export` re-checks with the recipe stored in the export (edited here to
    hold one variant that cannot pass and one that does)."""
    from epm_edge.cli import main

    stored = (tiny_export / "recipe.toml").read_text()
    (tiny_export / "recipe.toml").write_text(
        '[[variants]]\nname = "gguf-q4_0"\nformat = "gguf"\nquant = "Q4_0"\nmax_delta_f1 = 100\nmax_flip_rate = -1\n'
        '[[variants]]\nname = "onnx-int8"\nformat = "onnx"\nquant = "int8"\nmax_delta_f1 = 100\nmax_flip_rate = 1\n')
    try:
        result = CliRunner().invoke(main, ["verify", "--model", str(tiny_export), "--pairs", "6"])
        assert result.exit_code == 2
        assert "failed the gate: gguf-q4_0 " in result.output
        result = CliRunner().invoke(main, ["verify", "--model", str(tiny_export), "--pairs", "6", "--sample", "2",
                                           "--allow-fail"])
        assert result.exit_code == 0, result.output
        report = json.loads((tiny_export / "report.json").read_text())
        assert report["passed"] is False and report["n_pairs"] == 6 and report["sample"] == 2
        assert [v["verdict"] for v in report["variants"]] == ["fail", "pass"]
        # Verified in one order now: the cut for both orders an earlier verification stored is gone.
        from epm_edge.runtime import load_scorer

        scorer = load_scorer(tiny_export / "gguf" / "model-Q4_0.gguf")
        try:
            assert "threshold_both_orders" not in scorer.metadata and scorer.metadata["verify.orders"] == "1"
        finally:
            scorer.close()
    finally:
        (tiny_export / "recipe.toml").write_text(stored)


def test_export_refuses_to_overwrite(tiny_export, tiny_base):
    from epm_edge.cli import main

    result = CliRunner().invoke(main, ["export", "--base", str(tiny_base), "--out", str(tiny_export)])
    assert result.exit_code == 2 and "already exists" in result.output and "--force" in result.output
    result = CliRunner().invoke(main, ["export", "--adapter", str(tiny_base), "--no-adapter", "--out", str(tiny_export)])
    assert result.exit_code == 2 and "alternatives" in result.output


# -- bad input ----------------------------------------------------------------------------------

def _tiny_config():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2)


def _base(sha="0" * 64):
    from epm_edge.export.merge import BaseModel

    return BaseModel(Path("/nonexistent"), sha, None)


def test_adapter_errors(tmp_path, tiny_adapter):
    import shutil

    from epm_edge.export.merge import check_adapter

    with pytest.raises(ModelError, match="adapter dir not found"):
        check_adapter(tmp_path / "missing", _base(), _tiny_config())
    (tmp_path / "no-config").mkdir()
    with pytest.raises(ModelError, match="no adapter_config.json"):
        check_adapter(tmp_path / "no-config", _base(), _tiny_config())
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "adapter_config.json").write_text("{not json")
    with pytest.raises(ModelError, match="corrupt adapter config"):
        check_adapter(corrupt, _base(), _tiny_config())
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copy(tiny_adapter / "adapter_config.json", no_weights)
    with pytest.raises(ModelError, match="adapter weights missing"):
        check_adapter(no_weights, _base(), _tiny_config())
    truncated = tmp_path / "truncated"
    shutil.copytree(tiny_adapter, truncated)
    (truncated / "adapter_model.safetensors").write_bytes(b"\x10\x00")
    with pytest.raises(ModelError, match="corrupt adapter weights"):
        check_adapter(truncated, _base(), _tiny_config())


def test_adapter_for_other_base(tmp_path, tiny_adapter):
    import shutil

    from epm_edge.export.merge import check_adapter

    bigger = _tiny_config()
    bigger.hidden_size, bigger.intermediate_size = 128, 256
    with pytest.raises(ModelError, match="different base"):
        check_adapter(tiny_adapter, _base(), bigger)
    stamped = tmp_path / "stamped"
    shutil.copytree(tiny_adapter, stamped)
    (stamped / "epm_edge.json").write_text(json.dumps({"base_sha256": "f" * 64}))
    with pytest.raises(ModelError, match="matching --base"):
        check_adapter(stamped, _base("0" * 64), _tiny_config())


def test_adapter_finds_the_base_it_was_trained_on(tmp_path, monkeypatch, tiny_adapter):
    """Without --base, an adapter merges into the base its provenance names by sha256: a GGUF in the
    cache's base/ folder; one found nowhere is a clear error saying where to put it."""
    import shutil

    from epm_edge import model_store
    from epm_edge.export.merge import resolve_base

    monkeypatch.setenv("EPM_EDGE_HOME", str(tmp_path / "home"))
    other = tmp_path / "other-base.gguf"
    other.write_bytes(b"GGUF a base of the user's own")
    digest = model_store.sha256_file(other)
    stamped = tmp_path / "stamped"
    shutil.copytree(tiny_adapter, stamped)
    (stamped / "epm_edge.json").write_text(json.dumps({"base": other.name, "base_sha256": digest}))
    with pytest.raises(ModelError, match=r"trained on base other-base.gguf .*put that GGUF there, or export with --base"):
        resolve_base(None, stamped)
    assert model_store.known_base(digest) is None
    (model_store.home() / "base").mkdir()
    shutil.copyfile(other, model_store.home() / "base" / "renamed.gguf")
    assert model_store.known_base(digest) == model_store.home() / "base" / "renamed.gguf"


def test_unknown_quant_types(tmp_path):
    from epm_edge.export import onnx_export, quantize
    from epm_edge.export.recipe import load_recipe

    with pytest.raises(ModelError, match="unknown GGUF quant type 'Q3_X'"):
        quantize.check_quant("Q3_X")
    with pytest.raises(ModelError, match="unknown ONNX quant type"):
        onnx_export.check_quant("int2")
    bad = tmp_path / "bad.toml"
    bad.write_text('[[variants]]\nname = "x"\nformat = "gguf"\nquant = "Q9"\nmax_delta_f1 = 1\nmax_flip_rate = 0.1\n')
    with pytest.raises(ModelError, match="Q9"):
        load_recipe(bad)
    bad.write_text('[[variants]]\nname = "x"\nformat = "tflite"\nquant = "int8"\n'
                   'max_delta_f1 = 1\nmax_flip_rate = 0.1\n')
    with pytest.raises(EpmError, match="format 'tflite'"):
        load_recipe(bad)
    variant = '[[variants]]\nname = "x"\nformat = "onnx"\nquant = "int8"\nmax_delta_f1 = 1\nmax_flip_rate = 0.1\n'
    for section, message in (('[verify]\nlimit = 200\n', r"unknown key\(s\) limit in \[verify\]"),
                             ('[verify]\norders = 3\n', "orders must be 1"),
                             ('[imatrix]\npairs = 0\n', r"\[imatrix\] pairs must be"),
                             ('', "imatrix applies to quantized GGUF types only")):
        bad.write_text(section + variant + ("imatrix = true\n" if not section else ""))
        with pytest.raises(EpmError, match=message):
            load_recipe(bad)


def test_default_recipe_builds_required_variants():
    from epm_edge.export.recipe import load_recipe

    recipe = load_recipe()
    got = {(v.format, v.quant) for v in recipe.variants}
    assert {("gguf", "Q8_0"), ("gguf", "Q4_K_M"), ("gguf", "Q4_0"), ("onnx", "int8"), ("onnx", "int4")} <= got
    for v in recipe.variants:
        bits8 = v.quant in ("Q8_0", "int8", "int8-block", "F16", "BF16", "fp32")
        assert (v.max_delta_f1, v.max_flip_rate) == ((0.5, 0.01) if bits8 else (1.5, 0.03))
        assert not (v.imatrix and bits8)
    assert ("gguf", "Q4_0", True) in {(v.format, v.quant, v.imatrix) for v in recipe.variants}
    assert recipe.pairs >= 1000 and recipe.split == "valid" and recipe.imatrix_split == "train"
    comparison = load_recipe("imatrix-comparison")  # packaged recipes go by name
    assert {(v.quant, v.imatrix) for v in comparison.variants} == {(q, i) for q in ("Q4_K_M", "Q4_0")
                                                                   for i in (False, True)}


def test_unloadable_gguf_base(tmp_path, base_gguf):
    from epm_edge.export.merge import resolve_base

    broken = tmp_path / "broken.gguf"
    broken.write_bytes(base_gguf.read_bytes()[:4096])
    with pytest.raises(ModelError, match="llama.cpp could not load"):
        resolve_base(broken)
    with pytest.raises(ModelError, match="base model not found"):
        resolve_base(tmp_path / "none.gguf")


def test_verify_needs_an_export_dir(tmp_path):
    from epm_edge.cli import main

    result = CliRunner().invoke(main, ["verify", "--model", str(tmp_path)])
    assert result.exit_code == 2 and "not an epm-edge export dir" in result.output


# -- the real model -----------------------------------------------------------------------------

def _llamacpp_logits(path: Path, tokens: list[int]) -> np.ndarray:
    import llama_cpp as lc

    from epm_edge.runtime.llamacpp import PAIR_SEQ, PREFIX_SEQ, LlamaCppScorer

    scorer = LlamaCppScorer(path)
    try:
        suffix = tokens[len(scorer.prefix):]
        assert tokens[:len(scorer.prefix)] == scorer.prefix
        lc.llama_memory_seq_cp(scorer.mem, PREFIX_SEQ, PAIR_SEQ, -1, -1)
        idx = scorer._decode(suffix, PAIR_SEQ, len(scorer.prefix))
        row = lc.llama_get_logits_ith(scorer.ctx, idx)
        return np.ctypeslib.as_array(row, shape=(lc.llama_vocab_n_tokens(scorer.vocab),)).copy()
    finally:
        scorer.close()


def test_gguf_round_trip_real_model(base_gguf, tmp_path):
    """bundled GGUF -> HF (transformers) -> our F16 GGUF: llama.cpp gives the next-token logits
    transformers gives for the same tokens.

    Tolerance: F16 stores each weight with a relative error up to 2^-11; through 30 layers this
    moves logits (spread ~±15 here) by a few hundredths. A wrong q/k permutation, a wrong tensor
    name or a missing norm moves them by whole units and changes the top token, so
    max |diff| < 0.25 with the same argmax and top-10 separates right from wrong with a wide margin.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from epm_edge.export.gguf_convert import convert
    from epm_edge.export.merge import resolve_base

    base = resolve_base(base_gguf)
    ours = convert(base.hf_dir, tmp_path / "f16.gguf", source_gguf=base_gguf, metadata={"quant": "F16"})
    ours_hf_tok = convert(base.hf_dir, tmp_path / "f16-hf-tok.gguf", metadata={"quant": "F16"})
    tok = AutoTokenizer.from_pretrained(base.hf_dir)
    text = prompt.pair_suffix("title: Sony PS-LX350H turntable; price: 99.99", "name: sony pslx350h belt drive")
    tokens = [t for part in (prompt.PREFIX, text) for t in tok(part, add_special_tokens=False)["input_ids"]]
    model = AutoModelForCausalLM.from_pretrained(base.hf_dir).eval()
    with torch.no_grad():
        want = model(torch.tensor([tokens])).logits[0, -1].numpy()
    for path in (ours, ours_hf_tok):
        got = _llamacpp_logits(path, tokens)
        assert np.abs(got - want).max() < 0.25
        assert got.argmax() == want.argmax()
        assert set(np.argsort(-got)[:10]) == set(np.argsort(-want)[:10])


def test_tokenizers_agree_real_model(base_gguf, tmp_path):
    """transformers (dequantized base), llama.cpp on the source GGUF and on GGUFs we wrote (tokenizer
    carried over, or rebuilt from tokenizer.json) split text identically, digits included."""
    from transformers import AutoTokenizer

    from epm_edge.export.gguf_convert import convert
    from epm_edge.export.merge import resolve_base
    from epm_edge.runtime.llamacpp import LlamaCppScorer

    base = resolve_base(base_gguf)
    tok = AutoTokenizer.from_pretrained(base.hf_dir)
    rebuilt = convert(base.hf_dir, tmp_path / "hf-tok.gguf")
    texts = [prompt.PREFIX, prompt.pair_suffix("title: Canon EOS 2000D 18-55mm; price: 1234.50 EUR", "café ß 日本"),
             "  double  spaces\n\n\ttabs 0123456789"]
    for path in (base_gguf, rebuilt):
        scorer = LlamaCppScorer(path)
        try:
            for t in texts:
                assert scorer.tokenize(t) == tok(t, add_special_tokens=False)["input_ids"], (path.name, t)
        finally:
            scorer.close()


def test_sentencepiece_vocab_tokenizes_as_llamacpp_does():
    """A GGUF sentencepiece vocabulary (Gemma 3) reaches transformers as a Unigram model, which picks
    the best-scoring segmentation; llama.cpp merges the best-scoring adjacent pair until none is
    left. The saved tokenizer must split as llama.cpp does, or training sees other tokens than the
    runtimes (on Gemma 3's real vocabulary: 0 of 200 valid prompts alike before, 200 of 200 after)."""
    from tokenizers import Tokenizer

    from epm_edge.export.merge import GGUF_BYTE, GGUF_CONTROL, _spm_as_bpe

    pieces = [("<unk>", 0.0), ("<ctl>", 0.0), ("▁", -1.0), ("S", -1.0), ("o", -1.0), ("n", -1.0), ("y", -1.0),
              ("▁S", -2.0), ("▁So", -3.0), ("ny", -3.5), ("on", -4.0), ("▁Sony", -10.0), ("<", -1.0), (">", -1.0),
              ("\t", 0.0), ("\t", -1.0)]  # byte piece <0x09> as transformers names it, then a tab piece
    unigram = {"version": "1.0", "truncation": None, "padding": None,
               "added_tokens": [{"id": 0, "content": "<unk>", "single_word": False, "lstrip": False, "rstrip": False,
                                 "normalized": False, "special": True}],
               "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
               "pre_tokenizer": {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious",
                                 "invert": False},
               "post_processor": None, "decoder": None,
               "model": {"type": "Unigram", "unk_id": 0, "byte_fallback": False, "vocab": [list(p) for p in pieces]}}
    # llama.cpp: ▁ S o n y -> ▁S o n y -> ▁So n y -> ▁So ny -> ▁Sony; Unigram: the best sum of scores
    assert Tokenizer.from_str(json.dumps(unigram)).encode(" Sony").tokens == ["▁So", "n", "y"]
    types = [GGUF_CONTROL if p == "<ctl>" else 1 for p, _ in pieces]
    types[14] = GGUF_BYTE
    bpe = Tokenizer.from_str(json.dumps(_spm_as_bpe(json.loads(json.dumps(unigram)), types)))
    assert bpe.encode(" Sony").tokens == ["▁Sony"]
    assert bpe.encode("<ctl> Sony").ids == [1, 11]  # a control piece is one token, as llama.cpp parses it
    # every id keeps a piece (the byte piece its own name) and text reaches the tab piece
    assert [bpe.id_to_token(i) for i in (14, 15)] == ["<0x09>", "\t"] and bpe.encode("\t").ids == [15]
