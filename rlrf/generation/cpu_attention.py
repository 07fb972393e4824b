"""bf16 prefill and decode attention kernels for CPUs with AVX-512 BF16 (cpu_attention.c), built on first use.

Why kernels: at bench/generate.py's setting (128 rows, 32 prompts of ~310 tokens) torch's decode
attention cost ~1.5-2.7 ms per layer in four small batched matmuls (12 or 3 query rows each) and a
dozen elementwise passes, and transformers' sdpa prefill ~60 ms per layer, while the projections and
MLP around them already run near the bf16 GEMM peak. The decode kernel makes one fused pass per
(prompt, kv head): the prompt's keys and values are read once for all its samples and the scores
stay in a thread-local buffer; the prefill kernel attends over each prompt's real positions only.
Both are ~3x torch's path per layer (bench/attention.py, figures in bench/README.md).

The C file is compiled with the system C compiler into the user's cache directory the first time
it is needed (about 2 s; keyed by the source, flags and compiler), and called through
ctypes, which releases the GIL; it uses OpenMP, sharing torch's runtime and thread count. Nothing
else needs it: without a compiler, on CPUs without AVX-512 BF16, for float32 or on GPUs, or with
``RLRF_CPU_KERNELS=0`` in the environment, decoding takes torch's path (same model, same
sampling; the two agree to bf16 rounding, tested).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_attention.c")
FLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512bf16", "-mfma", "-fopenmp",
         "-shared", "-fPIC"]
HEAD_DIMS = (64, 128)


def wanted() -> bool:
    """False when the environment opts out (``RLRF_CPU_KERNELS=0``)."""
    return os.environ.get("RLRF_CPU_KERNELS", "1").strip().lower() not in {"0", "false", "no"}


def _cpu_has_avx512_bf16() -> bool:
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    if probe is not None:
        return bool(probe())
    try:
        return "avx512_bf16" in Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return False


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "rlrf" / "kernels"


def _build(compiler: str) -> Path:
    """Compile the kernel once per (source, flags, compiler) into the cache; an atomic rename, so
    concurrent processes never load a half-written library."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode() + version.encode()).hexdigest()[:16]
    target = _cache_dir() / f"cpu_attention-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True, text=True, check=True)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


@functools.lru_cache(maxsize=1)
def load():
    """The kernels' library, or None (with the reason logged once) where it cannot run here."""
    if not wanted():
        return None
    if not _cpu_has_avx512_bf16():
        log.info("CPU attention kernels off: this CPU has no AVX-512 BF16")
        return None
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not compiler:
        log.info("CPU attention kernels off: no C compiler found to build them")
        return None
    try:
        lib = ctypes.CDLL(str(_build(compiler)))
    except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        log.warning("CPU attention kernels off: building them failed: %s", detail.strip()[-300:])
        return None
    lib.rlrf_decode_attention.restype = lib.rlrf_prefill_attention.restype = ctypes.c_int
    lib.rlrf_decode_attention.argtypes = [ctypes.c_void_p] * 8 + [ctypes.c_int] * 7 + [ctypes.c_float]
    lib.rlrf_prefill_attention.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int] * 5 + [ctypes.c_float]
    return lib


MAX_GROUP = 12  # query heads per kv head (cpu_attention.c's QK_MAX)
MAX_QUERIES = 64  # samples of one prompt in a batch x query heads per kv head


def usable(dtype: torch.dtype, device: torch.device, head_dim: int, group: int) -> bool:
    """Whether a model with this dtype, device, head size and query heads per kv head can take the
    kernels (the decode kernel also needs samples per prompt x group <= MAX_QUERIES)."""
    return (dtype == torch.bfloat16 and device.type == "cpu" and head_dim in HEAD_DIMS and 1 <= group <= MAX_GROUP
            and load() is not None)


def pair_keys(keys: torch.Tensor) -> torch.Tensor:
    """(B, Hkv, L, D) keys -> the kernel's (B, Hkv, D/2, L, 2): pairs of dimensions interleaved."""
    b, h, n, d = keys.shape
    return keys.view(b, h, n, d // 2, 2).permute(0, 1, 3, 2, 4).contiguous()


def decode_attention(query: torch.Tensor, prefix_kt, prefix_v, start, suffix_kt, suffix_v, offsets, length: int,
                     scale: float) -> torch.Tensor:
    """(R, H, 1, D) queries -> (R, 1, H, D) attention outputs; the layouts are cpu_attention.c's."""
    rows, heads, _, dim = query.shape
    n_prompts, hkv, _, lp, _ = prefix_kt.shape
    q = query.contiguous()
    out = torch.empty((rows, 1, heads, dim), dtype=query.dtype)
    status = load().rlrf_decode_attention(
        q.data_ptr(), prefix_kt.data_ptr(), prefix_v.data_ptr(), start.data_ptr(), suffix_kt.data_ptr(),
        suffix_v.data_ptr(), offsets.data_ptr(), out.data_ptr(), n_prompts, hkv, heads // hkv, dim, lp,
        suffix_v.shape[2], length, scale)
    if status != 0:
        raise RuntimeError(f"decode attention kernel refused the shapes (rows {rows}, heads {heads}, dim {dim})")
    return out


def prefill_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, start: torch.Tensor,
                      scale: float) -> torch.Tensor:
    """Causal attention of left-padded prompts: (B, H, L, D) queries, (B, Hkv, L, D) keys and values,
    `start` (B,) the first real position of each -> (B, L, H, D) outputs (zero at padded positions)."""
    batch, heads, length, dim = query.shape
    hkv = key.shape[1]
    q, kt, v = query.contiguous(), pair_keys(key), value.contiguous()
    start = start.to(torch.int64).contiguous()
    out = torch.empty((batch, length, heads, dim), dtype=query.dtype)
    status = load().rlrf_prefill_attention(q.data_ptr(), kt.data_ptr(), v.data_ptr(), start.data_ptr(), out.data_ptr(),
                                           batch, hkv, heads // hkv, dim, length, scale)
    if status != 0:
        raise RuntimeError(f"prefill attention kernel refused the shapes (heads {heads}, kv heads {hkv}, dim {dim})")
    return out
