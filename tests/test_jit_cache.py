"""The numba disk cache of the cpu drivers: reuse, invalidation, concurrency, failure modes."""
import io
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from particlegan.backends import jit_cache

# One process: random features (one small driver) in the given dtype, checked against numpy;
# prints "hits misses" of that driver, or "off" when no disk cache is attached.
PROBE = textwrap.dedent("""
    import sys
    import numpy as np
    from particlegan.backends import cpu_backend as cb, numpy_backend as nb
    dtype = np.dtype(sys.argv[1])
    rng = np.random.default_rng(0)
    X, A, b = (rng.normal(size=s).astype(dtype) for s in ((40, 2), (24, 2), (24,)))
    got = cb.random_features(X, A, b, "cos", 0.5)
    want = nb.random_features(X, A, b, "cos", 0.5)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for g, w in zip(got, want):
        assert np.allclose(g, w, rtol=tol, atol=tol), "cached driver gives wrong values"
    st = cb._cos_features_lowd.stats  # the driver of cos features in low d
    cached = type(cb._cos_features_lowd._cache).__name__ != "NullCache"
    print(sum(st.cache_hits.values()), sum(st.cache_misses.values()), int(cached))
""")


def probe(cache_dir, dtype="float64", extra_env=None, wait=True):
    env = {**os.environ, "PARTICLEGAN_CACHE_DIR": str(cache_dir), "PARTICLEGAN_QUIET": "1"}
    env.pop("PARTICLEGAN_NUMBA_CACHE", None)
    env.update(extra_env or {})
    proc = subprocess.Popen([sys.executable, "-c", PROBE, dtype], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    return finish(proc)


def finish(proc):
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    hits, misses, cached = map(int, out.split())
    return (hits, misses) if cached else "off"


def stamp_dirs(cache_dir):
    base = Path(cache_dir) / "numba"
    return sorted(p for p in base.iterdir() if p.is_dir()) if base.exists() else []


def test_second_process_loads_the_compiled_driver_instead_of_compiling(tmp_path):
    assert probe(tmp_path) == (0, 1)  # compiled and stored
    (stamp,) = stamp_dirs(tmp_path)
    assert stamp.name == jit_cache.source_stamp()
    assert any(p.suffix == ".nbc" for p in stamp.iterdir())
    assert probe(tmp_path) == (1, 0)  # loaded, correct values checked inside


def test_two_processes_compiling_at_once_leave_a_consistent_cache(tmp_path):
    # different signatures of one driver compiled at the same time into one empty directory:
    # with numbered data files the two could swap, here each keeps its own
    procs = [probe(tmp_path, dt, wait=False) for dt in ("float64", "float32", "float64", "float32")]
    results = [finish(p) for p in procs]
    assert all(h + m == 1 for h, m in results)
    # now both signatures come from the cache, with correct values
    assert probe(tmp_path, "float64") == (1, 0)
    assert probe(tmp_path, "float32") == (1, 0)


def test_corrupt_cache_files_are_a_miss_not_an_error(tmp_path):
    probe(tmp_path)
    (stamp,) = stamp_dirs(tmp_path)
    for path in stamp.iterdir():
        if path.suffix in (".nbc", ".nbi"):
            path.write_bytes(b"not a pickle")
    assert probe(tmp_path) == (0, 1)
    assert probe(tmp_path) == (1, 0)  # rewritten by the recompile


def test_unwritable_cache_dir_turns_caching_off_and_the_backend_still_works(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory would go")
    assert probe(blocker) == "off"  # values checked inside
    assert blocker.read_text().startswith("a file")


def test_cache_can_be_switched_off(tmp_path):
    assert probe(tmp_path, extra_env={"PARTICLEGAN_NUMBA_CACHE": "0"}) == "off"
    assert stamp_dirs(tmp_path) == []


def test_stamp_changes_with_any_source_edit_and_with_the_versions(tmp_path):
    pkg = Path(jit_cache.__file__).resolve().parent.parent
    copy = tmp_path / "particlegan"
    shutil.copytree(pkg, copy, ignore=shutil.ignore_patterns("__pycache__"))
    versions = ("0.1.0", "0.68.1", "0.50.0", "3.11.7")
    base = jit_cache.source_stamp(copy, versions)
    assert jit_cache.source_stamp(copy, versions) == base
    pairmath = copy / "maths" / "pairmath.py"
    pairmath.write_text(pairmath.read_text() + "\n# an edit of a module the drivers inline\n")
    edited = jit_cache.source_stamp(copy, versions)
    assert edited != base
    assert jit_cache.source_stamp(copy, ("0.1.0", "0.69.0", "0.50.0", "3.11.7")) != edited


def test_old_stamp_directories_are_pruned(tmp_path):
    base = tmp_path / "numba"
    for i in range(6):
        (base / f"old{i}").mkdir(parents=True)
        os.utime(base / f"old{i}", (1000 + i, 1000 + i))
    jit_cache._prune(base, keep="current")
    assert sorted(p.name for p in base.iterdir()) == ["old3", "old4", "old5"]  # + current = 4


def test_first_compile_of_a_version_is_announced_once(tmp_path, monkeypatch):
    from numba import njit

    monkeypatch.setattr(jit_cache, "_STATE", {})
    monkeypatch.setenv("PARTICLEGAN_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("PARTICLEGAN_NUMBA_CACHE", raising=False)
    monkeypatch.delenv("PARTICLEGAN_QUIET", raising=False)
    monkeypatch.delenv("CI", raising=False)

    class Tty(io.StringIO):
        def isatty(self):
            return True

    err = Tty()
    monkeypatch.setattr(sys, "stderr", err)

    def twice(x):
        return 2 * x

    assert jit_cache.attach(njit(twice))
    assert jit_cache.attach(njit(twice))
    assert err.getvalue().count("compiling the cpu kernels") == 1
    assert str(tmp_path) in err.getvalue()
    # a later process finds the directory: no message
    monkeypatch.setattr(jit_cache, "_STATE", {})
    err.seek(0)
    err.truncate()
    assert jit_cache.attach(njit(twice))
    assert err.getvalue() == ""


def test_importing_the_module_changes_no_numba_setting():
    code = ("import os, sys; before = dict(os.environ); "
            "import particlegan.backends.jit_cache; "
            "assert dict(os.environ) == before; assert 'numba' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cached_drivers_match_the_numpy_reference_in_process(dtype):
    # the suite's own process uses the cache too: its results are the reference's
    from particlegan.backends import cpu_backend as cb, numpy_backend as nb

    rng = np.random.default_rng(1)
    X, A, b = (rng.normal(size=s).astype(dtype) for s in ((30, 3), (16, 3), (16,)))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for g, w in zip(cb.random_features(X, A, b, "relu", 1.0), nb.random_features(X, A, b, "relu", 1.0)):
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol)
