"""The llama.cpp scorer with the real bundled model: batch neighbours and prefix reuse change nothing."""

import numpy as np
import pytest

from epm_edge import prompt, resolve
from epm_edge.data import load_pair_set
from epm_edge.errors import ModelError
from epm_edge.evaluate.scoring import serialize_pairs
from epm_edge.runtime import load_scorer
from epm_edge.runtime.llamacpp import LlamaCppScorer


@pytest.fixture(scope="module")
def real_pairs(data_dir):
    ps = load_pair_set(data_dir / "abt_buy")
    return serialize_pairs(ps, ps.split("valid").head(12))


def test_scores_do_not_depend_on_batch_neighbours(base_gguf, real_pairs):
    """A pair's score is the same alone, in any order and beside any other pairs, shared record A or
    not (on the quantized base, where multi-pair decodes moved scores by up to 0.03)."""
    a_side, b_side = [a for a, _ in real_pairs[:3]], [b for _, b in real_pairs[3:7]]
    pairs = [(a, b) for a in a_side for b in b_side] + real_pairs[8:]  # 3 shared A groups + singles
    scorer = LlamaCppScorer(base_gguf)
    together = scorer.score(pairs)
    alone = np.array([scorer.score([p])[0] for p in pairs])
    reordered = scorer.score(pairs[::-1])[::-1]
    others = scorer.score(real_pairs[:5] + pairs[:4] + real_pairs[5:8])[5:9]
    scorer.close()
    np.testing.assert_allclose(alone, together, rtol=0, atol=1e-6)
    np.testing.assert_allclose(reordered, together, rtol=0, atol=1e-6)
    np.testing.assert_allclose(others, together[:4], rtol=0, atol=1e-6)


def test_shared_record_a_equals_unshared(f32_gguf, real_pairs):
    """Pairs with the same A (a record against its candidates) reuse A's tokens; scores move only by
    float rounding between one decode and two (measured up to 0.0044 in P on F32 weights; scoring
    the wrong sequence moves them by tenths)."""
    a_side, b_side = [a for a, _ in real_pairs[:3]], [b for _, b in real_pairs[3:7]]
    pairs = [(a, b) for a in a_side for b in b_side] + [real_pairs[8]]
    shared = LlamaCppScorer(f32_gguf)
    for a, b in pairs:  # the tokens split at the A/B boundary, so the shared path is the one taken
        head = shared.tokenize(prompt.pair_head(a))
        assert shared.tokenize(prompt.pair_suffix(a, b))[:len(head)] == head
    with_sharing = shared.score(pairs)
    shared.close()
    plain = LlamaCppScorer(f32_gguf, share_records=False)
    np.testing.assert_allclose(with_sharing, plain.score(pairs), atol=1e-2)
    plain.close()


def test_prefix_reuse_equals_full_prompt(f32_gguf, real_pairs):
    """Scoring through the cached prefix gives the P(match) of a fresh, full-prompt evaluation."""
    import llama_cpp as lc

    from epm_edge.runtime.llamacpp import PAIR_SEQ

    scorer = LlamaCppScorer(f32_gguf, share_records=False)
    cached = scorer.score(real_pairs[:3])
    for (a, b), p in zip(real_pairs[:3], cached):
        tokens = scorer.tokenize(prompt.full_prompt(a, b))
        fresh = scorer._probability(scorer._decode(tokens, PAIR_SEQ, 0))
        lc.llama_memory_seq_rm(scorer.mem, PAIR_SEQ, -1, -1)
        assert fresh == pytest.approx(p, abs=2e-3)
    scorer.close()


def test_real_quantized_model_scores_pairs(base_gguf, real_pairs):
    scorer = load_scorer(base_gguf, batch_size=16)
    assert scorer.name == "llamacpp" and scorer.threshold is None
    s1 = scorer.score(real_pairs)
    assert s1.shape == (12,) and np.all((s1 > 0) & (s1 < 1))
    np.testing.assert_array_equal(scorer.score(real_pairs), s1)
    scorer.close()


def test_non_finite_logits_stop_with_a_model_error(nan_gguf, real_pairs):
    """Garbled tensor data that loads but computes NaN never turns into scores (of 0)."""
    scorer = LlamaCppScorer(nan_gguf)
    with pytest.raises(ModelError, match="non-finite logits"):
        scorer.score(real_pairs[:2])
    scorer.close()


def test_scores_unchanged_after_torch_bf16_in_the_same_process(base_gguf, real_pairs):
    """On AMX CPUs torch's bf16 matmul (oneDNN) releases the tile registers of the OpenMP threads that
    llama.cpp's AMX matmul runs on too; unpatched, the next llama.cpp call dies (SIGILL) (see the Makefile)."""
    import torch

    scorer = load_scorer(base_gguf, batch_size=16)
    before = scorer.score(real_pairs)
    x = torch.randn(256, 256)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (x @ x).sum().item()
    np.testing.assert_array_equal(scorer.score(real_pairs), before)
    scorer.close()


def test_explanations_always_parse(base_gguf, real_pairs):
    scorer = LlamaCppScorer(base_gguf)
    matches = [True, False]
    for ans, m in zip(scorer.explain(real_pairs[:2], matches), matches):
        assert isinstance(ans, prompt.Answer)
        assert ans.match == m  # the rationale explains the decision already taken
        assert 1 <= len(ans.evidence) <= 6
    scorer.close()


def test_broken_model_files(tmp_path, base_gguf):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="not a GGUF file"):
        LlamaCppScorer(bad)
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(base_gguf.read_bytes()[:2_000_000])
    with pytest.raises(ModelError, match="could not load"):
        LlamaCppScorer(truncated)
    with pytest.raises(ModelError, match="not found"):
        load_scorer(tmp_path / "missing.gguf")


def test_build_features_are_the_cpus():
    """The features read from llama.cpp's system info (they pick the default GGUF type) are real
    names of this native build: present exactly where the CPU has them."""
    from epm_edge import model_store
    from epm_edge.doctor import cpu_info
    from epm_edge.runtime.llamacpp import build_features

    features, flags = build_features(), cpu_info()[1]
    assert ("AVX2" in features) == ("avx2" in flags)
    assert ("AVX512_BF16" in features) == ("avx512_bf16" in flags)
    assert resolve.default_quant() in model_store.ADAPTER_QUANTS
