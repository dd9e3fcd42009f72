"""RL on the SFT adapter with trl's GRPOTrainer: reward = weighted format + label + judge.

The policy is the SFT LoRA adapter, trained further; the group of sampled answers per prompt gives
GRPO its baseline, so no value model is needed. Each reward component is logged per step
(`rewards/<name>/mean`). Checkpoints and `--resume` work as in SFT.
"""

from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from epm_edge.console import err
from epm_edge.errors import EpmError
from epm_edge.runtime.provenance import read_sidecar
from epm_edge.train.dataset import DataConfig, build_examples, summary
from epm_edge.train.rewards import format_reward, judge_reward, label_reward
from epm_edge.train.sft import check_resume, checkpoints_dir, device_args


@dataclass
class RLSettings:
    data: DataConfig
    init: Path  # the SFT adapter dir
    out: Path
    base: str | None = None  # default: the bundled base; check_adapter refuses another than the SFT adapter's
    weights: tuple[float, float, float] = (0.2, 0.5, 0.3)  # format, label, judge
    judge: str = "evidence"  # or a .gguf path for an LLM judge
    rubric: str | None = None  # LLM judge prompt with {a}, {b}, {answer}
    max_steps: int = 200
    lr: float = 1e-5
    beta: float = 0.0  # KL to the SFT adapter; 0 skips the reference forward pass
    num_generations: int = 4
    batch_size: int = 8  # completions per step: batch_size / num_generations prompts
    grad_accum: int = 1
    max_completion_length: int = 96
    temperature: float = 0.9
    save_steps: int = 50
    save_total_limit: int = 2
    logging_steps: int = 1
    limit: int | None = None
    bf16: bool = True
    resume: bool = False
    time_limit: float | None = None  # minutes
    seed: int = 0
    extra: dict = field(default_factory=dict)  # passed to trl's GRPOConfig as is

    def hyperparameters(self) -> dict:
        d = asdict(self)
        for k in ("data", "out", "init", "base"):  # recorded apart, by name and sha256
            d.pop(k)
        return d


def _reward_funcs(judge):
    judged = functools.partial(judge_reward, judge=judge)
    return [format_reward, label_reward, judged]


def _data_prompts(base_class, fmt):
    """`base_class` (trl's GRPOTrainer) tokenizing prompts as the runtimes do: record text is data
    (train.base.prompt_ids), where trl's own call would parse special-token text anywhere in it."""
    from epm_edge.train.base import prompt_ids

    if not hasattr(base_class, "_tokenize_prompts"):
        raise EpmError(f"this trl version's {base_class.__name__} has no _tokenize_prompts to override: "
                       "install the trl version pyproject.toml names")

    class DataPrompts(base_class):
        def _tokenize_prompts(self, prompts: list):
            return [prompt_ids(self.processing_class, fmt, p) for p in prompts], None, {}

    return DataPrompts


def run_rl(s: RLSettings) -> Path:
    from datasets import Dataset
    from peft import PeftModel
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    from epm_edge.export.merge import adapter_sha256, check_adapter, resolve_base
    from epm_edge.train.adapter import save_adapter
    from epm_edge.train.base import base_format, load_base_hf
    from epm_edge.train.judge import make_judge
    from epm_edge.train.progress import training_callbacks

    init = Path(s.init)
    trained = read_sidecar(init)
    if trained.get("stage") == "rl":
        err.print(f"{init} is already an RL adapter: continuing from it")
    resume = check_resume(s.out, s.resume)
    base = resolve_base(s.base, init)  # without --base: the one the adapter was trained on
    fmt = base_format(base)  # the prompts are framed in the base model's own chat template
    examples = build_examples(s.data, "train", limit=s.limit, fmt=fmt)
    if not examples:
        raise EpmError("no training examples: check --data")
    err.print(f"rl data: {summary(examples)}")
    dataset = Dataset.from_list([{k: e[k] for k in ("prompt", "label", "text_a", "text_b")} for e in examples])

    model, tok = load_base_hf(base, fmt)  # check_adapter: the SFT adapter's base sha256 must match
    check_adapter(init, base, model.config)
    model = PeftModel.from_pretrained(model, init, is_trainable=True)
    judge = make_judge(s.judge, rubric=s.rubric)
    args = GRPOConfig(
        output_dir=str(checkpoints_dir(s.out)), max_steps=s.max_steps, learning_rate=s.lr, beta=s.beta,
        num_generations=s.num_generations, per_device_train_batch_size=s.batch_size,
        gradient_accumulation_steps=s.grad_accum, max_completion_length=s.max_completion_length,
        temperature=s.temperature, reward_weights=list(s.weights), gradient_checkpointing=False,
        save_strategy="steps", save_steps=s.save_steps, save_total_limit=s.save_total_limit,
        logging_steps=s.logging_steps, report_to=[],
        disable_tqdm=True, seed=s.seed, dataloader_num_workers=0, **device_args(s.bf16), **s.extra)
    trainer = _data_prompts(GRPOTrainer, fmt)(model=model, reward_funcs=_reward_funcs(judge), args=args,
                                         train_dataset=dataset, processing_class=tok,
                                         callbacks=training_callbacks("rl", s.time_limit))
    trainer.remove_callback(PrinterCallback)
    t0 = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=resume or None)
    finally:
        if hasattr(judge, "close"):
            judge.close()
    rewards = [h for h in trainer.state.log_history if "reward" in h]
    save_adapter(trainer.model, Path(s.out), base, "rl",
                 init={"adapter": init.name, "adapter_sha256": adapter_sha256(init), "provenance": trained},
                 data={"config": s.data.to_json(), "train": summary(examples)},
                 hyperparameters=s.hyperparameters(),
                 result={"train_seconds": round(time.perf_counter() - t0, 1), "steps": trainer.state.global_step,
                         "planned_steps": trainer.state.max_steps,
                         "train_loss": result.training_loss, "last_rewards": rewards[-1] if rewards else {}})
    return Path(s.out)
