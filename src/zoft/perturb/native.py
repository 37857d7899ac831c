"""The counter noise's CPU kernel (``counter_kernel.c``), built at first use and cached.

The kernel needs no torch headers: it is compiled in about a second with the system C
compiler (``$CC``, else ``cc``) for this machine's processor (``-march=native``) and loaded
with ctypes. The shared object is cached under ``$ZOFT_CACHE/kernels`` (default
``~/.cache/zoft``), named by a hash of the source, the flags and the processor, so another
machine sharing the folder builds its own. Without a compiler the counter engine runs its
compiled-torch or eager path instead (same distributions); ``ZOFT_NATIVE=0`` forces that.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

import torch

from zoft.core import cache_dir

log = logging.getLogger(__name__)

GAUSSIAN, RADEMACHER = 0, 1
F32, F64 = 0, 1
DTYPE_CODES = {torch.float32: F32, torch.float64: F64}
_FLAG_SETS = (["-O3", "-march=native", "-fno-math-errno"], ["-O3", "-fno-math-errno"])

_lib: ctypes.CDLL | None = None
_tried = False


def _cpu_signature() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()


def _build(source: str, compiler: str) -> Path | None:
    folder = cache_dir() / "kernels"
    for flags in _FLAG_SETS:
        tag = hashlib.sha256("\0".join([source, compiler, *flags, platform.machine(), _cpu_signature()])
                             .encode()).hexdigest()[:16]
        target = folder / f"counter-{tag}.so"
        if target.exists():
            return target
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:  # built aside, then renamed: atomic
            src, out = Path(tmp) / "counter_kernel.c", Path(tmp) / "counter.so"
            src.write_text(source)
            cmd = [compiler, *flags, "-fPIC", "-shared", "-pthread", str(src), "-o", str(out)]
            result = subprocess.run(cmd, capture_output=True, text=True)
            if result.returncode == 0:
                os.replace(out, target)
                return target
            log.info("zoft: %s failed: %s", " ".join(cmd), result.stderr.strip()[-500:])
    return None


def _load() -> ctypes.CDLL | None:
    source = resources.files("zoft.perturb").joinpath("counter_kernel.c").read_text()
    compiler = shutil.which(os.environ.get("CC") or "cc") or shutil.which("gcc")
    if compiler is None:
        log.warning("zoft: no C compiler found ($CC, cc, gcc); the counter noise runs without its native "
                    "CPU kernel (slower, same distributions)")
        return None
    path = _build(source, compiler)
    if path is None:
        log.warning("zoft: building the counter noise's CPU kernel failed; it runs without it "
                    "(slower, same distributions)")
        return None
    lib = ctypes.CDLL(str(path))
    lib.zoft_counter_add.restype = ctypes.c_int
    lib.zoft_counter_add.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                                     ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                     ctypes.c_int]
    lib.zoft_counter_gaussian_sumsq.restype = ctypes.c_double
    lib.zoft_counter_gaussian_sumsq.argtypes = [ctypes.c_int64, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_int]
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded kernel, or None (disabled, no compiler, build failed); built once per process."""
    global _lib, _tried
    if os.environ.get("ZOFT_NATIVE", "1") == "0":
        return None
    if not _tried:
        _tried = True
        try:
            _lib = _load()
        except OSError as err:  # an unwritable cache, a library that does not load
            log.warning("zoft: the counter noise's CPU kernel is unavailable (%s)", err)
            _lib = None
    return _lib


def handles(p: torch.Tensor) -> bool:
    """Whether the kernel can update p in place: a contiguous float32/float64 CPU tensor."""
    return p.device.type == "cpu" and p.dtype in DTYPE_CODES and p.is_contiguous()


def add(lib: ctypes.CDLL, kind: int, tensors: list[torch.Tensor], k1: list[int], k2: list[int],
        alphas: list[float]) -> None:
    """tensors[t] += alphas[t] * noise(kind, key t), every tensor in one call (see ``handles``)."""
    count = len(tensors)
    ptrs = (ctypes.c_void_p * count)(*[t.data_ptr() for t in tensors])
    numels = (ctypes.c_int64 * count)(*[t.numel() for t in tensors])
    dtypes = (ctypes.c_int32 * count)(*[DTYPE_CODES[t.dtype] for t in tensors])
    words1 = (ctypes.c_uint32 * count)(*[k & 0xFFFFFFFF for k in k1])
    words2 = (ctypes.c_uint32 * count)(*[k & 0xFFFFFFFF for k in k2])
    scale = (ctypes.c_double * count)(*alphas)
    if lib.zoft_counter_add(kind, count, ptrs, numels, dtypes, words1, words2, scale, torch.get_num_threads()):
        raise RuntimeError(f"zoft counter kernel: invalid noise kind {kind}")


def gaussian_sum_of_squares(lib: ctypes.CDLL, n: int, k1: int, k2: int) -> float:
    return float(lib.zoft_counter_gaussian_sumsq(n, k1 & 0xFFFFFFFF, k2 & 0xFFFFFFFF, torch.get_num_threads()))
