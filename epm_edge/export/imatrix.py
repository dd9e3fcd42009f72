"""Importance matrix for low-bit GGUF types, computed from the matcher's own prompts.

llama.cpp's quantizers weight the rounding error of each weight column by how large that column's
inputs are: the mean of x^2 over calibration tokens, per input of every block's matrix multiplication. The
representative text for a product matcher is its own prompts, so the matrix is computed with the merged
fp32 model in transformers on training pairs rendered exactly as the scorers render them (both record
orders), and written in llama-imatrix's GGUF format (`<tensor>.in_sum2`, `<tensor>.counts`,
`imatrix.*` keys), which `llama-quantize --imatrix` reads as well as `quantize.quantize` here.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from epm_edge.errors import ModelError

# Architectures whose module names gguf's tensor map knows (as the GGUF converter does).
ARCHS = {"LlamaForCausalLM": gguf.MODEL_ARCH.LLAMA}
FILE_NAME = "imatrix.gguf"  # in an export's gguf/ dir, beside the models quantized with it
SUM2, COUNTS = ".in_sum2", ".counts"
PROVENANCE_KEY = "imatrix.sha256"  # epm.imatrix.sha256 in a GGUF quantized with a matrix: the file's digest


def calibration_pairs(dirs: list[Path], split: str, n_pairs: int, record_tokens: int) -> tuple[list, list[str]]:
    """(serialized pairs, alternating A/B and B/A, names of the sets and split) for the imatrix."""
    from epm_edge.data import load_pair_set
    from epm_edge.data.pairs import spread_sample
    from epm_edge.evaluate.scoring import serialize_pairs

    texts, names = [], []
    for ps, pairs in spread_sample([load_pair_set(d) for d in dirs], split, n_pairs):
        texts += serialize_pairs(ps, pairs, record_tokens)
        names.append(f"{ps.name}/{split}")
    return [(a, b) if i % 2 == 0 else (b, a) for i, (a, b) in enumerate(texts)], names


def _gguf_names(model) -> dict[str, str]:
    """HF Linear module name -> the GGUF weight it becomes, for the transformer blocks' weights only, as
    llama-imatrix collects by default: the output layer is left out (with tied embeddings it is the token
    embedding, whose rows are also looked up as inputs, where an output-side weighting does not apply)."""
    import torch

    config = model.config
    arch = (config.architectures or ["?"])[0]
    if arch not in ARCHS:
        raise ModelError(f"importance matrix: architecture {arch} is not supported ({', '.join(ARCHS)})")
    names = gguf.get_tensor_name_map(ARCHS[arch], config.num_hidden_layers)
    found = {}
    for module_name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or module_name == "lm_head":
            continue
        name = names.get_name(f"{module_name}.weight", try_suffixes=(".weight",))
        if name is None or not name.startswith("blk."):
            raise ModelError(f"importance matrix: no GGUF block weight for {module_name}")
        found[module_name] = name
    return found


def compute(hf_dir: Path, pairs: list[tuple[str, str]], threads: int | None = None,
            on_pair=None) -> dict[str, tuple[np.ndarray, int]]:
    """{GGUF weight name: (sum of x^2 per input column, tokens seen)} over the prompts of `pairs`, one at a
    time (no padding enters the sums)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from epm_edge.runtime.chat_template import dir_chat_format
    from epm_edge.runtime.hf import pair_ids

    if threads:
        torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    fmt = dir_chat_format(hf_dir)
    prefix = tokenizer(fmt.prefix, add_special_tokens=False)["input_ids"]
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name):
        def collect(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            sums[name] = sums[name] + (x * x).sum(0) if name in sums else (x * x).sum(0)
            counts[name] = counts.get(name, 0) + x.shape[0]
        return collect

    targets = _gguf_names(model)
    handles = [module.register_forward_pre_hook(hook(targets[n]))
               for n, module in model.named_modules() if n in targets]
    try:
        with torch.inference_mode():
            for a, b in pairs:
                model(input_ids=torch.tensor([prefix + pair_ids(tokenizer, fmt, a, b)]), use_cache=False)
                if on_pair:
                    on_pair()
    finally:
        for h in handles:
            h.remove()
    return {name: (sums[name].numpy(), counts[name]) for name in sorted(sums)}


def write(path: Path, stats: dict[str, tuple[np.ndarray, int]], datasets: list[str], n_prompts: int) -> Path:
    """Write `stats` in llama-imatrix's GGUF layout (one matrix per tensor, no experts)."""
    w = gguf.GGUFWriter(str(path), arch=None)
    w.add_type("imatrix")
    w.add_array("imatrix.datasets", datasets)
    w.add_uint32("imatrix.chunk_count", n_prompts)  # a prompt is one chunk: each is run on its own
    w.add_uint32("imatrix.chunk_size", max(1, round(max(c for _, c in stats.values()) / max(n_prompts, 1))))
    for name, (sum2, count) in stats.items():
        w.add_tensor(name + SUM2, sum2.astype(np.float32).reshape(1, -1))
        w.add_tensor(name + COUNTS, np.array([[count]], dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def load(path: Path) -> dict[str, np.ndarray]:
    """{tensor name: mean x^2 per input column}, as llama-quantize derives it from the file."""
    try:
        reader = gguf.GGUFReader(path)
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: not a readable importance matrix ({e})") from None
    tensors = {t.name: np.array(t.data, dtype=np.float32) for t in reader.tensors}
    means = {}
    for name, sum2 in tensors.items():
        if not name.endswith(SUM2):
            continue
        base = name[: -len(SUM2)]
        count = tensors.get(base + COUNTS)
        if count is None or count.size != 1:
            raise ModelError(f"{path}: {base} has no single count (expert matrices are not supported)")
        means[base] = sum2.reshape(-1) / count.item() if count.item() > 0 else np.ones(sum2.size, np.float32)
    if not means:
        raise ModelError(f"{path}: no importance matrix entries ({SUM2} tensors)")
    return means
