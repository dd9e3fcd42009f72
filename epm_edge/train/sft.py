"""Supervised LoRA fine-tuning on prompt/answer examples with trl's SFTTrainer.

Prompt-completion examples make the loss cover answer tokens only. On CPU, bf16 autocast
(`bf16=True` with `use_cpu`) runs ~3x faster than fp32 here. Checkpoints go to
`<out>/checkpoints` every `eval_steps`; `resume=True` continues from the latest one. Validation
reports the loss and the decision F1 (P(Yes) from the first answer token, as the scorers compute it),
and the best checkpoint by F1 at a tuned threshold is the adapter written to `<out>`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from epm_edge import prompt
from epm_edge.console import err
from epm_edge.errors import EpmError
from epm_edge.train.dataset import DataConfig, build_examples, summary


@dataclass
class SFTSettings:
    data: DataConfig
    out: Path
    base: str | None = None  # HF dir or .gguf; None: the bundled SmolLM2
    epochs: float = 2.0
    max_steps: int = -1  # > 0 overrides epochs
    lr: float = 2e-4
    # The decision is 1 answer token of ~45 (the rest is evidence), and only it is scored at run time:
    # with plain token-mean loss, 130 steps learned the evidence format but not the decision.
    decision_weight: float = 20.0
    init: Path | None = None  # an adapter to continue training (new data, loss or schedule)
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.0  # LoRA dropout 0.05 took 15% of each CPU training step here (py-spy): off by default
    target_modules: list[str] | str = "all-linear"
    batch_size: int = 8
    grad_accum: int = 2
    max_length: int = 512
    warmup_ratio: float = 0.03
    eval_steps: int = 200  # also the checkpoint interval
    eval_limit: int = 400  # validation examples per evaluation
    save_total_limit: int = 2
    logging_steps: int = 10
    limit: int | None = None  # training examples (for trials)
    qlora: bool = False
    bf16: bool = True
    resume: bool = False
    time_limit: float | None = None  # minutes
    seed: int = 0
    extra: dict = field(default_factory=dict)  # passed to trl's SFTConfig as is

    def hyperparameters(self) -> dict:
        d = asdict(self)
        d.pop("data"), d.pop("out"), d.pop("base")  # the base is recorded by name and sha256 (train/adapter.py)
        if self.init:  # the adapter continued decides the LoRA shape (recorded under "lora")
            for k in ("rank", "alpha", "dropout", "target_modules"):
                d.pop(k)
        return {**d, "init": Path(self.init).name if self.init else None}  # its provenance: no local paths


def checkpoints_dir(out: Path) -> Path:
    return Path(out) / "checkpoints"


def check_resume(out: Path, resume: bool) -> bool:
    """Whether to resume; refuses to start over a run that has checkpoints unless asked to resume."""
    has = any(checkpoints_dir(out).glob("checkpoint-*"))
    if has and not resume:
        raise EpmError(f"{out} holds checkpoints of an earlier run: pass --resume to continue it, "
                       "or choose another --out")
    if resume and not has:
        err.print(f"no checkpoint in {checkpoints_dir(out)} yet: starting from the beginning")
    return has and resume


def device_args(bf16: bool) -> dict:
    """bf16 mixed precision on CPU needs `use_cpu`; on a GPU, bf16 only where it is supported."""
    import torch

    if torch.cuda.is_available():
        return {"use_cpu": False, "bf16": bf16 and torch.cuda.is_bf16_supported()}
    return {"use_cpu": True, "bf16": bf16}


def decision_ids(tok) -> tuple[int, int]:
    """The ids of the Yes and No answer tokens, which the scorers read P(match) from."""
    from epm_edge.runtime.hf import single_token

    return tuple(single_token(tok, word, "the base tokenizer") for word in (prompt.YES, prompt.NO))


def _decision_metrics(yes: int):
    """compute_metrics for the decision F1 from the Yes/No logits at the first answer token
    (the predictions evaluation returns, see `_weighted_trainer`).

    `f1_tuned` is the F1 at the threshold best on these pairs, as deployment picks it on valid:
    the checkpoint is selected on it.
    """
    from epm_edge.evaluate.metrics import best_threshold, compute_metrics

    def compute(pred):
        logits, labels = pred.predictions, pred.label_ids
        first = (labels != -100).argmax(axis=1)
        gold = labels[np.arange(len(labels)), first] == yes
        p = 1.0 / (1.0 + np.exp(logits[:, 1] - logits[:, 0]))
        at_half, tuned = compute_metrics(gold, p, 0.5), compute_metrics(gold, p, best_threshold(gold, p))
        return {"f1": at_half.f1, "precision": at_half.precision, "recall": at_half.recall,
                "accuracy": at_half.accuracy, "f1_tuned": tuned.f1, "threshold": tuned.threshold}

    return compute


def _weighted_trainer(base_class, decision_weight: float, decision: tuple[int, int]):
    """`base_class` (trl's SFTTrainer) with a loss that counts the decision token `decision_weight`
    times and scores only answer positions; evaluation returns as predictions only the logits of the
    `decision` (Yes, No) token ids at the first answer position.

    trl's CPU path scores every position against the whole vocabulary (its compact path needs
    Triton); the answer is ~1/6 of the tokens, so scoring only it is also faster here. Its evaluation
    path keeps those logits for every position: 262k-token vocabularies (Gemma 3) ran out of 24 GB.
    """
    import torch
    import torch.nn.functional as F
    from transformers.modeling_outputs import CausalLMOutput

    class DecisionWeighted(base_class):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            causal = model.get_base_model()
            labels = inputs["labels"][:, 1:]
            mask = labels != -100
            # Calling the inner model skips the forward that accelerate wraps in autocast on a GPU:
            # without this its matmuls ran in fp32 (an H200 profile showed fp32 GEMM kernels).
            with self.accelerator.autocast():
                hidden = causal.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                      use_cache=False).last_hidden_state[:, :-1]
                logits = causal.lm_head(hidden[mask])
            nll = F.cross_entropy(logits.float(), labels[mask], reduction="none")
            is_first = (mask & (mask.cumsum(dim=1) == 1))[mask]
            weights = torch.where(is_first, decision_weight, 1.0)
            count = num_items_in_batch if num_items_in_batch is not None else mask.sum()
            loss = (nll * weights).sum() / count
            if not return_outputs:
                return loss
            first = mask.int().argmax(dim=1)  # each sequence's first answer token (predicted one step earlier)
            with self.accelerator.autocast():
                answer = causal.lm_head(hidden[torch.arange(len(first), device=first.device), first])
            return loss, CausalLMOutput(loss=loss, logits=answer[:, list(decision)].float())

    return DecisionWeighted


def _dataset(examples: list[dict], tok, fmt):
    """Tokenized examples (trl takes them as they are): record text as data (train.base.prompt_ids)."""
    from datasets import Dataset

    from epm_edge.train.base import completion_ids, prompt_ids

    rows = []
    for e in examples:
        p, c = prompt_ids(tok, fmt, e["prompt"]), completion_ids(tok, fmt, e["completion"])
        rows.append({"input_ids": p + c, "completion_mask": [0] * len(p) + [1] * len(c)})
    return Dataset.from_list(rows)


def run_sft(s: SFTSettings) -> Path:
    """Train, keep the best checkpoint by validation F1, and save it as a 16-bit adapter in s.out."""
    from peft import LoraConfig
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from epm_edge.export.merge import resolve_base
    from epm_edge.train.adapter import save_adapter
    from epm_edge.train.base import base_format, load_base_hf
    from epm_edge.train.progress import training_callbacks

    resume = check_resume(s.out, s.resume)
    base = resolve_base(s.base, Path(s.init) if s.init else None)  # --init without --base: its own base
    fmt = base_format(base)  # the examples are framed in the base model's own chat template
    train = build_examples(s.data, "train", limit=s.limit, fmt=fmt)
    valid_cfg = DataConfig(**{**s.data.__dict__, "dirs": [d for d in s.data.dirs if (Path(d) / "valid.csv").exists()]})
    valid = build_examples(valid_cfg, "valid", limit=s.eval_limit, fmt=fmt) if valid_cfg.dirs and s.eval_limit else []
    err.print(f"train: {summary(train)}")
    err.print(f"valid: {summary(valid)}")
    if not train:
        raise EpmError("no training examples: check --data")

    model, tok = load_base_hf(base, fmt, qlora=s.qlora)
    lora = LoraConfig(r=s.rank, lora_alpha=s.alpha, lora_dropout=s.dropout, target_modules=s.target_modules,
                      task_type="CAUSAL_LM")
    if s.init:
        from peft import PeftModel

        from epm_edge.export.merge import check_adapter

        check_adapter(Path(s.init), base, model.config)
        model, lora = PeftModel.from_pretrained(model, s.init, is_trainable=True), None
    evaluate = bool(valid)
    args = SFTConfig(
        output_dir=str(checkpoints_dir(s.out)), num_train_epochs=s.epochs, max_steps=s.max_steps,
        learning_rate=s.lr, lr_scheduler_type="cosine", warmup_ratio=s.warmup_ratio,
        per_device_train_batch_size=s.batch_size, per_device_eval_batch_size=s.batch_size,
        gradient_accumulation_steps=s.grad_accum, max_length=s.max_length,
        completion_only_loss=True, gradient_checkpointing=False, group_by_length=True,
        eval_strategy="steps" if evaluate else "no", eval_steps=s.eval_steps, save_strategy="steps",
        save_steps=s.eval_steps, save_total_limit=s.save_total_limit, load_best_model_at_end=evaluate,
        metric_for_best_model="f1_tuned" if evaluate else None, greater_is_better=True if evaluate else None,
        label_names=["labels"], logging_steps=s.logging_steps, include_num_input_tokens_seen="non_padding",
        report_to=[], disable_tqdm=True, seed=s.seed, data_seed=s.seed, dataloader_num_workers=0,
        **device_args(s.bf16), **s.extra)
    decision = decision_ids(tok)
    trainer = _weighted_trainer(SFTTrainer, s.decision_weight, decision)(
        model=model, args=args, train_dataset=_dataset(train, tok, fmt),
        eval_dataset=_dataset(valid, tok, fmt) if evaluate else None, processing_class=tok, peft_config=lora,
        compute_metrics=_decision_metrics(decision[0]) if evaluate else None,
        callbacks=training_callbacks("sft", s.time_limit))
    trainer.remove_callback(PrinterCallback)  # ProgressCallback prints the same logs in one line
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume or None)
    seconds = time.perf_counter() - t0
    # The adapter now holds the best checkpoint: its logged evaluation is the one to record.
    evals = [h for h in trainer.state.log_history if "eval_f1_tuned" in h]
    final = max(evals, key=lambda h: h["eval_f1_tuned"]) if evals else {}
    save_adapter(trainer.model, Path(s.out), base, "sft",
                 data={"config": s.data.to_json(), "train": summary(train), "valid": summary(valid)},
                 hyperparameters=s.hyperparameters(),
                 result={"train_seconds": round(seconds, 1), "steps": trainer.state.global_step,
                         "planned_steps": trainer.state.max_steps, "train_loss": result.training_loss,
                         "tokens_seen": int(trainer.state.num_input_tokens_seen),
                         "best_checkpoint": Path(trainer.state.best_model_checkpoint or "").name or None,
                         "valid": final})
    return Path(s.out)
