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
"""
from __future__ import annotations

import os
import sys

ENV = "PARTICLEGAN_VECTOR_WIDTH"
WAIT_ENV = "PARTICLEGAN_OMP_WAIT"
_APPLIED = {"value": "default"}


def configure() -> dict:
    """Apply the settings of this module (idempotent); returns what is in effect."""
    return {"vector_width": configure_vector_width(), "omp_wait_policy": configure_thread_wait(),
            "openblas_thread_timeout": configure_blas_wait()}


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
