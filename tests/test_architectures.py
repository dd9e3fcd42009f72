"""Export of other base architectures through llama.cpp's converters, and runtime LoRA.

Each architecture is a tiny random model (2 layers, hidden 64) built here, with the real SmolLM2
tokenizer (from the bundled GGUF) and a chat template of that model family, so the prompt, its
special tokens and the Yes/No tokens go through each runtime as they would for the real model. A
PEFT LoRA with non-zero weights is attached and `epm-edge export --lora-gguf` runs on it.

Tolerances. Logits: the F16 GGUF stores each weight with a relative error up to 2^-11, and llama.cpp
accumulates in another order than torch; the tiny models' last-position logits spread over about 7
and differ by up to 0.017 (0.25 % of the spread) when all is right, while a wrong tensor layout, norm
or rotary convention moves them by the order of the spread: they must agree within 1 % of it, with
the same top token. Runtime LoRA vs merged: the adapter (F32) runs beside each F16 matmul instead of
folded into the weights; P(match) differs by up to 0.002 (the base without the adapter: 0.1-0.25),
and must agree within 0.01.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from epm_edge.errors import ModelError

pytestmark = pytest.mark.slow

RECIPE = """
[verify]
split = "valid"
pairs = 16
orders = 1
record_tokens = 32

[[variants]]
name = "gguf-f16"
format = "gguf"
quant = "F16"
max_delta_f1 = 100
max_flip_rate = 1

