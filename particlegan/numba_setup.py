"""Process settings for the numba CPU kernels, applied by :func:`configure`.

:func:`configure` is called by the ``particlegan`` command, by ``backends.get_backend`` when the
cpu or cuda backend is chosen, and by :mod:`particlegan.maths.pairmath` (the package's first importer
of numba) before it imports numba; importing ``particlegan`` itself changes nothing. Code that
imports numba before any of these gets numba's defaults (recorded as such in meta.json). It makes two choices, each recorded in every run's meta.json.

**Vector width.**
LLVM vectorises for 256-bit registers by default even on AVX-512 CPUs ("prefer-256-bit", a
tuning choice made for older Xeons that slowed down on 512-bit instructions). The pair loops of
:mod:`particlegan.backends.cpu_backend` are pure vector arithmetic, and with 512-bit vectors they
run 1.5-2x faster on the reference machine (Xeon, Emerald Rapids: Gaussian kernel sum at d = 2,
N = M = 1e4-3e4, 1.2e9 -> 1.6-2.4e9 pairs/s; see ``particlegan bench``).

numba reads its target CPU once, when it is first imported, from ``NUMBA_CPU_NAME`` and
``NUMBA_CPU_FEATURES``. So, if the host has AVX-512 and neither variable is set and numba is not
imported yet, :func:`configure_vector_width` sets them to the host CPU and its features plus
``-prefer-256-bit``. It changes nothing else (same instruction set as the host), and it is
process-wide, so it also applies to other numba code in the process. Opt out with
``PARTICLEGAN_VECTOR_WIDTH=default``. Results stay bitwise reproducible for a given setting; the
setting is recorded in every run's meta.json (:func:`vector_width_setting`).

**Idle threads sleep.** numba's OpenMP workers spin for a while after each parallel region
(GNU OpenMP's default), and so do OpenBLAS's after each GEMM. The high-dimension pair sums and
the random features alternate between the two pools, and each spinning pool takes a core from
the other: at d = 100 the Gaussian sums ran 1.3-1.6x slower and an outer step 1.3x slower on a
2-core host. So :func:`configure_thread_wait` sets ``OMP_WAIT_POLICY=PASSIVE`` (the workers
sleep at once; waking them costs microseconds) if the user has not set it and numba's threads
have not started, and :func:`configure_blas_wait` sets ``OPENBLAS_THREAD_TIMEOUT=4`` (OpenBLAS's
threads spin 2^4 cycles instead of its default 2^28, ~0.1 s, after a call) if the user has not
set it and numpy (which loads OpenBLAS and reads the variable once) is not imported yet: true
for the ``particlegan`` command, not for library code that imported numpy first (set the
variable yourself there). Measured on the 2-core AMD VM at d = 100, N = M = 3e4, float32:
Gaussian sums 1.2-1.4x, gradients 1.2-1.3x faster. Opt out of both with
``PARTICLEGAN_OMP_WAIT=default``.

**Large temporaries from the heap.** glibc serves an array over its mmap threshold (128 KiB,
raised by its dynamic rule to the largest array freed so far) from a fresh ``mmap``, and hands
the top of the heap back to the system whenever more than its trim threshold is free there;
either way the next array of that size pays a page fault per 4 KiB page on first touch. The MLP
critic's step makes dozens of (200, 1024) temporaries (800 KiB in float32) per critic step: one
outer step of the MNIST study's setting took ~17,000 page faults, every step. :func:`configure_malloc`
sets glibc's ``M_MMAP_THRESHOLD`` to 32 MiB (the largest glibc allows on 64-bit) and
``M_TRIM_THRESHOLD`` to 64 MiB (twice that, as glibc's dynamic rule does) through ``mallopt``,
which acts on every later allocation, so it can be applied at any time. Measured on the 2-core
AMD VM, one outer step of that setting with one BLAS thread: 0 page faults, 1.3-1.4x faster
(bench ``--mnist-only``). Only where the arrays live changes, not what is computed:
results are bitwise the same (tests/test_numba_setup.py). It is applied when a backend is chosen
(``backends.get_backend``, every run) and by :func:`configure`; not on other C libraries (no
``mallopt``), not when the user set glibc's own ``MALLOC_MMAP_THRESHOLD_`` /
``MALLOC_TRIM_THRESHOLD_`` / ``GLIBC_TUNABLES``, and not with ``PARTICLEGAN_MALLOC=default``.
"""
from __future__ import annotations

import os
import sys

ENV = "PARTICLEGAN_VECTOR_WIDTH"
WAIT_ENV = "PARTICLEGAN_OMP_WAIT"
MALLOC_ENV = "PARTICLEGAN_MALLOC"
_APPLIED = {"value": "default"}

# glibc's mallopt parameters (malloc.h) and the values configure_malloc sets
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20  # glibc's maximum on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD
_GLIBC_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
_MALLOC = {"value": None}  # what configure_malloc did in this process (None: not asked yet)


