"""A model's stored decision cuts: the one place their keys are spelled.

Two kinds of holder:
- a model file (GGUF metadata `epm.*`, an ONNX or HF dir's sidecar): its own one-order cut and its
  cut for both record orders;
- a trained adapter dir's sidecar: a cut per GGUF type it runs as, for each way of scoring, and
  what the latest one-order cut was tuned on;
- a GGUF LoRA applied at run time: a model file's keys for each type of base it was verified on
  (`base.<TYPE>.threshold`), since one adapter may serve on several bases.
Cuts belong to the weights they were tuned on: whatever derives new weights drops them all.
"""

from __future__ import annotations

ONE_ORDER, BOTH_ORDERS = "threshold", "threshold_both_orders"  # a model file's cuts
PER_TYPE = {False: "thresholds", True: "thresholds_both_orders"}  # an adapter's cuts per GGUF type
TUNED_ON = "threshold_tuned_on"
ALL_KEYS = (ONE_ORDER, BOTH_ORDERS, *PER_TYPE.values(), TUNED_ON)


def file_cuts(one_order: float | None, both_orders: float | None) -> dict[str, float]:
    """The keys a model file stores its cuts under (a cut not known is left out)."""
    found = {ONE_ORDER: one_order, BOTH_ORDERS: both_orders}
    return {k: float(v) for k, v in found.items() if v is not None}


def one_order_cut(metadata: dict) -> float | None:
    """A model file's one-order cut, if stored."""
    cut = metadata.get(ONE_ORDER)
    return float(cut) if cut is not None else None


def cut_for(metadata: dict, both_orders: bool) -> float | None:
    """A model file's cut for this way of scoring; the one-order cut stands in where none was tuned
    on both orders."""
    cut = metadata.get(BOTH_ORDERS) if both_orders else None
    return float(cut) if cut is not None else one_order_cut(metadata)


def has_both_orders_cut(metadata: dict) -> bool:
    return metadata.get(BOTH_ORDERS) is not None


def adapter_file_cuts(sidecar: dict, quant: str) -> dict[str, float]:
    """The cuts an adapter's GGUF of type `quant` carries: this type's one-order cut, else the
    adapter's latest one (quantization shifts scores, 4-bit more than 8-bit), and this type's cut for
    both orders where tuned."""
    return file_cuts(sidecar.get(PER_TYPE[False], {}).get(quant, sidecar.get(ONE_ORDER)),
                     sidecar.get(PER_TYPE[True], {}).get(quant))


def with_adapter_cut(sidecar: dict, quant: str, cut: float, both_orders: bool, tuned_on: str) -> dict:
    """The adapter sidecar with `cut` stored for GGUF type `quant` and this way of scoring; a one-order
    cut also becomes the adapter's latest, the stand-in for types that have none."""
    key = PER_TYPE[both_orders]
    stored = {key: {**sidecar.get(key, {}), quant: cut}}
    if not both_orders:
        stored.update({ONE_ORDER: cut, TUNED_ON: tuned_on})
    return {**sidecar, **stored}


def lora_keys(base_type: str, keys: dict) -> dict:
    """`keys` (a model file's cuts and verification scores) as a GGUF LoRA stores them for bases of type `base_type`."""
    return {f"base.{base_type}.{k}": v for k, v in keys.items()}


def lora_metadata(base: dict, adapter: dict, base_type: str | None) -> dict:
    """A base model file's keys with a GGUF LoRA applied: the base's provenance (its own cuts and
    verification scores do not hold for base + adapter), the adapter's, and what the adapter stores for
    bases of type `base_type` (none where the type is not known)."""
    prefix = f"base.{base_type}."
    own_base = {k: v for k, v in without_cuts(base).items() if not k.startswith("verify.")}
    own_adapter = {k: v for k, v in adapter.items() if not k.startswith("base.")}
    for_type = {k[len(prefix):]: v for k, v in adapter.items() if base_type and k.startswith(prefix)}
    return {**own_base, **own_adapter, **for_type}


def without_cuts(sidecar: dict) -> dict:
    """The sidecar for new weights derived from these: no cut of the old ones carries over."""
    return {k: v for k, v in sidecar.items() if k not in ALL_KEYS}
