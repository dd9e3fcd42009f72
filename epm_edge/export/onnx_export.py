"""HF checkpoint -> ONNX (optimum, `text-generation-with-past`) -> ONNX Runtime int8 / int4.

Scoring needs one logit row per pair, so after the optimum export only the last position goes
through lm_head (`logits` is [batch, 1, vocab]), saving the [batch, seq, 49152] matmul.

The tied embedding / lm_head: the export stores it twice (the embedding for Gather, a constant
transposed copy for the lm_head MatMul; 652 MB fp32 for SmolLM2-135M). int8 quantizes both. int4
quantizes the lm_head with MatMulNBits and the Gather block-wise with the same blocks and
scales, so both hold the same 4-bit values; the Gather is then pointed at the lm_head's packed
weight and one copy is dropped (103 -> 85 MB for SmolLM2, bit-identical outputs).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from epm_edge.errors import ModelError

MODEL_FILE = "model.onnx"
# int8: quantize_dynamic (int8 weights per channel, activations per tensor at run time: the
# fastest, but SmolLM2's activation outliers cost accuracy). int8-block: weights in blocks of 32
# with activations quantized per block at run time (MatMulNBits accuracy level 4), the scheme
# of llama.cpp's Q8_0: ~5x smaller |dP| than int8 for ~1.6x the time. int4: the same at 4 bits.
ONNX_QUANTS = ("fp32", "int8", "int8-block", "int4")
# Files a variant dir needs besides the graph: tokenizer and chat template for the scorer, config for inspection.
_COPY = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def check_quant(quant: str) -> str:
    if quant.lower() not in ONNX_QUANTS:
        raise ModelError(f"unknown ONNX quant type '{quant}' (choose from {', '.join(ONNX_QUANTS)})")
    return quant.lower()


def export_fp32(hf_dir: Path, out_dir: Path) -> Path:
    from optimum.exporters.onnx import main_export

    raw = out_dir.with_name(out_dir.name + ".raw")
    main_export(str(hf_dir), output=raw, task="text-generation-with-past", device="cpu",
                do_validation=False, no_post_process=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = _load(raw / MODEL_FILE)
    _last_position_logits(model)
    _save(model, out_dir / MODEL_FILE)
    _copy_files(hf_dir, out_dir)
    shutil.rmtree(raw)
    return out_dir


def quantize(fp32_dir: Path, out_dir: Path, quant: str, block_size: int = 32) -> Path:
    quant = check_quant(quant)
    out_dir.mkdir(parents=True, exist_ok=True)
    src, dst = fp32_dir / MODEL_FILE, out_dir / MODEL_FILE
    if quant == "fp32":
        shutil.copyfile(src, dst)
    elif quant == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # Signed int8 weights with per-channel scales (MatMulInteger, VNNI on this CPU).
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Gather"])
    else:
        _block_wise(src, dst, 8 if quant == "int8-block" else 4, block_size)
    _copy_files(fp32_dir, out_dir)
    return out_dir


def _block_wise(src: Path, dst: Path, bits: int, block_size: int) -> None:
    import logging

    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer
    from onnxruntime.quantization.quant_utils import QuantFormat

    # The quantizer logs every node at INFO (it configures logging on import): warnings at most,
    # and none when onnxruntime is quieted (console.quiet_third_party).
    logger = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    logger.setLevel(max(logging.WARNING, logging.getLogger("onnxruntime").getEffectiveLevel()))

    # The embedding Gather is quantized too, along the hidden axis (GatherBlockQuantized); the
    # quantizer only does that at 4 bits, so 8 bits gets its own pass.
    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, accuracy_level=4,
                                          quant_format=QuantFormat.QOperator, bits=bits,
                                          op_types_to_quantize=("MatMul", "Gather") if bits == 4 else ("MatMul",),
                                          quant_axes=(("MatMul", 0), ("Gather", 1)))
    q = MatMulNBitsQuantizer(_load(src), algo_config=config)
    q.process()
    model = q.model.model
    if bits == 4:
        _share_int4_embedding(model)
    else:
        _gather_q8(model, block_size)
    _save(model, dst)


def _gather_q8(model, block_size: int) -> None:
    """Embedding Gather -> GatherBlockQuantized with uint8 blocks (zero point 128) along hidden."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    for node in [n for n in graph.node if n.op_type == "Gather" and n.input[0] in inits]:
        weight = numpy_helper.to_array(inits[node.input[0]])
        if weight.ndim != 2 or weight.shape[1] % block_size:
            continue
        blocks = weight.reshape(weight.shape[0], -1, block_size)
        scales = np.abs(blocks).max(axis=-1) / 127
        scales[scales == 0] = 1
        q = (np.round(blocks / scales[..., None]) + 128).clip(0, 255).astype(np.uint8).reshape(weight.shape)
        name = node.input[0]
        graph.initializer.remove(inits[name])
        graph.initializer.extend([numpy_helper.from_array(q, name + "_q8"),
                                  numpy_helper.from_array(scales.astype(np.float32), name + "_scales")])
        index = list(graph.node).index(node)
        graph.node.remove(node)
        graph.node.insert(index, helper.make_node(
            "GatherBlockQuantized", [name + "_q8", node.input[1], name + "_scales"], list(node.output),
            name=node.name + "_q8", domain="com.microsoft", gather_axis=0, quantize_axis=1,
            block_size=block_size, bits=8))
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def _share_int4_embedding(model) -> None:
    """Read the embedding from the lm_head's 4-bit weight when both hold the same values.

    MatMulNBits stores [vocab, blocks, 16] bytes of unsigned nibbles (zero point 8); the quantized
    Gather stores signed INT4 [vocab, hidden], the same values offset by 8 in each nibble (XOR 0x88).
    GatherBlockQuantized also accepts uint8 data with bits=4 and the same implicit zero point 8.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    lm_head = next(n for n in graph.node if "logits" in n.output)
    gathers = [n for n in graph.node if n.op_type == "GatherBlockQuantized" and n.input[0] in inits]
    if lm_head.op_type != "MatMulNBits" or len(gathers) != 1:
        return
    gather = gathers[0]
    packed, scales = inits[lm_head.input[1]], inits[lm_head.input[2]]
    data, data_scales = inits[gather.input[0]], inits[gather.input[2]]
    lm_bytes = np.frombuffer(packed.raw_data, np.uint8)
    emb_bytes = np.frombuffer(data.raw_data, np.uint8) ^ 0x88
    # The two quantizers round in a different float order, so a rare weight on a rounding edge
    # can land one step apart (2 of 3 M in a test model, none in SmolLM2): still the same values.
    same = (lm_bytes.shape == emb_bytes.shape
            and np.array_equal(numpy_helper.to_array(scales), numpy_helper.to_array(data_scales))
            and np.mean(lm_bytes != emb_bytes) < 1e-4)
    if not same:
        return
    graph.initializer.remove(data)
    graph.initializer.remove(data_scales)
    graph.initializer.append(numpy_helper.from_array(np.array([packed.dims[0], -1], np.int64), "epm_vocab_rows"))
    graph.node.insert(list(graph.node).index(gather),
                      helper.make_node("Reshape", [packed.name, "epm_vocab_rows"], ["epm_embedding_q4"],
                                       name="epm_shared_embedding"))
    gather.input[0], gather.input[2] = "epm_embedding_q4", scales.name
    gather.attribute.append(helper.make_attribute("bits", 4))


def _load(path: Path):
    import onnx

    return onnx.load(str(path))


def _save(model, path: Path) -> None:
    import onnx

    onnx.save_model(model, str(path))


def _copy_files(src_dir: Path, dst_dir: Path) -> None:
    for name in _COPY:
        if (src_dir / name).exists():
            shutil.copyfile(src_dir / name, dst_dir / name)


def _lm_head(graph):
    """The MatMul node that produces the `logits` output."""
    producer = {o: n for n in graph.node for o in n.output}
    node = producer.get("logits")
    if node is None or node.op_type != "MatMul":
        raise ModelError("unexpected ONNX export: `logits` is not produced by a MatMul (lm_head)")
    return node, producer


def _last_position_logits(model) -> None:
    """Insert Slice(hidden, [-1:], axis 1) before lm_head; declare logits as [batch, 1, vocab]."""
    from onnx import helper, numpy_helper

    graph = model.graph
    node, _ = _lm_head(graph)
    hidden = node.input[0]
    consts = {"epm_last_start": -1, "epm_last_end": np.iinfo(np.int64).max, "epm_last_axis": 1}
    for name, value in consts.items():
        graph.initializer.append(numpy_helper.from_array(np.array([value], dtype=np.int64), name))
    sliced = hidden + "_last"
    index = list(graph.node).index(node)
    graph.node.insert(index, helper.make_node("Slice", [hidden, *consts], [sliced], name="epm_last_position"))
    node.input[0] = sliced
    logits = next(o for o in graph.output if o.name == "logits")
    dim = logits.type.tensor_type.shape.dim[1]
    dim.ClearField("dim_param")
    dim.dim_value = 1


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())
