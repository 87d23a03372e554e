"""particlegan.numba_setup: 512-bit vectors for the numba kernels on AVX-512 hosts and sleeping
idle OpenMP threads, applied when the cpu backend is chosen (not at import), opt-out by
environment, recorded in meta.json; results agree with the default code generation to rounding."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

PROBE = """
import json, os, sys
{pre}
before = dict(os.environ)
import particlegan, particlegan.api, particlegan.engine.simulate, particlegan.sweeps.sweep
assert dict(os.environ) == before, "importing particlegan changed the environment"
from particlegan.numba_setup import vector_width_setting
from particlegan.backends import get_backend
from particlegan.maths.kernels import make_kernel
import numpy as np
rng = np.random.default_rng(0)
X, Y, w = rng.normal(size=(300, 2)), rng.normal(size=(500, 2)), rng.normal(size=500)
out = get_backend("cpu").kernel_sum(X, Y, w, make_kernel("gaussian", sigma=0.5))
import numba
print(json.dumps({{"setting": vector_width_setting(), "features": numba.config.CPU_FEATURES or "",
                   "wait": os.environ.get("OMP_WAIT_POLICY"), "out": out.tolist()}}))
"""


def _probe(env_extra=None, pre=""):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_CPU")}
    for key in ("PARTICLEGAN_VECTOR_WIDTH", "PARTICLEGAN_OMP_WAIT", "OMP_WAIT_POLICY"):
        env.pop(key, None)
    env.update(env_extra or {})
    res = subprocess.run([sys.executable, "-c", PROBE.format(pre=pre)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def _host_has_avx512():
    import llvmlite.binding as ll

    ll.initialize_native_target()
    return bool(ll.get_host_cpu_features().get("avx512f", False))


def test_opt_out_and_numba_imported_first_leave_the_default():
    assert _probe({"PARTICLEGAN_VECTOR_WIDTH": "default"})["setting"] == "default"
    assert _probe(pre="import numba")["setting"] == "default"
    assert _probe({"NUMBA_CPU_NAME": "generic"})["setting"] == "default"


def test_idle_threads_sleep_unless_the_user_chose_otherwise():
    assert _probe()["wait"] == "PASSIVE"
    assert _probe({"OMP_WAIT_POLICY": "ACTIVE"})["wait"] == "ACTIVE"
    assert _probe({"PARTICLEGAN_OMP_WAIT": "default"})["wait"] is None


BLAS_PROBE = """
import json, os
{pre}
from particlegan.numba_setup import configure
done = configure()
import numpy
print(json.dumps({{"env": os.environ.get("OPENBLAS_THREAD_TIMEOUT"), "done": done["openblas_thread_timeout"]}}))
"""


def _blas_probe(env_extra=None, pre=""):
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_THREAD_TIMEOUT", "PARTICLEGAN_OMP_WAIT")}
    env.update(env_extra or {})
    res = subprocess.run([sys.executable, "-c", BLAS_PROBE.format(pre=pre)], capture_output=True,
                         text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_idle_blas_threads_sleep_when_set_before_numpy_loads():
    assert _blas_probe() == {"env": "4", "done": "4"}
    assert _blas_probe({"OPENBLAS_THREAD_TIMEOUT": "10"}) == {"env": "10", "done": "10"}
    assert _blas_probe({"PARTICLEGAN_OMP_WAIT": "default"}) == {"env": None, "done": "default"}
    assert _blas_probe(pre="import numpy") == {"env": None, "done": "default"}  # too late: left alone


def test_the_cli_applies_it_before_numpy_loads(tmp_path):
    code = ("import sys, os; from particlegan.cli import main; assert 'numpy' not in sys.modules; "
            "sys.argv = ['particlegan', 'ls', sys.argv[1]]\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'))")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_THREAD_TIMEOUT", "PARTICLEGAN_OMP_WAIT")}
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=env,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "4"


def test_importing_particlegan_touches_no_matplotlib_backend():
    code = ("import matplotlib; before = matplotlib.rcParams['backend']; "
            "import particlegan.plots.plotting, particlegan.plots.plotting_movie, particlegan.plots.plotting_stability; "
            "assert matplotlib.rcParams['backend'] == before")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "MPLBACKEND": "pdf"})


def test_avx512_hosts_get_512_bit_vectors_with_the_same_results():
    if not _host_has_avx512():
        pytest.skip("host has no AVX-512: the setting is not applied")
    wide = _probe()
    default = _probe({"PARTICLEGAN_VECTOR_WIDTH": "default"})
    assert wide["setting"] == "512" and wide["features"].endswith("-prefer-256-bit")
    np.testing.assert_allclose(wide["out"], default["out"], rtol=1e-12, atol=1e-14)


def test_meta_json_records_the_settings(tmp_path):
    from particlegan.store.config import resolve_config
    from particlegan.numba_setup import glibc, malloc_setting, vector_width_setting
    from particlegan.engine.simulate import run_to_dir

    run_to_dir(resolve_config(overrides=["particles.n=16", "target.n_samples=64", "run.steps=2",
                                         "observables.mmd_samples=32"]), tmp_path / "r")
    meta = json.loads((tmp_path / "r" / "meta.json").read_text())
    assert meta["versions"]["numba_vector_width"] == vector_width_setting()
    assert meta["versions"]["malloc"] == malloc_setting() != "default" or glibc() is None


MALLOC_PROBE = """
import ctypes, hashlib, json
import numpy as np
from particlegan.store.config import resolve_config
from particlegan.engine.dynamics import build_model, outer_step
from particlegan.backends import get_backend
from particlegan.numba_setup import malloc_setting

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

