"""Training: data builder, teacher conversion, rewards and judge on real pairs; SFT and RL end to end
on a tiny random llama (real tokenizer) that must change the adapter."""

import contextlib
import json
import random
from pathlib import Path
from types import SimpleNamespace

import pytest

from epm_edge import prompt
from epm_edge.data import load_pair_set, serialize_record
from epm_edge.data.augment import add_seller_noise
from epm_edge.errors import EpmError
from epm_edge.train.dataset import DataConfig, build_examples
from epm_edge.train.evidence import silver_evidence
from epm_edge.train.judge import EvidenceJudge
from epm_edge.train.rewards import format_reward, label_reward, parse_strict
from epm_edge.train.teacher import read_teacher_rationales


@pytest.fixture(scope="session")
def teacher(data_dir):
    return read_teacher_rationales(data_dir / "wdc_products" / "rationales_gpt4.csv")


def test_teacher_rationales_convert_to_the_schema(teacher):
    assert len(teacher) == 2790
    sony = teacher[0]
    ta, tb = serialize_record({"title": sony.title_a}), serialize_record({"title": sony.title_b})
    answer = sony.answer(ta, tb)
    assert answer.match and answer.evidence[0] == prompt.Evidence("model", "FE 24-240mm F/3.5-6.3 OSS Lens",
                                                                  "FE 24-240mm f3.5-6.3 OSS Lens", "same")
    # the teacher cites currencies PLN/GBP, which titles do not show: that line is dropped
    assert "currency" not in {e.attribute for e in answer.evidence}
    converted = 0
    for r in teacher:
        ta, tb = serialize_record({"title": r.title_a}), serialize_record({"title": r.title_b})
        answer = r.answer(ta, tb)
        if answer is None:
            continue
        converted += 1
        assert parse_strict(answer.text() + prompt.END_OF_TURN) == answer
    assert converted > 0.9 * len(teacher)


def test_examples_parse_balance_and_use_teacher(data_dir):
    cfg = DataConfig([data_dir / "abt_buy", data_dir / "wdc_products"], max_per_set=300, seed=1)
    train = build_examples(cfg, "train")
    assert train == build_examples(cfg, "train")  # seeded
    assert {e["set"] for e in train} == {"abt_buy", "wdc_products"}
    for name in ("abt_buy", "wdc_products"):
        labels = [e["label"] for e in train if e["set"] == name]
        assert len(labels) == 300 and sum(labels) == 100
    assert {e["source"] for e in train} == {"teacher", "silver"}
    for e in train:
        assert e["prompt"] == prompt.full_prompt(e["text_a"], e["text_b"])
        assert e["completion"].endswith(prompt.END_OF_TURN)
        assert parse_strict(e["completion"]).match == bool(e["label"])
    wdc = [e for e in build_examples(DataConfig([data_dir / "wdc_products"], neg_ratio=3.0), "train")]
    hard = load_pair_set(data_dir / "wdc_products").split("train").hard_negative.sum()
    assert sum(1 for e in wdc if not e["label"]) >= hard  # every hard negative kept


def test_test_split_is_never_read(data_dir, monkeypatch):
    from epm_edge.data import pairs

    read, original = [], pairs.read_pairs
    monkeypatch.setattr(pairs, "read_pairs", lambda path, a, b: read.append(path.name) or original(path, a, b))
    cfg = DataConfig([data_dir / "amazon_google", data_dir / "wdc_products"], max_per_set=60)
    build_examples(cfg, "train")
    build_examples(cfg, "valid")
    assert read and "test.csv" not in read
    with pytest.raises(EpmError, match="test"):
        build_examples(cfg, "test")


