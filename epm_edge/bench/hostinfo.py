"""Machine and software facts for the report header: a timing means little without them."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from pathlib import Path

from epm_edge.doctor import CPU_FLAGS, cpu_info, version
from epm_edge.runtime.llamacpp import build_features

PACKAGES = ("epm-edge", "llama-cpp-python", "onnxruntime", "torch", "transformers", "bitsandbytes",
            "optimum-onnx", "scikit-learn", "numpy")


def git_commit() -> str:
    """HEAD of the checkout epm_edge runs from, '+dirty' with uncommitted changes; '-' outside git.

    Untracked files do not count: a report being written into the checkout is one.
    """
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "-"
    return head.stdout.strip() + ("+dirty" if dirty.strip() else "")


def host_facts() -> dict:
    import psutil

    model, flags = cpu_info()
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": model,
        "cpu_features": [f for f in CPU_FLAGS if f in flags],
        "cpu_flags": sorted(flags),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_bytes": psutil.virtual_memory().total,
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": {p: version(p) for p in PACKAGES},
        "llama_cpp_features": list(build_features()),
        "git_commit": git_commit(),
    }