def mmapped_bytes():
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "mallinfo2"):
        return -1
    libc.mallinfo2.restype = MallInfo2
    return libc.mallinfo2().hblkhd

get_backend("numpy")  # applies the setting (or not)
before = mmapped_bytes()
big = np.ones(1 << 18)  # 2 MiB: over glibc's initial mmap threshold (128 KiB)
grew = mmapped_bytes() - before if before >= 0 else None
del big
# an MLP critic of the MNIST study's widths: its (200, 1024) temporaries are over glibc's default mmap threshold
cfg = resolve_config(overrides=["target.kind=ring", "target.dim=784", "target.n_samples=100", "particles.n=100",
                                "critic.type=mlp", "critic.widths=[64, 1024, 64]", "critic.dropout=[0, 0.2, 0]",
                                "critic.optimizer=adam", "critic.amsgrad=true", "loss.penalty=fake",
                                "loss.penalty_weight=1.25", "loss.penalty_form=mean_grad", "dynamics.critic_steps=2",
                                "dynamics.critic_steps_startup=2", "generator.phi=0.5", "run.backend=numpy",
                                "run.dtype=float32"])
model, state = build_model(cfg)
for _ in range(2):
    state, _ = outer_step(model, state)
print(json.dumps({"setting": malloc_setting(), "mmap_grew": grew,
                  "hash": hashlib.sha256(state.x.tobytes() + state.w.tobytes()).hexdigest()}))
"""


def _malloc_probe(env_extra=None):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PARTICLEGAN_MALLOC", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")}
    env.update(env_extra or {})
    res = subprocess.run([sys.executable, "-c", MALLOC_PROBE], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_large_arrays_come_from_the_heap_with_bitwise_the_same_results():
    """configure_malloc (applied by get_backend) keeps a 2 MiB array off mmap, and a run whose
    temporaries cross glibc's default threshold gives the same bytes as with the default."""
    from particlegan.numba_setup import glibc

    if glibc() is None:
        pytest.skip("not glibc: the setting is not applied")
    tuned = _malloc_probe()
    default = _malloc_probe({"PARTICLEGAN_MALLOC": "default"})
    assert tuned["setting"] == "heap" and default["setting"] == "default"
    if tuned["mmap_grew"] is not None:  # glibc >= 2.33 (mallinfo2)
        assert tuned["mmap_grew"] == 0 and default["mmap_grew"] >= 1 << 21
    assert tuned["hash"] == default["hash"]
    user = _malloc_probe({"MALLOC_MMAP_THRESHOLD_": "1048576"})
    assert user["setting"] == "user" and user["hash"] == default["hash"]
