"""cuda backend: simulator run of tests/cuda_cases.py in a subprocess, and device type checks.

* The simulator (NUMBA_ENABLE_CUDASIM=1) must be chosen before numba is first imported, so the
  cases run in a child process and the rest of the suite keeps real numba.
* The simulator does no type inference, so every kernel is also compiled here for sm_90 by
  numba-cuda's front end (typing + lowering to NVVM IR; needs no driver and no NVVM). Its device
  query for the compute capability is pointed at a stub for that. The float32 kernels must
  contain no float64 arithmetic.
* PTX generation needs NVVM/NVRTC from the numba-cuda[cu12] extra; it is tried and skipped when
  absent.
"""
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from numba import config

from particlegan.backends import cuda_available

CASES = Path(__file__).with_name("cuda_cases.py")
REPO = Path(__file__).resolve().parents[1]


def run_cases(extra_env):
    env = dict(os.environ, **extra_env)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CASES)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout


def test_cuda_backend_matches_numpy_in_the_simulator():
    run_cases({"NUMBA_ENABLE_CUDASIM": "1", "NUMBA_DISABLE_JIT": "1"})


@pytest.mark.skipif(config.ENABLE_CUDASIM or not cuda_available(), reason="no CUDA GPU here")
def test_cuda_backend_matches_numpy_on_the_gpu():
    run_cases({"NUMBA_ENABLE_CUDASIM": "0"})


# ----------------------------------------------------------------------- type checks ------
needs_real_numba_cuda = pytest.mark.skipif(config.ENABLE_CUDASIM, reason="numba.cuda is the simulator here")


@pytest.fixture
def sm90_without_driver(monkeypatch):
    """Let device-function compilation ask for a compute capability without a driver."""
    import numba.cuda.dispatcher as dispatcher
    monkeypatch.setattr(dispatcher, "get_current_device", lambda: SimpleNamespace(compute_capability=(9, 0)))


def kernel_and_types(which, dtype_name, d=3):
    from numba import types

    from particlegan.backends import cuda_backend as cb
    f = types.float32 if dtype_name == "float32" else types.float64
    a1, a2, a3, i64 = types.Array(f, 1, "C"), types.Array(f, 2, "C"), types.Array(f, 3, "C"), types.int64
    if which in ("gauss", "generic"):  # one kernel source, the Gaussian path a compile-time branch
        return (cb.make_pair_kernel(d, dtype_name, 256, True, which == "generic"),
                (a2, a2, a1, a1, a1, i64, a1, a2, i64, a1, a2, a1))
    if which == "ntk":
        return cb.make_ntk_kernel(d, dtype_name, 64, 32), (a2, a2, a1, i64, a1, i64, a2)
    return cb.make_feature_kernel(dtype_name, True), (a3, a3, a2, f, a3, a3)


DOUBLE_ARITH = re.compile(r"= f(add|sub|mul|div)( [a-z]+)* double |fpext float")


@needs_real_numba_cuda
@pytest.mark.parametrize("which, dtype_name", [("gauss", "float32"), ("generic", "float32"), ("ntk", "float32"),
                                               ("features", "float32"), ("generic", "float64")])
def test_kernels_type_check_for_sm90(which, dtype_name, sm90_without_driver):
    from numba import types
    from numba.cuda import compiler
    kern, argtypes = kernel_and_types(which, dtype_name)
    cres = compiler.compile_cuda(kern.py_func, types.void, argtypes, cc=(9, 0), fastmath=True)
    ir = cres.library.get_llvm_str() + "".join(lib.get_llvm_str() for lib in cres.library._linking_libraries)
    assert "pairmath" in ir  # the per-pair maths is compiled into the kernel, not re-written there
    if which in ("gauss", "generic"):  # the Gaussian fast path's compile-time branch drops pair_terms
        assert ("pair_terms" in ir) == (which == "generic")
    if dtype_name == "float32":
        assert not DOUBLE_ARITH.search(ir), DOUBLE_ARITH.search(ir).group(0)
    else:
        assert DOUBLE_ARITH.search(ir)  # the pattern does detect float64 arithmetic


@needs_real_numba_cuda
def test_compile_ptx_for_sm90(sm90_without_driver):
    from numba import cuda
    kern, argtypes = kernel_and_types("gauss", "float32")
    try:
        ptx, _ = cuda.compile_ptx(kern.py_func, argtypes, cc=(9, 0), fastmath=True)
    except Exception as exc:  # the toolkit libraries live in the numba-cuda[cu12] extra
        if re.search(r"nvrtc|nvvm|libNVVM|cannot be found|CudaSupportError|DynamicLib", f"{type(exc).__name__} {exc}",
                     re.I):
            pytest.skip(f"PTX generation needs NVVM/NVRTC (numba-cuda[cu12] extra), not installed: "
                        f"{type(exc).__name__}")
        raise
    assert ".target sm_90" in ptx and "ex2.approx.f32" in ptx  # fast float32 exp


def test_float32_detection_pattern_is_not_vacuous():
    assert DOUBLE_ARITH.search('%".5" = fmul fast double %".3", %".4"')
    assert not DOUBLE_ARITH.search('%".5" = fmul fast float %".3", %".4"')
