"""The chat format of a Hugging Face or ONNX model dir, from its saved tokenizer files (as
transformers saves them: `chat_template.jinja`, or `chat_template` in tokenizer_config.json)."""

from __future__ import annotations

import json
from pathlib import Path

from epm_edge import prompt


def _token_text(value) -> str:
    return value.get("content", "") if isinstance(value, dict) else value or ""


def dir_chat_format(path: Path) -> prompt.ChatFormat:
    path = Path(path)
    try:
        config = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        config = {}
    jinja = path / "chat_template.jinja"
    template = jinja.read_text(encoding="utf-8") if jinja.exists() else config.get("chat_template")
    return prompt.chat_format(template, _token_text(config.get("bos_token")), _token_text(config.get("eos_token")),
                              path, add_bos=bool(config.get("add_bos_token")))