def test_seller_noise_preserves_label_and_evidence(data_dir):
    clean = build_examples(DataConfig([data_dir / "walmart_amazon"], max_per_set=90, noise=0.0), "train")
    noisy = build_examples(DataConfig([data_dir / "walmart_amazon"], max_per_set=90, noise=1.0), "train")
    assert [e["label"] for e in clean] == [e["label"] for e in noisy]
    assert all(e["noise"] for e in noisy) and not any(e["noise"] for e in clean)
    assert sum(c["prompt"] != n["prompt"] for c, n in zip(clean, noisy)) == len(clean)
    # the phrases carry no codes, quantities or colours: the evidence stays as it was
    ps = load_pair_set(data_dir / "abt_buy")
    split = ps.split("train")
    rng = random.Random(0)
    for a_id, b_id, label in list(zip(split.a_ids, split.b_ids, split.labels))[:200]:
        a, b = ps.a.records[a_id], ps.b.records[b_id]
        na = add_seller_noise(a, rng)
        assert na["name"] != a["name"] and a["name"] in na["name"]
        # a budget large enough that the longer title does not push other fields out
        text_a, noisy_a, text_b = (serialize_record(r, 1000) for r in (a, na, b))
        assert silver_evidence(a, b, noisy_a, text_b, bool(label)) == silver_evidence(a, b, text_a, text_b, bool(label))


def test_swapped_examples_show_the_pair_as_b_then_a(data_dir):
    """--swap shows training pairs in B/A order with the evidence's values swapped too; valid stays A/B."""
    kw = dict(dirs=[data_dir / "wdc_products"], max_per_set=120, noise=0.0)
    plain, swapped = (build_examples(DataConfig(**kw, swap=s), "train") for s in (0.0, 1.0))
    assert [e["label"] for e in plain] == [e["label"] for e in swapped]
    assert all(e["swapped"] for e in swapped) and not any(e["swapped"] for e in plain)
    assert all(s["prompt"] == prompt.full_prompt(p["text_b"], p["text_a"]) for p, s in zip(plain, swapped))
    teacher = [(p, s) for p, s in zip(plain, swapped) if p["source"] == "teacher"]
    assert teacher and all(s["source"] == "teacher" for _, s in teacher)

    def values(completion):  # (attribute, A value, B value, verdict) per evidence line
        lines = [ln.split(" | ") for ln in completion.removesuffix(prompt.END_OF_TURN).splitlines()[1:]]
        return [(*head.split(": ", 1), b, verdict) for head, b, verdict in lines]

    for p, s in teacher:
        assert values(s["completion"]) == [(k, b, a, v) for k, a, b, v in values(p["completion"])]
    half = build_examples(DataConfig(**kw, swap=0.5), "train")
    assert 0.3 < sum(e["swapped"] for e in half) / len(half) < 0.7
    assert not any(e["swapped"] for e in build_examples(DataConfig(**kw, swap=1.0), "valid"))


def test_label_only_answers_are_the_decision_alone(data_dir):
    cfg = DataConfig([data_dir / "abt_buy"], max_per_set=40)
    full = build_examples(cfg, "valid")
    bare = build_examples(DataConfig(**{**cfg.__dict__, "rationale": False}), "valid")
    assert [e["prompt"] for e in full] == [e["prompt"] for e in bare]
    assert all(len(prompt.parse_answer(e["completion"]).evidence) >= 1 for e in full)
    for e in bare:
        answer = prompt.parse_answer(e["completion"])
        assert answer.evidence == [] and answer.match == bool(e["label"])
        assert e["completion"] == (prompt.YES if e["label"] else prompt.NO) + prompt.END_OF_TURN

def test_silver_evidence_on_a_real_match(data_dir):
    ps = load_pair_set(data_dir / "abt_buy")
    a = ps.a.records["0"]  # sony turntable pslx350h
    b = next(r for r in ps.b.records.values() if "pslx350h" in r["name"].lower().replace("-", ""))
    ev = silver_evidence(a, b, serialize_record(a), serialize_record(b))
    assert prompt.Evidence("brand", "sony", "sony", "same") in ev
    assert any(e.attribute == "model" and e.verdict == "same" for e in ev)