[[variants]]
name = "gguf-q8_0"
format = "gguf"
quant = "Q8_0"
max_delta_f1 = 100
max_flip_rate = 1
"""

# Chat templates of the three families, shortened to what a two-turn prompt uses.
LLAMA3 = ("{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' "
          "+ m['content'] | trim + '<|eot_id|>' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
GEMMA3 = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first = messages[0]['content'] + '\n\n' %}"
          "{% set messages = messages[1:] %}{% else %}{% set first = '' %}{% endif %}"
          "{% for m in messages %}{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else m['role']) + '\n' "
          "+ (first if loop.first else '') + m['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}")
ARCHITECTURES = {
    "llama": (LLAMA3, ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], "<|eot_id|>"),
    "qwen2": (None, [], "<|im_end|>"),  # the SmolLM2 tokenizer's own template: ChatML, as Qwen2's
    "gemma3": (GEMMA3, ["<start_of_turn>", "<end_of_turn>"], "<end_of_turn>"),
}


def _config(arch: str, vocab: int):
    from transformers import Gemma3TextConfig, LlamaConfig, Qwen2Config

    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                  tie_word_embeddings=True, initializer_range=0.1, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    if arch == "llama":
        return LlamaConfig(rope_theta=100000.0, **common)
    if arch == "qwen2":
        return Qwen2Config(rope_theta=1000000.0, **common)
    return Gemma3TextConfig(head_dim=16, query_pre_attn_scalar=16, sliding_window=512, rope_theta=1000000.0,
                            **common)


def _model_class(arch: str):
    from transformers import Gemma3ForCausalLM, LlamaForCausalLM, Qwen2ForCausalLM

    return {"llama": LlamaForCausalLM, "qwen2": Qwen2ForCausalLM, "gemma3": Gemma3ForCausalLM}[arch]


def export(base: Path, out: Path, data: Path, *options: str):
    """`epm-edge export` of `base` with the test recipe into `out` (the recipe file beside it)."""
    from epm_edge.cli import main

    recipe = out.with_name(out.name + "-recipe.toml")
    recipe.write_text(RECIPE)
    return CliRunner().invoke(main, ["export", "--recipe", str(recipe), "--base", str(base), "--out", str(out),
                                     "--data", str(data), *options])


def tiny_base(arch: str, out: Path, base_gguf: Path) -> Path:
    """A tiny random model of `arch` with the SmolLM2 tokenizer, its family's template and special tokens."""
    import torch
    from transformers import AutoTokenizer

    from epm_edge.export.merge import resolve_base

    template, specials, _ = ARCHITECTURES[arch]
    tok = AutoTokenizer.from_pretrained(resolve_base(base_gguf).hf_dir)
    if specials:
        tok.add_special_tokens({"additional_special_tokens": specials})
    if template:
        tok.chat_template = template
    torch.manual_seed(0)
    _model_class(arch)(_config(arch, len(tok))).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def exported(request, base_gguf, tiny_data, tmp_path_factory):
    """(architecture, base HF dir, adapter dir, export dir) of a tiny model of each architecture."""
    import torch
    from peft import LoraConfig, get_peft_model

    arch = request.param
    root = tmp_path_factory.mktemp(arch)
    base = tiny_base(arch, root / "base", base_gguf)
    torch.manual_seed(1)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(_model_class(arch).from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    adapter = root / "adapter"
    model.save_pretrained(adapter)

    out = root / "export"
    result = export(base, out, tiny_data, "--adapter", str(adapter), "--lora-gguf")
    assert result.exit_code == 0, result.output
    return arch, base, adapter, out


PAIRS = [("title: sony model 100x black; price: 19.99", "title: SONY 100X - black - free shipping"),
         ("title: canon model 104x black; price: 23.99", "title: NIKON 105X - black; price: 24.95"),
         ("title: bose model 106x", "title: bose 106x speaker")]


def test_prompt_in_the_models_own_chat_template(exported):
    """Every runtime frames the prompt with the model's template: llama.cpp from the GGUF, transformers
    and the export's HF reference from the saved tokenizer, and they tokenize it alike."""
    from transformers import AutoTokenizer

    from epm_edge.runtime.chat_template import dir_chat_format
    from epm_edge.runtime.hf import pair_ids
    from epm_edge.runtime.llamacpp import LlamaCppScorer

    arch, _, _, out = exported
    end_of_turn = ARCHITECTURES[arch][2]
    scorer = LlamaCppScorer(out / "gguf" / "model-F16.gguf")
    try:
        fmt = scorer.format
        assert fmt == dir_chat_format(out / "merged")
        assert fmt.end_of_turn == end_of_turn and end_of_turn in fmt.answer_start
        tok = AutoTokenizer.from_pretrained(out / "merged")
        assert scorer.prefix == tok(fmt.prefix, add_special_tokens=False)["input_ids"]
        for a, b in PAIRS:
            assert scorer.tokenize(fmt.pair_segments(a, b)) == pair_ids(tok, fmt, a, b)
    finally:
        scorer.close()


def test_llamacpp_logits_match_transformers(exported):
    import llama_cpp as lc
    import torch
    from transformers import AutoModelForCausalLM

    from epm_edge.runtime.llamacpp import LlamaCppScorer, PAIR_SEQ

    _, _, _, out = exported
    model = AutoModelForCausalLM.from_pretrained(out / "merged", dtype=torch.float32).eval()
    scorer = LlamaCppScorer(out / "gguf" / "model-F16.gguf")
    try:
        for a, b in PAIRS:
            tokens = scorer.prefix + scorer.tokenize(scorer.format.pair_segments(a, b))
            with torch.no_grad():
                want = model(torch.tensor([tokens])).logits[0, -1].numpy()
            lc.llama_memory_seq_rm(scorer.mem, PAIR_SEQ, -1, -1)
            index = scorer._decode(tokens, PAIR_SEQ, 0)
            row = lc.llama_get_logits_ith(scorer.ctx, index)
            got = np.ctypeslib.as_array(row, shape=(len(want),)).copy()
            lc.llama_memory_seq_rm(scorer.mem, PAIR_SEQ, -1, -1)
            spread = want.max() - want.min()
            assert np.abs(got - want).max() < 0.01 * spread, (np.abs(got - want).max(), spread)
            assert got.argmax() == want.argmax()
    finally:
        scorer.close()


def test_runtime_lora_scores_match_the_merged_model(exported):
    from epm_edge.runtime.llamacpp import LlamaCppScorer

    _, _, _, out = exported
    merged = LlamaCppScorer(out / "gguf" / "model-F16.gguf")
    runtime = LlamaCppScorer(out / "gguf" / "base-F16.gguf", lora=out / "gguf" / "adapter-lora.gguf")
    base = LlamaCppScorer(out / "gguf" / "base-F16.gguf")
    try:
        want, got, without = merged.score(PAIRS), runtime.score(PAIRS), base.score(PAIRS)
    finally:
        for s in (merged, runtime, base):
            s.close()
    assert np.abs(got - want).max() < 0.01
    assert np.abs(without - want).max() > 0.05  # the adapter matters: the check above could fail


def test_runtime_lora_variants_in_the_gate_and_its_cuts(exported):
    """The gate verifies base + LoRA like any variant; its cut goes into the GGUF LoRA for that base type
    and the scorer reads it from there."""
    from epm_edge.runtime.llamacpp import LlamaCppScorer

    _, _, _, out = exported
    report = json.loads((out / "report.json").read_text())
    rows = {v["name"]: v for v in report["variants"]}
    assert set(rows) == {"gguf-f16", "gguf-q8_0", "gguf-f16-lora", "gguf-q8_0-lora"}
    for quant in ("F16", "Q8_0"):
        row = rows[f"gguf-{quant.lower()}-lora"]
        assert row["lora"] == "gguf/adapter-lora.gguf" and row["path"] == f"gguf/base-{quant}.gguf"
        scorer = LlamaCppScorer(out / row["path"], lora=out / row["lora"])
        try:
            assert scorer.threshold == pytest.approx(row["threshold_one_order"], abs=1e-6)
            assert scorer.metadata["verify.verdict"] == row["verdict"]
        finally:
            scorer.close()
    assert "at load" in (out / "report.md").read_text()


def test_bench_finds_runtime_lora_variants(exported):
    from epm_edge.bench.variants import discover

    _, _, _, out = exported
    found = {v.name: v for v in discover(out)}
    assert found["gguf-q8_0-lora"].options == {"lora": str(out / "gguf" / "adapter-lora.gguf")}
    assert found["gguf-q8_0"].path == str(out / "gguf" / "model-Q8_0.gguf")
    for v in found.values():  # the base files run only with their adapter; the adapter is not a model
        assert not Path(v.path or "").name.startswith("base-") or v.options.get("lora")
        assert not (v.path or "").endswith("adapter-lora.gguf")


def test_lora_for_another_base_is_a_clear_error(exported, base_gguf):
    from epm_edge.runtime.llamacpp import LlamaCppScorer

    _, _, _, out = exported
    with pytest.raises(ModelError, match="another base model"):
        LlamaCppScorer(base_gguf, lora=out / "gguf" / "adapter-lora.gguf")


def test_unsupported_architecture_fails_at_once_naming_it(tmp_path, tiny_data):
    from transformers import OPTConfig, OPTForCausalLM

    base = tmp_path / "opt"
    OPTForCausalLM(OPTConfig(vocab_size=300, hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2,
                             word_embed_proj_dim=16)).save_pretrained(base)
    result = export(base, tmp_path / "out", tiny_data)
    assert result.exit_code != 0
    assert "architecture OPTForCausalLM is not supported by llama.cpp's GGUF converter" in result.output
    assert not (tmp_path / "out").exists()


def test_decision_words_must_be_single_tokens(tmp_path, tiny_data):
    """A vocabulary where `Yes` takes several tokens cannot score a pair in one pass: the export says so
    before it builds anything."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(["sony model black", "canon lens"] * 10, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<s>", "</s>"]))
    base = tmp_path / "base"
    PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>").save_pretrained(base)
    LlamaForCausalLM(LlamaConfig(vocab_size=bpe.get_vocab_size(), hidden_size=16, intermediate_size=32,
                                 num_hidden_layers=1, num_attention_heads=2)).save_pretrained(base)
    result = export(base, tmp_path / "out", tiny_data)
    assert result.exit_code != 0
    assert "'Yes' is not a single token in this vocabulary" in result.output
    assert not (tmp_path / "out").exists()


def test_training_on_a_gemma3_base_speaks_its_chat_format(base_gguf, data_dir, tmp_path):
    """`train sft --base` on a Gemma 3 model frames every example in Gemma's template and ends answers
    with its end of turn; the trained adapter exports, and llama.cpp frames pairs the same way."""
    from safetensors.torch import load_file

    from epm_edge.runtime.llamacpp import LlamaCppScorer
    from epm_edge.export.merge import resolve_base
    from epm_edge.train.base import base_format
    from epm_edge.train.dataset import DataConfig, build_examples
    from epm_edge.train.sft import SFTSettings, run_sft

    base = tiny_base("gemma3", tmp_path / "base", base_gguf)
    fmt = base_format(resolve_base(base))
    assert fmt.prefix.startswith("<|im_start|><start_of_turn>user\n")  # bos_token, then Gemma's user turn
    data = DataConfig([data_dir / "abt_buy"], record_tokens=16)
    for e in build_examples(data, "valid", limit=4, fmt=fmt):
        assert e["prompt"].startswith(fmt.prefix) and e["prompt"].endswith("<end_of_turn>\n<start_of_turn>model\n")
        assert e["completion"].endswith("<end_of_turn>")
    out = tmp_path / "sft"
    run_sft(SFTSettings(data, out, base=str(base), max_steps=2, batch_size=2, grad_accum=1, limit=8, eval_steps=2,
                        eval_limit=4, logging_steps=1, rank=4, alpha=8, max_length=256))
    assert any(v.abs().sum() > 0 for k, v in load_file(str(out / "adapter_model.safetensors")).items()
               if "lora_B" in k)

    result = export(base, tmp_path / "export", data_dir / "abt_buy", "--adapter", str(out), "--pairs", "16")
    assert result.exit_code == 0, result.output
    scorer = LlamaCppScorer(tmp_path / "export" / "gguf" / "model-F16.gguf")
    try:
        assert scorer.format == fmt
    finally:
        scorer.close()


def test_match_with_a_runtime_lora(exported, tiny_data, tmp_path):
    """`match --model BASE --lora ADAPTER` scores as the merged model does; a rerun into the same result file
    with another adapter strength is refused, not mixed in."""
    from epm_edge.cli import main

    _, _, _, out = exported
    base = ["match", str(tiny_data / "tableA.csv"), str(tiny_data / "tableB.csv"), "--cascade", "off",
            "--threads", "2"]
    merged = CliRunner().invoke(main, base + ["--model", str(out / "gguf" / "model-F16.gguf"),
                                              "-o", str(tmp_path / "merged.csv")])
    assert merged.exit_code == 0, merged.output
    lora = base + ["--model", str(out / "gguf" / "base-F16.gguf"), "--lora", str(out / "gguf" / "adapter-lora.gguf"),
                   "-o", str(tmp_path / "lora.csv")]
    runtime = CliRunner().invoke(main, lora)
    assert runtime.exit_code == 0, runtime.output

    def scores(name):
        import csv

        with open(tmp_path / name, newline="") as f:
            return {(r["a_id"], r["b_id"]): float(r["score"]) for r in csv.DictReader(f)}

    want, got = scores("merged.csv"), scores("lora.csv")
    assert want.keys() == got.keys() and max(abs(want[k] - got[k]) for k in want) < 0.01
    again = CliRunner().invoke(main, lora + ["--lora-scale", "0.5"])
    assert again.exit_code != 0 and "lora_scale" in again.output
    alone = CliRunner().invoke(main, base + ["--lora", str(out / "gguf" / "adapter-lora.gguf")])
    assert alone.exit_code != 0 and "--lora applies to a base model given with --model" in alone.output
