"""What a run ran with: package versions and the numerics that decide its digits.

Why a run records this: the same command on the same data gives the same digits only on the same
packages (requirements.lock, installed by scripts/setup.sh) and the same numerics. Decoding is bf16
on CPUs with AVX-512 BF16 and float32 elsewhere, rlrf's CPU kernels compute attention in float32
where torch's path rounds scores to bf16 (``RLRF_CPU_KERNELS=0`` turns them off), and a reduction's
order follows the thread count. So metrics.json and data.json carry :func:`describe`'s record, and
two runs whose numbers differ can first be compared on it.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

# The packages whose versions move rlrf's numbers (the model code, the trainers, the encoder, the
# data pipeline, the arrays under all of them).
PACKAGES = ("torch", "transformers", "peft", "trl", "sentence-transformers", "recbole", "numpy")

# CPU instruction sets that change which kernels torch (and rlrf) run, read from /proc/cpuinfo.
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")

_OFF = {"0", "false", "no"}


def versions() -> dict[str, str | None]:
    """Python's and each package's installed version (None where a package is not installed)."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def cpu_kernels_wanted() -> bool:
    """False when the environment opts out of rlrf's CPU decoding kernels (``RLRF_CPU_KERNELS=0``)."""
    return os.environ.get("RLRF_CPU_KERNELS", "1").strip().lower() not in _OFF


def cpu_flags(cpuinfo: str | None = None) -> dict[str, bool]:
    """Which of :data:`CPU_FLAGS` the CPU has (all False where /proc/cpuinfo cannot be read).

    `cpuinfo` is the text of /proc/cpuinfo; by default the file is read.
    """
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                cpuinfo = f.read()
        except OSError:
            cpuinfo = ""
    have: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            have = set(line.split(":", 1)[1].split())
            break
    return {flag: flag in have for flag in CPU_FLAGS}


def _cpu_model(cpuinfo_path: str = "/proc/cpuinfo") -> str | None:
    try:
        with open(cpuinfo_path, encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def numerics(dtype: Any = None) -> dict[str, Any]:
    """The settings that decide a run's floating-point results.

    `dtype` is the policy's torch dtype (or its name) as the run resolved it; None when the run
    loads no policy (``rlrf data``). ``cpu_kernels`` is whether the environment lets rlrf's CPU
    kernels run; they run only for bf16 on a CPU with AVX-512 BF16 and a C compiler.
    """
    import torch

    name = None if dtype is None else str(dtype).replace("torch.", "")
    return {
        "dtype": name,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu_kernels": cpu_kernels_wanted(),
        "cpu_bf16_allowed": os.environ.get("RLRF_CPU_BF16", "1").strip().lower() not in _OFF,
        "cpu": _cpu_model(),
        "cpu_flags": cpu_flags(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "machine": platform.machine(),
    }


def git_commit() -> str | None:
    """The commit of the rlrf checkout this code runs from, with ``-dirty`` when it has uncommitted
    changes (None for an installed wheel or without git): which code made a run's numbers."""
    import subprocess
    from pathlib import Path

    source = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(source), "describe", "--always", "--dirty", "--abbrev=12"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def describe(dtype: Any = None) -> dict[str, Any]:
    """``{"versions": ..., "numerics": ..., "git_commit": ...}``, JSON-ready, for a run's metrics.json /
    data.json."""
    return {"versions": versions(), "numerics": numerics(dtype), "git_commit": git_commit()}