def configure() -> dict:
    """Apply the settings of this module (idempotent); returns what is in effect."""
    return {"vector_width": configure_vector_width(), "omp_wait_policy": configure_thread_wait(),
            "openblas_thread_timeout": configure_blas_wait(), "malloc": configure_malloc()}


def configure_malloc() -> str:
    """Serve large arrays from the heap instead of fresh mmaps (see module doc; idempotent).

    Returns
    -------
    "heap" when glibc's thresholds were set here, "user" when the user set glibc's malloc
    variables, "default" when opted out or not glibc (no ``mallopt``, or it refused).
    """
    if _MALLOC["value"] is not None:
        return _MALLOC["value"]
    if os.environ.get(MALLOC_ENV, "auto") != "auto":
        value = "default"
    elif any(name in os.environ for name in _GLIBC_MALLOC_ENV):
        value = "user"
    else:
        value = "heap" if _mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and _mallopt(
            _M_TRIM_THRESHOLD, TRIM_THRESHOLD) else "default"
    _MALLOC["value"] = value
    return value


def glibc():
    """The process's C library through ctypes when it is glibc, else None (musl's mallopt is a
    stub, macOS has none, some platforms have no dlopen(NULL))."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version
        return libc
    except Exception:
        return None


def _mallopt(param: int, value: int) -> bool:
    """glibc's ``mallopt(param, value)``; False where the C library is not glibc or refuses."""
    import ctypes

    libc = glibc()
    return libc is not None and libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) == 1


def malloc_setting() -> str:
    """What :func:`configure_malloc` did in this process ("default" before it was asked)."""
    return _MALLOC["value"] or "default"


def default_backend() -> str:
    """The backend ``run.backend = "auto"`` resolves to: "cpu" (numba's parallel kernels, the
    fastest correct CPU backend) when numba and llvmlite are installed, else "numpy" (the
    reference). Looks the packages up without importing them (importing numba here would fix
    its settings before :func:`configure`)."""
    import importlib.util

    if all(importlib.util.find_spec(name) is not None for name in ("numba", "llvmlite")):
        return "cpu"
    return "numpy"


def _numba_threads_started() -> bool:
    if "numba" not in sys.modules:
        return False
    try:
        from numba.np.ufunc import parallel

        return bool(getattr(parallel, "_is_initialized", False))
    except Exception:
        return True  # unknown: assume started and leave the environment alone


def configure_thread_wait() -> str:
    """Let idle OpenMP workers sleep instead of spinning (see module doc).

    Returns the policy in effect for numba's workers: the user's ``OMP_WAIT_POLICY`` when set,
    "PASSIVE" when applied here, "default" when opted out or too late (threads started).
    """
    if "OMP_WAIT_POLICY" in os.environ:
        return os.environ["OMP_WAIT_POLICY"]
    if os.environ.get(WAIT_ENV, "auto") != "auto" or _numba_threads_started():
        return "default"
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return "PASSIVE"


def configure_blas_wait() -> str:
    """Let idle OpenBLAS threads sleep at once (see module doc).

    Returns the ``OPENBLAS_THREAD_TIMEOUT`` in effect: the user's when set, "4" when applied
    here, "default" when opted out or too late (numpy, and with it OpenBLAS, already loaded).
    """
    if "OPENBLAS_THREAD_TIMEOUT" in os.environ:
        return os.environ["OPENBLAS_THREAD_TIMEOUT"]
    if os.environ.get(WAIT_ENV, "auto") != "auto" or "numpy" in sys.modules:
        return "default"
    os.environ["OPENBLAS_THREAD_TIMEOUT"] = "4"
    return "4"


def configure_vector_width() -> str:
    """Prefer 512-bit vectors in numba's code generation on AVX-512 hosts (see module doc).

    Returns
    -------
    "512" when applied; otherwise "default" (opted out, no AVX-512, numba already imported, or
    NUMBA_CPU_NAME / NUMBA_CPU_FEATURES already set by the user).
    """
    if os.environ.get(ENV, "auto") != "auto" or "numba" in sys.modules:
        return _APPLIED["value"]
    if "NUMBA_CPU_NAME" in os.environ or "NUMBA_CPU_FEATURES" in os.environ:
        return _APPLIED["value"]
    try:
        import llvmlite.binding as ll

        ll.initialize_native_target()
        features = ll.get_host_cpu_features()
        if not features.get("avx512f", False):
            return _APPLIED["value"]
        os.environ["NUMBA_CPU_NAME"] = ll.get_host_cpu_name()
        os.environ["NUMBA_CPU_FEATURES"] = features.flatten() + ",-prefer-256-bit"
    except Exception:  # no llvmlite host query on this platform: leave numba's defaults
        return _APPLIED["value"]
    _APPLIED["value"] = "512"
    return "512"


def vector_width_setting() -> str:
    """What :func:`configure_vector_width` did in this process ("512" or "default")."""
    if _APPLIED["value"] == "512" and "-prefer-256-bit" in os.environ.get("NUMBA_CPU_FEATURES", ""):
        return "512"
    return "default"