def test_training_rationales_fit_the_generation_grammar(data_dir):
    """The silver rationales training writes stay within what prompt.GRAMMAR lets the model generate,
    so the format reward and inference agree on one schema."""
    from epm_edge.train.evidence import silver_answer
    from epm_edge.train.rewards import parse_strict

    ps = load_pair_set(data_dir / "wdc_products")
    pairs = ps.split("valid").head(200)
    for a_id, b_id, label in zip(pairs.a_ids, pairs.b_ids, pairs.labels):
        a, b = ps.a.records[a_id], ps.b.records[b_id]
        answer = silver_answer(bool(label), a, b, serialize_record(a), serialize_record(b))
        assert len(answer.evidence) <= prompt.MAX_EVIDENCE
        assert all(len(e.a) <= prompt.MAX_VALUE_CHARS and len(e.b) <= prompt.MAX_VALUE_CHARS for e in answer.evidence)
        assert not answer.evidence or parse_strict(answer.text()) == answer


@pytest.fixture(scope="session")
def real_examples(data_dir):
    return build_examples(DataConfig([data_dir / "abt_buy"], max_per_set=30), "valid")


def _fabricated(match: bool) -> str:
    """A well-formed, self-consistent rationale whose values occur in no listing."""
    verdict = "same" if match else "different"
    return prompt.Answer(match, [prompt.Evidence("brand", "acme", "acme" if match else "zenix", verdict),
                                 prompt.Evidence("model", "zx9000", "zx9000" if match else "qq77", verdict)]).text()


def test_reward_components_on_real_examples(real_examples):
    judge = EvidenceJudge()
    pos = next(e for e in real_examples if e["label"])
    gold = pos["completion"]
    wrong = gold.replace(prompt.YES, prompt.NO, 1)
    malformed = "Maybe these match, the brand looks similar."
    assert format_reward([gold, malformed, wrong]) == [1.0, 0.0, 1.0]
    assert label_reward([gold, wrong, malformed], label=[1, 1, 1]) == [1.0, 0.0, 0.0]
    assert judge.score_one(malformed, pos["text_a"], pos["text_b"]) == 0.0
    for e in real_examples:  # grounded rationales beat fabricated ones with the same decision
        fabricated = _fabricated(bool(e["label"]))
        assert format_reward([fabricated]) == [1.0]
        assert judge.score_one(e["completion"], e["text_a"], e["text_b"]) > \
            judge.score_one(fabricated, e["text_a"], e["text_b"])


# -- end to end on a tiny model ---------------------------------------------------------------

