"""The feature matcher: a LightGBM classifier on pair features, stored in LightGBM's own text format.

Its files live in a `features/` dir next to the adapter they serve:

    matcher.txt    the booster (LightGBM text model: no pickle, readable, diffable)
    matcher.json   feature names, training settings, data hashes and its own test figures
    cascade.json   routing cuts and fusion with the LLM (cascade.py), written by `train cascade`
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from epm_edge.errors import ModelError
from epm_edge.features.pairs import NAMES, SWAP

MODEL_FILE = "matcher.txt"
INFO_FILE = "matcher.json"
# Small trees, many rounds, early stopping on valid: the train splits hold ~25k pairs.
PARAMS = {"objective": "binary", "learning_rate": 0.05, "num_leaves": 31, "min_data_in_leaf": 20,
          "feature_fraction": 0.8, "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 1.0,
          "verbose": -1, "num_threads": 0, "deterministic": True, "seed": 1}


def read_json(path: Path, how_to_make: str) -> dict:
    """A JSON object file of a feature stage; missing or broken is a ModelError naming it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path}: missing ({how_to_make})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return data


@dataclass
class FeatureMatcher:
    booster: object  # lightgbm.Booster
    info: dict
    path: Path

    def predict(self, features: np.ndarray) -> np.ndarray:
        """P(match) per row of a features matrix (columns as pairs.NAMES): the mean log-odds of the pair
        as given and with its records swapped, so a pair's probability does not depend on which
        catalog is A."""
        raw = [self.booster.predict(x, num_threads=0, raw_score=True) for x in (features, features[:, SWAP])]
        p = 1 / (1 + np.exp(-np.mean(raw, axis=0, dtype=np.float64)))
        if not np.all(np.isfinite(p)):
            raise ModelError(f"{self.path / MODEL_FILE}: the feature model gave non-finite probabilities")
        return p

    def save(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        _atomic_write(out / MODEL_FILE, self.booster.model_to_string())
        _atomic_write(out / INFO_FILE, json.dumps(self.info, indent=2) + "\n")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def load_matcher(directory: str | Path) -> FeatureMatcher:
    """Load a feature matcher dir; a missing, truncated or foreign file is a ModelError naming it."""
    import lightgbm as lgb

    directory = Path(directory)
    info = read_json(directory / INFO_FILE, "train it with `epm-edge train features`")
    model_path = directory / MODEL_FILE
    if not model_path.is_file():
        raise ModelError(f"{model_path}: missing (train it with `epm-edge train features`)")
    try:
        booster = lgb.Booster(model_str=model_path.read_text(encoding="utf-8"))
    except (lgb.basic.LightGBMError, UnicodeDecodeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{model_path}: not a LightGBM text model ({first})") from None
    if booster.num_feature() != len(NAMES) or info.get("features") != list(NAMES):
        raise ModelError(f"{model_path}: built for other features ({booster.num_feature()} columns); "
                         f"retrain it with this version's `epm-edge train features`")
    return FeatureMatcher(booster, info, directory)


def train_matcher(x_train: np.ndarray, y_train: np.ndarray, x_valid: np.ndarray, y_valid: np.ndarray,
                  info: dict, rounds: int = 2000, patience: int = 100) -> FeatureMatcher:
    """Fit the booster on train, stopping when valid log-loss has not improved for `patience` rounds.
    Every pair is seen in both record orders, as `predict` scores it."""
    import lightgbm as lgb

    train = lgb.Dataset(np.concatenate([x_train, x_train[:, SWAP]]), label=np.concatenate([y_train, y_train]),
                        feature_name=list(NAMES), free_raw_data=False)
    valid = lgb.Dataset(np.concatenate([x_valid, x_valid[:, SWAP]]), label=np.concatenate([y_valid, y_valid]),
                        reference=train)
    booster = lgb.train(PARAMS, train, num_boost_round=rounds, valid_sets=[valid],
                        callbacks=[lgb.early_stopping(patience, verbose=False)])
    gain = booster.feature_importance("gain")
    top = sorted(zip(NAMES, gain), key=lambda t: -t[1])[:10]
    info = {**info, "features": list(NAMES), "params": PARAMS, "rounds": booster.best_iteration,
            "top_features_by_gain": {n: round(float(g), 1) for n, g in top if not math.isnan(g)}}
    return FeatureMatcher(booster, info, Path("."))
