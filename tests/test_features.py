"""The feature stage: pair features on hand-made records, the LightGBM matcher's text format, the
router's cuts, the fused score, and the cascade through match and eval with the shipped model."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from epm_edge.errors import ModelError
from epm_edge.features.cascade import (LLM_OWN, Cascade, CascadeSettings, fuse, load_cascade, logit, routing_cuts,
                                       save_cascade)
from epm_edge.features.matcher import load_matcher, train_matcher
from epm_edge.features.pairs import NAMES, SWAP, PairFeaturizer

from conftest import EXAMPLES, ROOT

SHIPPED_FEATURES = ROOT / "models" / "epm-smollm2-135m" / "features"


def features_of(a: dict, b: dict) -> dict:
    f = PairFeaturizer({"a": a}, {"b": b}).features(["a"], ["b"])[0]
    return dict(zip(NAMES, f.tolist()))


def test_codes_agree_across_case_dashes_and_spaces_and_conflict_on_one_character():
    same = features_of({"title": "Sony WH-1000XM5 Wireless Headphones"}, {"title": "sony wh 1000xm5 headset black"})
    assert same["code_shared"] >= 1 and same["code_conflict"] == 0 and same["code_missing"] == 0
    other = features_of({"title": "Sony WH-1000XM5 Wireless Headphones"}, {"title": "Sony WH-1000XM4 Headphones"})
    assert other["code_shared"] == 0 and other["code_conflict"] == 1
    assert 0.8 < other["code_best_similarity"] < 1.0
    none = features_of({"title": "red cotton t-shirt"}, {"title": "blue cotton t-shirt"})
    assert none["code_missing"] == 2 and np.isnan(none["code_best_similarity"])
    # a code only in the other record's description still counts as found there
    found = features_of({"title": "canon ink pfi-107c"}, {"title": "canon cyan ink", "description": "fits PFI107C"})
    assert found["code_missing"] == 1 and found["code_in_other_text"] == 1


def test_numbers_with_units_written_differently():
    agree = features_of({"title": "Samsung T7 SSD 1TB USB-C"}, {"title": "samsung t7 portable ssd 1000 gb"})
    assert agree["unit_agree"] == 1 and agree["unit_conflict"] == 0
    conflict = features_of({"title": "Samsung T7 SSD 500GB"}, {"title": "Samsung T7 SSD 1 TB"})
    assert conflict["unit_agree"] == 0 and conflict["unit_conflict"] == 1
    cm = features_of({"title": "HDMI cable 2m"}, {"title": "HDMI cable 200 cm"})
    assert cm["unit_agree"] == 1
    packs = features_of({"title": "AA batteries 4-pack"}, {"title": "AA batteries pack of 4"})
    assert packs["unit_agree"] == 1 and packs["pack_conflict"] == 0
    assert features_of({"title": "AA batteries 4 pack"}, {"title": "AA batteries x8"})["pack_conflict"] == 1
    one_side = features_of({"title": "Anker charger 65W"}, {"title": "Anker charger"})
    assert one_side["unit_one_side"] == 1 and one_side["unit_conflict"] == 0
    numbers = features_of({"title": "canon eos 250d"}, {"title": "canon eos 2000d"})
    assert numbers["numbers_jaccard"] == 0 or np.isnan(numbers["numbers_jaccard"])


def test_brand_price_and_empty_attributes():
    f = features_of({"title": "WH-1000XM5", "brand": "Sony", "price": "$349.99"},
                    {"name": "sony wh1000xm5", "manufacturer": "SONY", "price": "299,99", "description": ""})
    assert f["brand_equal"] == 1 and f["brand_in_other_title"] == 1
    assert f["price_ratio"] == pytest.approx(299.99 / 349.99, rel=1e-4)
    assert f["a_has_brand"] == f["b_has_brand"] == 1 and f["a_has_description"] == f["b_has_description"] == 0
    assert f["a_has_price"] == 1 and f["a_fields"] == 3 and f["b_fields"] == 3
    missing = features_of({"title": "WH-1000XM5"}, {"title": "wh1000xm5", "brand": "bose"})
    assert np.isnan(missing["brand_equal"]) and np.isnan(missing["price_ratio"]) and missing["a_has_brand"] == 0
    assert features_of({"title": "Sony X"}, {"title": "Bose X", "brand": "bose"})["brand_in_other_title"] == 0
    assert features_of({"title": "Bose QC45"}, {"title": "QC45", "brand": "bose"})["brand_in_other_title"] == 1


def test_similarities_rank_a_true_pair_above_a_near_miss():
    a = {"title": "apple iphone 15 pro 256gb natural titanium"}
    f = PairFeaturizer({"a": a}, {"same": {"title": "Apple iPhone 15 Pro (256 GB) - Natural Titanium"},
                                  "other": {"title": "samsung galaxy s24 ultra 512gb"}})
    x = dict(zip(NAMES, f.features(["a", "a"], ["same", "other"]).T))
    for name in ("title_token_set", "title_token_sort", "tfidf_word", "tfidf_char", "text_token_set"):
        assert x[name][0] > x[name][1], name


def test_empty_catalogs_text_gives_nan_cosines_not_an_error():
    f = PairFeaturizer({"a": {"title": "--"}}, {"b": {"title": "!!"}}).features(["a"], ["b"])[0]
    assert np.isnan(f[NAMES.index("tfidf_word")])


def _toy_matcher(tmp_path, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(400, len(NAMES))).astype(np.float32)
    y = (x[:, NAMES.index("title_token_set")] + 0.3 * rng.normal(size=400) > 0).astype(int)
    m = train_matcher(x[:300], y[:300], x[300:], y[300:], {"note": "toy"}, rounds=50, patience=10)
    m.info["threshold"] = 0.5
    m.save(tmp_path)
    return x, m


def test_matcher_round_trips_through_its_text_format(tmp_path):
    x, m = _toy_matcher(tmp_path)
    assert (tmp_path / "matcher.txt").read_text().startswith("tree")  # LightGBM's text model, no pickle
    loaded = load_matcher(tmp_path)
    assert np.allclose(loaded.predict(x), m.predict(x), atol=1e-12)
    assert loaded.info["features"] == list(NAMES) and loaded.info["note"] == "toy"


@pytest.mark.parametrize("breakage", ["truncated", "garbage", "other_features", "no_info"])
def test_broken_feature_model_files_are_clear_errors(tmp_path, breakage):
    _toy_matcher(tmp_path)
    model, info = tmp_path / "matcher.txt", tmp_path / "matcher.json"
    if breakage == "truncated":
        model.write_text(model.read_text()[:300])
    elif breakage == "garbage":
        model.write_bytes(b"\x00\xff not a model")
    elif breakage == "other_features":
        data = json.loads(info.read_text())
        info.write_text(json.dumps({**data, "features": data["features"][:-1]}))
    else:
        info.unlink()
    with pytest.raises(ModelError, match=str(tmp_path)):
        load_matcher(tmp_path)


def _settings(**kw):
    base = dict(low=0.1, high=0.9, orders=1, coef=(0.2, 1.5, 0.7), threshold=0.5, llm={}, fitted_on={})
    return CascadeSettings(**{**base, **kw})


def test_router_honours_its_cuts_and_the_fused_score_is_the_formula(tmp_path):
    _, m = _toy_matcher(tmp_path)
    c = Cascade(m, _settings(), tmp_path)
    p = np.array([0.0, 0.0999, 0.1, 0.5, 0.8999, 0.9, 1.0])
    assert c.to_llm(p).tolist() == [False, False, True, True, True, False, False]
    p_feat, p_llm = np.array([0.2, 0.6]), np.array([0.7, 0.1])
    expect = 1 / (1 + np.exp(-(0.2 + 1.5 * np.log(p_llm / (1 - p_llm)) + 0.7 * np.log(p_feat / (1 - p_feat)))))
    assert np.allclose(c.fuse(p_feat, p_llm), expect)
    assert np.allclose(logit(0.5), 0.0)


def test_cascade_settings_round_trip_and_refuse_bad_files(tmp_path):
    _toy_matcher(tmp_path)
    s = _settings(orders=2, fitted_on={"pairs": 10})
    save_cascade(s, tmp_path)
    assert load_cascade(tmp_path).settings == s
    path = tmp_path / "cascade.json"
    for bad in ('{"version": 1, "low": 0.9, "high": 0.1, "orders": 1, "coef": [0, 1, 1], "threshold": 0.5, '
                '"llm": {}, "fitted_on": {}}', '{"version": 99}', '{"version": 1, "low": 0.1}', "[1, 2", "[]"):
        path.write_text(bad)
        with pytest.raises(ModelError, match="cascade.json"):
            load_cascade(tmp_path)


def test_routing_cuts_are_the_widest_within_budget():
    rng = np.random.default_rng(3)
    for trial in range(20):
        n = int(rng.integers(20, 60))
        p = np.round(rng.random(n), 2)  # ties on purpose
        llm = rng.random(n) < p
        budget = float(rng.choice([0.0, 0.05, 0.1]))
        low, high, cost = routing_cuts(p, llm, budget)
        settled_no, settled_yes = p < low, p >= high
        assert cost == int((llm & settled_no).sum() + (~llm & settled_yes).sum()) <= int(budget * n)
        # brute force over every pair of cut values: none settles more pairs within the budget
        cuts = np.r_[0.0, np.unique(p), 1.0 + 1e-9]
        best = max((int((p < lo).sum() + (p >= hi).sum()) for lo in cuts for hi in cuts if lo <= hi
                    if int((llm & (p < lo)).sum() + (~llm & (p >= hi)).sum()) <= int(budget * n)))
        assert int(settled_no.sum() + settled_yes.sum()) == best, trial


def test_fuse_is_monotone_in_both_inputs():
    coef = (0.0, 1.0, 0.5)
    assert fuse(coef, 0.2, 0.9) > fuse(coef, 0.2, 0.5) and fuse(coef, 0.4, 0.5) > fuse(coef, 0.2, 0.5)


def test_features_of_a_swapped_pair_are_its_columns_swapped():
    a = {"1": {"title": "Sony WH-1000XM5 headphones 2-pack", "brand": "sony", "price": "349"},
         "2": {"title": "bose qc45", "description": "noise cancelling 20 h"}}
    b = {"x": {"name": "sony wh1000xm4 black", "price": "$299.00"}, "y": {"title": "Bose QuietComfort 45 QC45"}}
    ab = PairFeaturizer(a, b).features(["1", "1", "2", "2"], ["x", "y", "x", "y"])
    ba = PairFeaturizer(b, a).features(["x", "y", "x", "y"], ["1", "1", "2", "2"])
    assert np.allclose(ab[:, SWAP], ba, equal_nan=True, atol=1e-6)
    assert not np.allclose(ab, ba, equal_nan=True)  # the swap matters: some columns are one-sided


def test_matcher_probability_does_not_depend_on_record_order(tmp_path):
    x, m = _toy_matcher(tmp_path)
    assert np.allclose(m.predict(x), m.predict(x[:, SWAP]), atol=1e-12)


def _match(out, *extra):
    cmd = [sys.executable, "-m", "epm_edge", "match", str(EXAMPLES / "retailer.csv"), str(EXAMPLES / "marketplace.csv"),
           "--top-k", "2", "-o", str(out), *extra]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with open(out, newline="") as f:
        return {(x["a_id"], x["b_id"]): x for x in csv.DictReader(f)}, r.stderr


@pytest.mark.slow
def test_match_cascade_routes_by_its_cuts_and_fuses_the_llm_score(tmp_path):
    """The shipped model's cascade, end to end: settled rows carry the feature probability beyond a
    cut, the others the fusion of that probability with the LLM's score of the pair, scored here in the
    same batches as match sends them (a pair's score moves a little with its batch company)."""
    from epm_edge.data import read_catalog
    from epm_edge.match.blocking import candidates
    from epm_edge.match.run import serialized
    from epm_edge.resolve import default_model
    from epm_edge.runtime import load_scorer
    from epm_edge.runtime.orders import BothOrders

    cascade = load_cascade(SHIPPED_FEATURES)
    on, log = _match(tmp_path / "on.csv", "--batch-size", "8")
    assert "LLM" in log
    stages = [r["stage"] for r in on.values()]
    assert "features" in stages and "llm" in stages
    a, b = read_catalog(EXAMPLES / "retailer.csv"), read_catalog(EXAMPLES / "marketplace.csv")
    cands = candidates(a, b, top_k=2)
    keys = list(zip(cands.a_ids, cands.b_ids))
    assert set(keys) == set(on)
    p_feat = cascade.matcher.predict(PairFeaturizer(a.records, b.records).features(cands.a_ids, cands.b_ids))
    routed = [k for k, p in zip(keys, p_feat) if cascade.to_llm(np.array([p]))[0]]
    sa, sb = serialized(a, 64), serialized(b, 64)
    scorer = load_scorer(default_model(), batch_size=8)
    scorer = BothOrders(scorer) if cascade.settings.orders == 2 else scorer
    llm = {}
    for lo in range(0, len(routed), 8):
        part = routed[lo:lo + 8]
        llm.update(zip(part, scorer.score([(sa[x], sb[y]) for x, y in part])))
    cut = cascade.cut(scorer.threshold)
    scorer.close()
    for k, p in zip(keys, p_feat):
        score = float(on[k]["score"])
        if k in llm:
            assert on[k]["stage"] == "llm"
            assert score == pytest.approx(float(cascade.fuse(p, llm[k])), abs=1e-4)
        else:
            assert on[k]["stage"] == "features" and score == pytest.approx(p, abs=2e-6)
        assert on[k]["match"] == str(int(score >= cut))
    off, _ = _match(tmp_path / "off.csv", "--cascade", "off")
    assert off.keys() == on.keys() and {r["stage"] for r in off.values()} == {"llm"}
    if cascade.settings.coef == LLM_OWN:  # the LLM's own score between the cuts: decided as LLM-only decides
        assert all(on[k]["match"] == off[k]["match"] for k in llm)


@pytest.mark.slow
def test_eval_cascade_modes(data_dir):
    from click.testing import CliRunner

    from epm_edge.cli import main
    from epm_edge.model_settings import BOTH_ORDERS, adapter_file_cuts
    from epm_edge.resolve import default_quant

    def run(*extra):
        r = CliRunner().invoke(main, ["eval", "--data", str(data_dir / "walmart_amazon"), "--limit", "24", "--json",
                                      *extra])
        assert r.exit_code == 0, r.output
        return json.loads(r.stdout.splitlines()[0])

    features = run("--cascade", "features-only")
    assert features["llm_share"] == 0 and features["orders"] == 0 and features["scorings"] == 0
    cascade = run()
    assert 0 < cascade["llm_share"] < 1 and cascade["backend"] == "llamacpp+features"
    assert cascade["scorings"] == round(cascade["llm_share"] * 24) * cascade["orders"]
    # the LLM's own score between the cuts keeps the LLM's own both-orders cut for the GGUF type run
    sidecar = json.loads((SHIPPED_FEATURES.parent / "epm_edge.json").read_text())
    llm_cut = adapter_file_cuts(sidecar, default_quant())[BOTH_ORDERS]
    assert cascade["threshold"] == pytest.approx(load_cascade(SHIPPED_FEATURES).cut(llm_cut))


def test_a_broken_feature_stage_is_one_line_and_exit_2(tmp_path):
    broken = tmp_path / "features"
    broken.mkdir()
    for name in ("matcher.txt", "matcher.json", "cascade.json"):
        (broken / name).write_bytes((SHIPPED_FEATURES / name).read_bytes())
    (broken / "matcher.txt").write_text("tree\nversion=v4\nnum_class=1\n")
    r = subprocess.run([sys.executable, "-m", "epm_edge", "match", str(EXAMPLES / "retailer.csv"),
                        str(EXAMPLES / "marketplace.csv"), "--cascade", str(broken)], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: {broken / 'matcher.txt'}")


def test_fit_cascade_keeps_a_way_of_scoring_that_loses_on_no_set():
    from epm_edge.features.cascade import SET_TOLERANCE, fit_cascade

    rng = np.random.default_rng(7)
    n = 600
    labels = (rng.random(n) < 0.2).astype(int)
    sets = np.array(["good"] * 300 + ["poor"] * 300)
    noisy = lambda scale: 1 / (1 + np.exp(-((labels * 2 - 1) * 1.5 + rng.normal(scale=scale, size=n))))  # noqa: E731
    ab, ba = noisy(1.5), noisy(1.5)
    p_feat = noisy(0.8)
    p_feat[sets == "poor"] = noisy(4.0)[sets == "poor"]  # the features know little about the second set
    s = fit_cascade(p_feat, ab, ba, labels, sets, llm_cut=0.5, llm={}, budget=0.02)
    table = s.fitted_on["set_f1"]
    llm_only = table.pop("llm_only")
    chosen = f"{s.orders}_order{'s' if s.orders == 2 else ''}_{'fused' if s.coef[2] else 'llm'}"
    held = {k: v for k, v in table.items() if v["holds"]} or table  # none holding: the best of all
    assert chosen in held
    if table[chosen]["holds"]:
        assert all(table[chosen][k] >= llm_only[k] - SET_TOLERANCE for k in llm_only)
    mean = {k: np.mean([v[x] for x in llm_only]) for k, v in held.items()}
    assert mean[chosen] >= max(mean.values()) - 0.005
    if not s.coef[2]:  # the LLM's own score keeps the LLM's own cut
        assert s.threshold == pytest.approx(0.5)
    assert s.fitted_on["disagreements"] <= int(0.02 * n)