@pytest.fixture(scope="session")
def tiny_base(base_gguf, tmp_path_factory):
    """A 2-layer llama with the real SmolLM2 tokenizer. Its output layer favours the tokens `Yes`, `No`,
    newline and end of turn, so sampled answers sometimes start with the gold decision: GRPO needs
    rewards that differ within a group to produce a gradient."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(base_gguf.parent, gguf_file=base_gguf.name)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 8.0  # a constant direction every position carries
        model.lm_head.weight.zero_()
        for word in (prompt.YES, prompt.NO, "\n", prompt.END_OF_TURN):
            model.lm_head.weight[tok.convert_tokens_to_ids(tok.tokenize(word))[0], 0] = 4.0
    path = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _adapter(path):
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def local_paths(adapter: Path) -> list[str]:
    """Absolute paths an adapter's provenance holds outside its data dirs (which name the user's
    data on purpose): the base, earlier adapters and checkpoints are named, never located."""
    found = []

    def walk(value, key=""):
        if isinstance(value, dict):
            for k, v in value.items():
                if k != "data":
                    walk(v, k)
        elif isinstance(value, list):
            for v in value:
                walk(v, key)
        elif isinstance(value, str) and ("/" in value and Path(value).is_absolute() or str(Path.home()) in value):
            found.append(f"{key}: {value}")

    walk(json.loads((adapter / "epm_edge.json").read_text()))
    walk(json.loads((adapter / "adapter_config.json").read_text()))
    return found


def test_shipped_adapters_name_their_base_by_package_file_and_sha256():
    adapters = list((Path(__file__).parent.parent / "models").glob("*/epm_edge.json"))
    assert adapters
    for sidecar in adapters:
        assert local_paths(sidecar.parent) == [], sidecar.parent


@pytest.fixture(scope="session")
def sft_adapter(tiny_base, data_dir, tmp_path_factory):
    from epm_edge.train.sft import SFTSettings, run_sft

    out = tmp_path_factory.mktemp("sft")
    run_sft(SFTSettings(DataConfig([data_dir / "abt_buy"], record_tokens=16), out, base=str(tiny_base),
                        max_steps=2, batch_size=2, grad_accum=2, limit=8, eval_steps=2, eval_limit=4,
                        logging_steps=1, rank=4, alpha=8, max_length=256))
    return out


def test_sft_end_to_end_changes_adapter(sft_adapter, data_dir):
    import torch

    from epm_edge.runtime.provenance import read_sidecar
    from epm_edge.train.sft import SFTSettings, run_sft

    weights = _adapter(sft_adapter)
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and all(v.dtype == torch.float16 for v in weights.values())
    assert any(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: nonzero means it trained
    meta = read_sidecar(sft_adapter)
    assert meta["prompt_version"] == prompt.PROMPT_VERSION and len(meta["base_sha256"]) == 64
    assert meta["result"]["steps"] == 2 and "eval_f1_tuned" in meta["result"]["valid"]
    assert meta["lora"]["rank"] == 4 and meta["lora"]["alpha"] == 8 and "q_proj" in meta["lora"]["target_modules"]
    assert list((sft_adapter / "checkpoints").glob("checkpoint-*"))
    with pytest.raises(EpmError, match="--resume"):  # an earlier run's checkpoints are never overwritten
        run_sft(SFTSettings(DataConfig([data_dir / "abt_buy"]), sft_adapter))


def test_decision_weighted_loss(tiny_base, data_dir):
    """Weight 1 is the model's own answer-token loss; weight w counts the decision token w times."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    from epm_edge.train.sft import _weighted_trainer, decision_ids

    tok = AutoTokenizer.from_pretrained(tiny_base)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_base), LoraConfig(r=2, target_modules=["q_proj"]))
    examples = build_examples(DataConfig([data_dir / "abt_buy"], record_tokens=16), "valid", limit=3)
    rows = [tok(e["prompt"] + e["completion"], add_special_tokens=False)["input_ids"] for e in examples]
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    labels = torch.full_like(ids, -100)
    for i, (r, e) in enumerate(zip(rows, examples)):
        start = len(tok(e["prompt"], add_special_tokens=False)["input_ids"])
        labels[i, start:len(r)] = ids[i, start:len(r)]
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    inputs = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    model.train()

    yes_no = decision_ids(tok)

    def loss(weight, return_outputs=False):
        cls = _weighted_trainer(SFTTrainer, weight, yes_no)
        trainer = object.__new__(cls)
        trainer.accelerator = SimpleNamespace(autocast=contextlib.nullcontext)  # fp32, for exact comparison
        out = cls.compute_loss(trainer, model, dict(inputs), return_outputs=return_outputs)
        return (out[0].item(), out[1].logits) if return_outputs else out.item()

    with torch.no_grad():
        own = model(**inputs).loss.item()
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels[:, 1:], reduction="none")
    first = (labels[:, 1:] != -100).int().argmax(dim=1)
    decision = nll[torch.arange(len(rows)), first]
    assert [tok.decode([t]) for t in labels[torch.arange(len(rows)), first + 1]] == \
        [prompt.YES if e["label"] else prompt.NO for e in examples]
    n = (labels != -100).sum().item()
    assert loss(1.0) == pytest.approx(own, rel=1e-4)
    assert loss(20.0) == pytest.approx(own + 19 * decision.sum().item() / n, rel=1e-4)
    # Evaluation: the same loss, and as predictions only the Yes/No logits where the decision is made
    model.eval()
    with torch.no_grad():
        evaluated, predicted = loss(20.0, return_outputs=True)
    assert evaluated == pytest.approx(loss(20.0), rel=1e-4) and predicted.shape == (len(rows), 2)
    torch.testing.assert_close(predicted, logits[torch.arange(len(rows)), first][:, list(yes_no)],
                               rtol=1e-4, atol=1e-4)


