"""The base model for training, loaded with transformers.

`export.merge.resolve_base` turns the bundled GGUF (or a given one) into a cached HF checkpoint;
this module loads that checkpoint for training (optionally 4-bit for QLoRA) and sets up the
tokenizer the way the prompt schema and llama.cpp expect it.
"""

from __future__ import annotations

from epm_edge import prompt
from epm_edge.errors import ModelError
from epm_edge.export.merge import BaseModel
from epm_edge.runtime.chat_template import dir_chat_format
from epm_edge.runtime.hf import segment_ids

PAD = "<|endoftext|>"


def prepare_tokenizer(tok, fmt: prompt.ChatFormat = prompt.CHATML):
    """No BOS added (llama.cpp tokenizes the prompt without one; a template that wants one writes it),
    the chat format's end of turn as EOS, a real pad token.

    A tokenizer read from the SmolLM2 GGUF says bos = eos = `<|im_start|>` and adds a BOS: left as
    is, training would see token ids that inference never sends.
    """
    tok.add_bos_token = False
    eos = tok.eos_token
    tok.eos_token = fmt.end_of_turn
    if tok.pad_token is None or tok.pad_token == tok.eos_token:
        vocab = tok.get_vocab()
        pad = next((t for t in (PAD, eos, tok.unk_token) if t in vocab and t != fmt.end_of_turn), None)
        if pad is None:
            raise ModelError("the tokenizer has no token to pad with besides the end of turn: add a pad token")
        tok.pad_token = pad
    for word in (prompt.YES, prompt.NO):
        if len(tok(word, add_special_tokens=False)["input_ids"]) != 1:
            raise ModelError(f"'{word}' is not a single token for this tokenizer: the schema needs it to be")
    return tok


def base_format(base: BaseModel) -> prompt.ChatFormat:
    """The chat format of a resolved base model (`export.merge.resolve_base`): training examples are framed
    in it, as the base's runtimes will frame pairs."""
    return dir_chat_format(base.hf_dir)


def prompt_ids(tok, fmt: prompt.ChatFormat, text: str) -> list[int]:
    """A training prompt's ids as the runtimes tokenize it: record text is data, so a CSV value
    holding `<|im_end|>` trains as the text the scorers see, never as the control token."""
    return segment_ids(tok, fmt.prompt_segments(text))


def completion_ids(tok, fmt: prompt.ChatFormat, completion: str) -> list[int]:
    """An answer's ids: its values are record text (data); only the end-of-turn marker is special."""
    body = completion.removesuffix(fmt.end_of_turn)
    return segment_ids(tok, [(body, False), (completion[len(body):], True)])


def load_base_hf(info: BaseModel, fmt: prompt.ChatFormat, qlora: bool = False):
    """(model, tokenizer) of a resolved base model, the tokenizer prepared for its chat format `fmt`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"torch_dtype": torch.float32}
    if qlora:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(info.hf_dir, **kwargs)
    if not hasattr(model, model.base_model_prefix) and hasattr(model, "model"):
        # Gemma3ForCausalLM names a backbone it does not have ("language_model", for multimodal checkpoints);
        # trl's loss reaches the backbone through that name.
        model.base_model_prefix = "model"
    tok = prepare_tokenizer(AutoTokenizer.from_pretrained(info.hf_dir), fmt)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok
