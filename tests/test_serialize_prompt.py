"""Record serialization and the prompt/answer schema."""

import pytest

from epm_edge import prompt
from epm_edge.data.serialize import approx_tokens, serialize_record
from epm_edge.errors import ModelError


def test_serialization_orders_drops_empty_and_joins_currency():
    rec = {"description": "long text", "price": "9.99", "priceCurrency": "EUR", "title": "Sony A7",
           "brand": "", "specTableContent": "x"}
    assert serialize_record(rec) == "title: Sony A7; price: 9.99 EUR; specTableContent: x; description: long text"


def test_serialization_respects_token_budget():
    rec = {"title": "Canon EOS R50 Mirrorless Camera", "description": " ".join(["word"] * 500)}
    text = serialize_record(rec, max_tokens=40)
    assert text.startswith("title: Canon EOS R50 Mirrorless Camera; description: word")
    assert approx_tokens(text) <= 40
    assert "|" not in serialize_record({"title": "a | b"})  # `|` is the rationale separator


def test_prompt_is_prefix_plus_pair_suffix():
    full = prompt.full_prompt("title: a", "title: b")
    assert full.startswith(prompt.PREFIX) and full.endswith("<|im_start|>assistant\n")
    assert "A: title: a\nB: title: b" in full


def test_answer_round_trip_and_errors():
    ans = prompt.Answer(True, [prompt.Evidence("model", "pslx350h", "ps-lx350h", "same"),
                               prompt.Evidence("color", "", "black", "missing")])
    parsed = prompt.parse_answer(ans.text() + prompt.END_OF_TURN)
    assert parsed == ans
    assert prompt.parse_answer("No").match is False
    for bad in ["Maybe", "yes\nbrand: a | b | same", "Yes\nbrand a | b | same", "Yes\nbrand: a | b | equal"]:
        with pytest.raises(prompt.AnswerFormatError):
            prompt.parse_answer(bad)


def test_match_probability():
    assert prompt.match_probability(2.0, 2.0) == pytest.approx(0.5)
    assert prompt.match_probability(10.0, 0.0) > 0.999
    assert prompt.match_probability(-1000.0, 0.0) == 0.0
    for bad in (float("nan"), float("inf")):  # garbled weights: an error naming the model, never a score
        with pytest.raises(ModelError, match="m.gguf: the model gave non-finite logits"):
            prompt.match_probability(bad, 0.0, "m.gguf")