def test_training_loss_runs_under_the_trainers_mixed_precision(tiny_base, tmp_path):
    """The decision-weighted loss calls the inner model, which bypasses the autocast accelerate wraps
    around the model's forward on a GPU; it must apply the trainer's bf16 itself (called here outside
    `training_step`, whose own autocast covers only the CPU)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from epm_edge.train.sft import _weighted_trainer, decision_ids, device_args

    tok = AutoTokenizer.from_pretrained(tiny_base)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_base), LoraConfig(r=2, target_modules=["q_proj"]))
    trainer = _weighted_trainer(SFTTrainer, 20.0, decision_ids(tok))(
        model=model, args=SFTConfig(output_dir=str(tmp_path), report_to=[], **device_args(True)),
        train_dataset=Dataset.from_list([{"prompt": "Same product?", "completion": " " + prompt.YES}] * 2),
        processing_class=tok)
    seen = []
    model.get_base_model().model.layers[0].mlp.down_proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    ids = torch.tensor([tok("Same product? " + prompt.YES, add_special_tokens=False)["input_ids"]])
    labels = ids.clone()
    labels[:, :-1] = -100
    model.train()
    loss = trainer.compute_loss(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    assert seen == [torch.bfloat16] and loss.dtype == torch.float32 and torch.isfinite(loss)


def test_sft_resume_ends_early_with_the_intervals_given_now(sft_adapter, tiny_base, data_dir, tmp_path):
    """`--resume --max-steps N --eval-steps K`: the resumed run evaluates on the new interval
    (transformers alone keeps the checkpoint's), so the early end has an evaluated checkpoint."""
    import shutil

    from epm_edge.runtime.provenance import read_sidecar
    from epm_edge.train.sft import SFTSettings, run_sft

    out = tmp_path / "sft"
    shutil.copytree(sft_adapter / "checkpoints", out / "checkpoints")  # a stopped run at step 2
    run_sft(SFTSettings(DataConfig([data_dir / "abt_buy"], record_tokens=16), out, base=str(tiny_base),
                        max_steps=3, batch_size=2, grad_accum=2, limit=8, eval_steps=3, eval_limit=4,
                        logging_steps=1, rank=4, alpha=8, max_length=256, resume=True))
    assert read_sidecar(out)["result"]["steps"] == 3
    state = json.loads((out / "checkpoints" / "checkpoint-3" / "trainer_state.json").read_text())
    assert [h["step"] for h in state["log_history"] if "eval_f1_tuned" in h] == [2, 3]


def test_sft_time_limit_ends_with_an_evaluated_checkpoint(tiny_base, data_dir, tmp_path):
    """`--time-limit`: the run stops at the first step past the limit, evaluates and checkpoints there,
    and writes its adapter as at a planned end."""
    from epm_edge.runtime.provenance import read_sidecar
    from epm_edge.train.sft import SFTSettings, run_sft

    out = tmp_path / "sft"
    run_sft(SFTSettings(DataConfig([data_dir / "abt_buy"], record_tokens=16), out, base=str(tiny_base),
                        max_steps=50, batch_size=2, grad_accum=1, limit=8, eval_steps=50, eval_limit=4,
                        logging_steps=1, rank=4, alpha=8, max_length=256, time_limit=1e-6))
    result = read_sidecar(out)["result"]
    assert (result["steps"], result["planned_steps"], result["valid"]["step"]) == (1, 50, 1)
    assert [c.name for c in (out / "checkpoints").glob("checkpoint-*")] == ["checkpoint-1"]


def test_rl_end_to_end_changes_adapter(sft_adapter, tiny_base, data_dir, tmp_path):
    from epm_edge.runtime.provenance import read_sidecar
    from epm_edge.export.merge import adapter_sha256
    from epm_edge.train.rl import RLSettings, run_rl

    out = tmp_path / "rl"
    run_rl(RLSettings(DataConfig([data_dir / "abt_buy"], record_tokens=16), sft_adapter, out,
                      base=str(tiny_base), max_steps=2, batch_size=16, num_generations=8,
                      max_completion_length=8, temperature=1.0, lr=1e-2, limit=16, save_steps=2))
    before, after = _adapter(sft_adapter), _adapter(out)
    assert before.keys() == after.keys()
    assert any(not (before[k].float() == after[k].float()).all() for k in before)
    meta = read_sidecar(out)
    assert meta["stage"] == "rl" and meta["init"]["adapter"] == sft_adapter.name
    assert meta["init"]["adapter_sha256"] == adapter_sha256(sft_adapter)
    assert local_paths(out) == []  # the SFT provenance inside included
    for part in ("format_reward", "label_reward", "judge_reward"):
        assert f"rewards/{part}/mean" in meta["result"]["last_rewards"]


def test_llamacpp_judge_scores_with_a_local_gguf(base_gguf, real_examples):
    from epm_edge.train.judge import LlamaCppJudge

    judge = LlamaCppJudge(base_gguf, threads=2)
    try:
        e = real_examples[0]
        good, malformed = judge.score([e["completion"], "no idea"], [e["text_a"]] * 2, [e["text_b"]] * 2)
    finally:
        judge.close()
    assert 0.0 < good < 1.0 and malformed == 0.0


def test_cli_has_train_commands():
    from click.testing import CliRunner

    from epm_edge.cli import main  # tests/test_imports.py checks that this stays free of torch

    for cmd in (["train", "sft", "--help"], ["train", "rl", "--help"], ["train", "extrapolate", "--help"]):
        result = CliRunner().invoke(main, cmd)
        assert result.exit_code == 0 and "--out" in result.output
    result = CliRunner().invoke(main, ["train", "rl", "--data", "x", "--out", "y", "--init", ".", "--weights", "1,2"])
    assert result.exit_code != 0 and "format,label,judge" in result.output


def test_extrapolation_moves_past_the_rl_adapter(sft_adapter, tiny_base, tmp_path):
    """D_out = D_rl + alpha (D_rl - D_sft) per module, stored at the RL adapter's rank, loadable by export."""
    import shutil

    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig

    from epm_edge.export.merge import check_adapter, resolve_base
    from epm_edge import model_settings
    from epm_edge.runtime.provenance import read_sidecar, write_sidecar
    from epm_edge.train.extrapolate import extrapolate

    rl = tmp_path / "rl"
    shutil.copytree(sft_adapter, rl)
    tuned = read_sidecar(rl)  # cuts tuned on the RL weights, one order and both
    for both in (False, True):
        tuned = model_settings.with_adapter_cut(tuned, "Q8_0", 0.4, both, "valid")
    write_sidecar(rl, tuned)
    sft_w = _adapter(sft_adapter)
    # an "RL" change inside the SFT adapter's own subspace, so that the rank cut loses nothing
    save_file({k: v * 1.5 if "lora_B" in k else v for k, v in sft_w.items()}, str(rl / "adapter_model.safetensors"))
    record = extrapolate(sft_adapter, rl, 2.0, tmp_path / "x")
    out_w = _adapter(tmp_path / "x")
    assert out_w.keys() == sft_w.keys() and record["svd_dropped_max"] < 1e-3
    for key_a in (k for k in sft_w if "lora_A" in k):
        key_b = key_a.replace("lora_A", "lora_B")
        d_sft = sft_w[key_b].float() @ sft_w[key_a].float()
        torch.testing.assert_close(out_w[key_b].float() @ out_w[key_a].float(), 2.5 * d_sft,
                                   atol=2e-3 * float(d_sft.abs().max()) + 1e-6, rtol=0)
    meta = read_sidecar(tmp_path / "x")
    assert meta["extrapolation"]["alpha"] == 2.0 and meta["prompt_version"] == prompt.PROMPT_VERSION
    assert not set(meta) & set(model_settings.ALL_KEYS)  # the new weights get cuts of their own
    check_adapter(tmp_path / "x", resolve_base(tiny_base), AutoConfig.from_pretrained(tiny_base))

    save_file({k: v for k, v in sft_w.items() if "q_proj" not in k}, str(rl / "adapter_model.safetensors"))
    with pytest.raises(EpmError, match="different modules"):
        extrapolate(sft_adapter, rl, 1.0, tmp_path / "y")
    (rl / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(EpmError, match="unreadable adapter"):
        extrapolate(sft_adapter, rl, 1.0, tmp_path / "y")
