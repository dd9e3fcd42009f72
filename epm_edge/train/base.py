"""The base model for training, loaded with transformers.

`export.merge.resolve_base` turns the bundled GGUF (or a given one) into a cached HF checkpoint;
this module loads that checkpoint for training (optionally 4-bit for QLoRA) and sets up the
tokenizer the way the prompt schema and llama.cpp expect it.
"""

from __future__ import annotations

from pathlib import Path

from epm_edge import prompt
from epm_edge.errors import ModelError
from epm_edge.export.merge import BaseModel, resolve_base
from epm_edge.runtime.hf import segment_ids

PAD = "<|endoftext|>"


def prepare_tokenizer(tok):
    """No BOS (llama.cpp tokenizes the prompt without one), `<|im_end|>` ends a turn, a real pad token.

    A tokenizer read from the SmolLM2 GGUF says bos = eos = `<|im_start|>` and adds a BOS: left as
    is, training would see token ids that inference never sends.
    """
    tok.add_bos_token = False
    tok.eos_token = prompt.END_OF_TURN
    if tok.pad_token is None or tok.pad_token == tok.eos_token:
        tok.pad_token = PAD
    for word in (prompt.YES, prompt.NO):
        if len(tok(word)["input_ids"]) != 1:
            raise ModelError(f"'{word}' is not a single token for this tokenizer: the schema needs it to be")
    return tok


def prompt_ids(tok, text: str) -> list[int]:
    """A training prompt's ids as the runtimes tokenize it: record text is data, so a CSV value
    holding `<|im_end|>` trains as the text the scorers see, never as the control token."""
    return segment_ids(tok, prompt.prompt_segments(text))


def completion_ids(tok, completion: str) -> list[int]:
    """An answer's ids: its values are record text (data); only the end-of-turn marker is special."""
    body = completion.removesuffix(prompt.END_OF_TURN)
    return segment_ids(tok, [(body, False), (completion[len(body):], True)])


def load_base_hf(base: str | Path | None = None, qlora: bool = False):
    """(model, tokenizer, BaseModel) for `base`: an HF dir, a .gguf, or None for the bundled base."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info: BaseModel = resolve_base(base)
    kwargs = {"torch_dtype": torch.float32}
    if qlora:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(info.hf_dir, **kwargs)
    tok = prepare_tokenizer(AutoTokenizer.from_pretrained(info.hf_dir))
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok, info
