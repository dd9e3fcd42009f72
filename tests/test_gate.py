"""The accuracy gate's statistics: paired bootstrap intervals, the pass/fail/inconclusive rule, the pairs
that would decide, and verification samples that never share a pair.

Scores come from a seeded synthetic population (a reference that separates matches from non-matches,
and variants that perturb its log-odds by known amounts), so what a verdict should be is known."""

import csv

import numpy as np
import pytest

from epm_edge.evaluate.gate import FAIL, INCONCLUSIVE, PASS, judge


def population(n: int, noise: float, seed: int = 0):
    """(labels, reference P(match), variant P(match)): the variant adds Gaussian noise of sd `noise` to the
    reference's log-odds; about 20 % positives."""
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.2
    logit = np.where(labels, 2.0, -2.0) + rng.normal(0, 1.6, n)
    variant = logit + rng.normal(0, noise, n)
    return labels, 1 / (1 + np.exp(-logit)), 1 / (1 + np.exp(-variant))


def test_a_variant_identical_to_the_reference_passes_with_empty_intervals():
    labels, ref, _ = population(500, 0.0)
    e = judge(labels, ref, ref, max_delta_f1=0.5, max_flip_rate=0.01)
    assert (e.delta_f1, e.delta_f1_low, e.delta_f1_high, e.flip_rate, e.flip_rate_high) == (0, 0, 0, 0, 0)
    assert e.verdict == PASS and e.pairs_to_decide is None


def test_the_rule_on_a_close_and_a_broken_variant():
    """Noise of 0.05 in log-odds flips few decisions: within a 1.5 point / 3 % budget. Noise of 3 flips
    about a fifth of them: its flip interval lies wholly above 3 %, so it fails."""
    labels, ref, close = population(2000, 0.05)
    e = judge(labels, ref, close, max_delta_f1=1.5, max_flip_rate=0.03)
    assert e.verdict == PASS and e.delta_f1_low >= -0.015 and e.flip_rate_high <= 0.03
    _, _, broken = population(2000, 3.0)
    e = judge(labels, ref, broken, max_delta_f1=1.5, max_flip_rate=0.03)
    assert e.verdict == FAIL and e.flip_rate_low > 0.03 and e.delta_f1_high < 0
    assert e.delta_f1_low <= e.delta_f1 <= e.delta_f1_high and e.flip_rate_low <= e.flip_rate <= e.flip_rate_high


def test_inconclusive_names_the_pairs_that_would_decide():
    """Few pairs and a budget near the variant's flip rate: the interval straddles the budget. The pairs
    that would decide grow as the point nears the budget, and that many pairs do decide it."""
    labels, ref, variant = population(300, 0.35, seed=3)
    flips = judge(labels, ref, variant, 100, 1.0).flip_rate
    near, nearer = (judge(labels, ref, variant, max_delta_f1=100, max_flip_rate=flips * k) for k in (1.5, 1.2))
    assert near.verdict == nearer.verdict == INCONCLUSIVE
    assert 300 < near.pairs_to_decide < nearer.pairs_to_decide
    big_labels, big_ref, big_variant = population(nearer.pairs_to_decide * 2, 0.35, seed=4)
    assert judge(big_labels, big_ref, big_variant, 100, flips * 1.2).verdict != INCONCLUSIVE
    at_budget = judge(labels, ref, variant, max_delta_f1=100, max_flip_rate=flips)
    assert at_budget.verdict == INCONCLUSIVE and at_budget.pairs_to_decide is None  # no count decides it


def test_disjoint_samples_give_the_same_decided_verdicts_and_intervals_cover():
    """Ten disjoint samples of 1,000 pairs of one population, for variants well within, near and far past
    the budget: every verdict that is not inconclusive is the same, and the 95 % flip-rate interval holds
    the population's flip rate (at each sample's cuts) in nearly every sample."""
    from epm_edge.evaluate.metrics import best_threshold

    labels, ref, _ = population(10_000, 0.0, seed=7)
    for noise in (0.05, 0.4, 3.0):
        _, _, variant = population(10_000, noise, seed=7)
        verdicts, covered = set(), 0
        for k in range(10):
            rows = slice(k * 1000, (k + 1) * 1000)
            e = judge(labels[rows], ref[rows], variant[rows], max_delta_f1=1.5, max_flip_rate=0.03)
            verdicts.add(e.verdict)
            cuts = best_threshold(labels[rows], ref[rows]), best_threshold(labels[rows], variant[rows])
            truth = np.mean((ref >= cuts[0]) != (variant >= cuts[1]))
            covered += e.flip_rate_low <= truth <= e.flip_rate_high
        assert len(verdicts - {INCONCLUSIVE}) <= 1, (noise, verdicts)
        assert covered >= 8, (noise, covered)


def _pair_set(root, n_pairs: int):
    root.mkdir()
    with open(root / "tableA.csv", "w", newline="") as fa, open(root / "tableB.csv", "w", newline="") as fb:
        for f in (fa, fb):
            w = csv.writer(f)
            w.writerow(["id", "title"])
            w.writerows([i, f"item {i}"] for i in range(n_pairs))
    with open(root / "valid.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ltable_id", "rtable_id", "label"])
        w.writerows([i, i, i % 2] for i in range(n_pairs))
    return root


def test_verification_samples_are_even_seeded_and_disjoint(tmp_path):
    from epm_edge.data import load_pair_set
    from epm_edge.data.pairs import spread_sample
    from epm_edge.errors import InputError

    sets = [load_pair_set(_pair_set(tmp_path / name, n)) for name, n in (("big", 100), ("small", 30))]

    def drawn(sample):
        return {(ps.name, a) for ps, p in spread_sample(sets, "valid", 40, sample) for a in p.a_ids}

    first, again, second, third = drawn(1), drawn(1), drawn(2), drawn(3)
    assert first == again  # a fixed seed
    assert sum(name == "big" for name, _ in first) == sum(name == "small" for name, _ in first) == 20
    assert not first & second and not first & third and not second & third
    assert sum(name == "small" for name, _ in second) == 10  # the small set gives what it has left
    assert {name for name, _ in third} == {"big"}  # and then nothing
    assert {a for name, a in first if name == "big"} != {str(i) for i in range(20)}  # drawn, not the head
    with pytest.raises(InputError, match="no valid pairs left for sample 6"):
        spread_sample(sets, "valid", 40, 6)
