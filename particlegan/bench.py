"""Benchmark of dense Gaussian pair sums: pair interactions per second for several methods.

Measured operations, for X, Y of N = M points in R^d, weights w, sigma = 1:

* ``kernel_sum``   out_i = sum_j w_j exp(-|x_i - y_j|^2 / (2 sigma^2))
* ``kernel_grad``  out_i = sum_j w_j grad_1 k(x_i, y_j) = -sum_j w_j k_ij (x_i - y_j) / sigma^2
* ``step``         outer steps per second of the simulator on the default model (8-mode ring,
                   universal coupling, RFF critic, n_c = 5) at N = M = ``step_n``: critic update +
                   particle forces + coupling, start-up critic steps and observables excluded
                   (:func:`simulator_step_rows`); method ``numpy_broadcast`` is the numpy reference
                   backend there, ``cpu`` / ``cuda`` the particlegan backends

Methods: ``numpy_broadcast`` ((x_i - y_j) by broadcasting, row-chunked to cap memory),
``scipy_cdist`` (cdist 'sqeuclidean' + exp + matvec/matmul, row-chunked), ``numpy_blas`` (the
BLAS distance expansion r2 = |x|^2 + |y|^2 - 2 x.y with one GEMM per row chunk, numpy exp: the
baseline of the high-dimension target), ``cpu`` and ``cuda``
(the particlegan backends, called as users call them), and the optional peers ``torch`` (the
same BLAS expansion in torch, row-chunked, on as many threads as numba) and ``pykeops``, each
only if importable (neither is a dependency; :func:`missing_peers` names those skipped).

Each figure is pairs / best wall time over repeats (after one untimed warm-up call, which also
compiles), and ``peak_mb`` the memory that call needed above what the process held before
(:func:`peak_memory_mb`; for op 'step': building the model plus one step, i.e. a run's peak).
A method whose estimated time for a size exceeds the per-measurement budget is skipped (its row
is absent), which keeps ``quick`` runs short.

Two more measurements are printed beside the table: the fixed cost of a short ``particlegan
run`` in fresh processes (numpy, cpu compiling into an empty cache, cpu with the cache warm:
:func:`startup_times`) and the cost of recording one finished run in a sweep's results.csv
at a small and a large table (:func:`record_times`).
"""
from __future__ import annotations

import csv
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from particlegan.errors import ConfigError
from particlegan.maths.kernels import make_kernel

COLUMNS = ("op", "method", "n", "m", "d", "dtype", "pairs_per_s", "peak_mb")
OPS = ("kernel_sum", "kernel_grad", "step")
METHODS = ("numpy_broadcast", "scipy_cdist", "numpy_blas", "cpu", "cuda", "torch", "pykeops")
BASELINES = ("numpy_broadcast", "scipy_cdist", "numpy_blas")
PEERS = ("torch", "pykeops")
FULL_SIZES = (1_000, 10_000, 30_000)
QUICK_SIZES = (1_000, 3_000)
DIMS = (2, 3, 16, 100)
STEP_N = 10_000  # N = M of the simulator-step rows
_CHUNK_ELEMS = 1 << 23  # cap of the (rows, m[, d]) temporaries of the numpy/scipy baselines (64 MB f64)

# Hooks that contribute extra rows (e.g. simulator steps/s): callables f(quick: bool) -> iterable
# of BenchRow. run_benchmark appends their rows after its own.
ROW_HOOKS: list[Callable[[bool], Iterable["BenchRow"]]] = []


@dataclass(frozen=True)
class BenchRow:
    """One measurement: ``pairs_per_s`` pair interactions (or steps, for op 'step') per second."""

    op: str
    method: str
    n: int
    m: int
    d: int
    dtype: str
    pairs_per_s: float
    peak_mb: float = math.nan

    def as_tuple(self) -> tuple:
        return tuple(getattr(self, c) for c in COLUMNS)


# ------------------------------------------------------------------------ baselines --------
def _row_chunks(n: int, per_row: int):
    step = max(1, _CHUNK_ELEMS // max(per_row, 1))
    return [slice(s, min(n, s + step)) for s in range(0, n, step)]


def _numpy_broadcast(op, X, Y, w, inv2s2):
    n, d = X.shape
    out = np.empty(n, X.dtype) if op == "kernel_sum" else np.empty_like(X)
    for rows in _row_chunks(n, Y.shape[0] * d):
        diff = X[rows, None, :] - Y[None, :, :]
        e = np.exp(-inv2s2 * (diff * diff).sum(axis=2))
        if op == "kernel_sum":
            out[rows] = e @ w
        else:
            out[rows] = -2 * inv2s2 * np.einsum("ij,ijk->ik", e * w, diff)
    return out


def _scipy_cdist(op, X, Y, w, inv2s2):
    from scipy.spatial.distance import cdist
    n = X.shape[0]
    out = np.empty(n, X.dtype) if op == "kernel_sum" else np.empty_like(X)
    for rows in _row_chunks(n, Y.shape[0]):
        e = np.exp(-inv2s2 * cdist(X[rows], Y, "sqeuclidean"))
        if op == "kernel_sum":
            out[rows] = e @ w
        else:
            c = e * w
            out[rows] = -2 * inv2s2 * (X[rows] * c.sum(axis=1)[:, None] - c @ Y)
    return out


def _numpy_blas(op, X, Y, w, inv2s2):
    n = X.shape[0]
    out = np.empty(n, X.dtype) if op == "kernel_sum" else np.empty_like(X)
    yy = np.einsum("ij,ij->i", Y, Y)
    for rows in _row_chunks(n, Y.shape[0]):
        Xr = X[rows]
        r2 = np.einsum("ij,ij->i", Xr, Xr)[:, None] + yy[None, :] - 2.0 * (Xr @ Y.T)
        np.maximum(r2, 0.0, out=r2)  # cancellation can leave tiny negatives
        e = np.exp(-inv2s2 * r2)
        if op == "kernel_sum":
            out[rows] = e @ w
        else:
            c = e * w
            out[rows] = -2 * inv2s2 * (Xr * c.sum(axis=1)[:, None] - c @ Y)
    return out


def _torch(op, X, Y, w, inv2s2):
    import torch

    Xt, Yt, wt = (torch.from_numpy(np.ascontiguousarray(a)) for a in (X, Y, w))
    n = X.shape[0]
    out = torch.empty(n, dtype=Xt.dtype) if op == "kernel_sum" else torch.empty_like(Xt)
    yy = (Yt * Yt).sum(1)
    for rows in _row_chunks(n, Y.shape[0]):
        x = Xt[rows]
        r2 = ((x * x).sum(1)[:, None] + yy[None, :] - 2.0 * (x @ Yt.T)).clamp_(min=0.0)
        e = torch.exp(-inv2s2 * r2)
        if op == "kernel_sum":
            out[rows] = e @ wt
        else:
            c = e * wt
            out[rows] = -2 * inv2s2 * (x * c.sum(1)[:, None] - c @ Yt)
    return out.numpy()


def _pykeops(op, X, Y, w, inv2s2):
    from pykeops.numpy import LazyTensor
    x_i, y_j = LazyTensor(X[:, None, :]), LazyTensor(Y[None, :, :])
    w_j = LazyTensor(w[None, :, None])
    diff = x_i - y_j
    k = (-inv2s2 * (diff ** 2).sum(-1)).exp()
    if op == "kernel_sum":
        return (k * w_j).sum(axis=1).ravel()
    return -2 * inv2s2 * (k * w_j * diff).sum(axis=1)


def _backend_method(name):
    from particlegan.backends import get_backend
    backend = get_backend(name)
    spec = make_kernel("gaussian", sigma=1.0)

    def run(op, X, Y, w, inv2s2):
        if op == "kernel_sum":
            return backend.kernel_sum(X, Y, w, spec)
        return backend.kernel_grad_sum(X, Y, w, spec)
    return run


def available_methods() -> tuple:
    """Methods that can run here (cuda needs a GPU; the simulator does not count)."""
    from particlegan.numba_setup import configure

    configure()  # before this first import of numba: measure what runs would use
    from numba import config

    from particlegan.backends import cuda_available
    found = ["numpy_broadcast", "scipy_cdist", "numpy_blas", "cpu"]
    if cuda_available() and not config.ENABLE_CUDASIM:
        found.append("cuda")
    for peer in PEERS:
        if _importable(peer):
            found.append(peer)
    return tuple(found)


def _importable(module: str) -> bool:
    try:
        __import__(module)  # optional peers; not dependencies
        return True
    except Exception:
        return False


def missing_peers() -> tuple:
    """The optional peers (torch, pykeops) that are not installed here (the bench skips them)."""
    return tuple(p for p in PEERS if not _importable(p))


def _method_fn(method):
    if method == "numpy_broadcast":
        return _numpy_broadcast
    if method == "scipy_cdist":
        return _scipy_cdist
    if method == "numpy_blas":
        return _numpy_blas
    if method == "pykeops":
        return _pykeops
    if method == "torch":
        import torch
        from numba import get_num_threads

        torch.set_num_threads(get_num_threads())  # the same cores as the cpu backend
        return _torch
    return _backend_method(method)


# ------------------------------------------------------------------------- memory ----------
def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def peak_memory_mb(fn) -> tuple[object, float]:
    """Call fn() once; return (its result, the memory it needed in MiB above what was held before).

    The larger of two readings: tracemalloc's peak (every numpy allocation, however brief) and
    the resident set sampled every millisecond (also what numba, BLAS or torch allocate).
    """
    import tracemalloc

    base = _rss_bytes()
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            rss = _rss_bytes()
            if rss is not None and base is not None:
                peak[0] = max(peak[0], rss - base)
            done.wait(0.001)
    watcher = threading.Thread(target=sample, daemon=True)
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    traced0 = tracemalloc.get_traced_memory()[0]
    watcher.start()
    try:
        result = fn()
    finally:
        done.set()
        watcher.join()
        traced = tracemalloc.get_traced_memory()[1] - traced0
        if not tracing:
            tracemalloc.stop()
    return result, max(traced, peak[0]) / 2 ** 20


# ------------------------------------------------------------------------- running ---------
def _best_time(fn, min_time: float, max_repeats: int) -> float:
    """Best wall time of fn() over repeats (at least 2, until min_time is spent or max_repeats)."""
    best = float("inf")
    spent = 0.0
    reps = 0
    while reps < 2 or (spent < min_time and reps < max_repeats):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best = min(best, dt)
        spent += dt
        reps += 1
    return best


def run_benchmark(quick: bool = False, sizes: Iterable[int] | None = None, dims: Iterable[int] | None = None,
                  dtypes: Iterable[str] = ("float64",), methods: Iterable[str] | None = None,
                  ops: Iterable[str] = ("kernel_sum", "kernel_grad"), budget_s: float | None = None,
                  extra_rows: Iterable[BenchRow] = (), seed: int = 0, step_n: int | None = None,
                  progress: Callable[[str], None] | None = None) -> list[BenchRow]:
    """Measure pair interactions per second of Gaussian kernel sums and gradients.

    Parameters
    ----------
    quick : small sizes :data:`QUICK_SIZES` and short timing budgets (under a minute on 2 cores).
    sizes : N = M values (default :data:`FULL_SIZES`, or :data:`QUICK_SIZES` when quick).
    dims : dimensions d (default :data:`DIMS`).
    dtypes : "float64" and/or "float32".
    methods : subset of :data:`METHODS` (default: :func:`available_methods`); unavailable ones raise
        ConfigError.
    ops : subset of ("kernel_sum", "kernel_grad").
    budget_s : skip a measurement whose estimated single-call time exceeds this (default 1 s quick,
        30 s otherwise); the estimate scales the method's last measured rate.
    step_n : when set, also measure simulator steps/s at N = M = step_n
        (:func:`simulator_step_rows`, on the numpy reference and the particlegan backends among
        ``methods``, in each dtype).
    extra_rows : rows appended as they are; rows of :data:`ROW_HOOKS` too.
    progress : optional callable receiving one-line status messages.

    Returns
    -------
    list of :class:`BenchRow`.
    """
    sizes = tuple(sizes or (QUICK_SIZES if quick else FULL_SIZES))
    dims = tuple(dims or DIMS)
    have = available_methods()
    methods = tuple(methods or have)
    for meth in methods:
        if meth not in METHODS:
            raise ConfigError(f"unknown benchmark method '{meth}'; choose from {', '.join(METHODS)}")
        if meth not in have:
            raise ConfigError(f"benchmark method '{meth}' is not available here")
    for op in ops:
        if op not in ("kernel_sum", "kernel_grad"):
            raise ConfigError(f"unknown benchmark op '{op}'; choose kernel_sum or kernel_grad")
    for dt in dtypes:
        if dt not in ("float32", "float64"):
            raise ConfigError(f"unknown benchmark dtype '{dt}'; choose float32 or float64")
    budget = budget_s if budget_s is not None else (1.0 if quick else 30.0)
    min_time = 0.05 if quick else 0.5
    rng = np.random.default_rng(seed)
    inv2s2 = 0.5
    rows: list[BenchRow] = []
    fns = {meth: _method_fn(meth) for meth in methods}
    for dt in dtypes:
        for d in dims:
            for op in ops:
                rate: dict[str, float] = {}  # last measured pairs/s per method, for the skip estimate
                for n in sorted(sizes):
                    # divide before the cast: float32 / np.float64 would be float64
                    X = (rng.normal(size=(n, d)) / np.sqrt(d)).astype(dt)
                    Y = (rng.normal(size=(n, d)) / np.sqrt(d)).astype(dt)
                    w = rng.normal(size=n).astype(dt)
                    for meth in methods:
                        if meth in rate and n * n / rate[meth] > budget:
                            continue
                        fn = fns[meth]
                        fn(op, X, Y, w, inv2s2)  # warm-up (and compilation)
                        _, peak = peak_memory_mb(lambda: fn(op, X, Y, w, inv2s2))
                        best = _best_time(lambda: fn(op, X, Y, w, inv2s2), min_time, 3 if quick else 10)
                        rate[meth] = n * n / best
                        rows.append(BenchRow(op, meth, n, n, d, dt, rate[meth], peak))
                        if progress:
                            progress(f"{op} {meth} n={n} d={d} {dt}: {rate[meth]:.3g} pairs/s")
    if step_n:
        step_methods = [m for m in methods if m in ("numpy_broadcast", "cpu", "cuda")]
        for dt in dtypes:
            rows.extend(simulator_step_rows(step_n, step_methods, dt, min_time=min_time,
                                            max_repeats=3 if quick else 5, seed=seed))
    rows.extend(extra_rows)
    for hook in ROW_HOOKS:
        rows.extend(hook(quick))
    return rows


def simulator_step_rows(n: int = 10_000, methods: Iterable[str] = ("numpy_broadcast", "cpu"),
                        dtype: str = "float64", min_time: float = 0.5, max_repeats: int = 5,
                        seed: int = 0) -> list[BenchRow]:
    """Outer steps per second of the default model at N = M = ``n`` on each backend.

    ``methods`` name backends as in :data:`METHODS` ("numpy_broadcast" = the numpy backend).
    One untimed step first (it also compiles), then the best of repeated single steps.
    ``peak_mb``: the memory of building the model plus that first step (a run's peak).
    """
    from particlegan.engine import dynamics as dyn
    from particlegan.store.config import resolve_config

    rows = []
    for meth in methods:
        backend = "numpy" if meth == "numpy_broadcast" else meth
        cfg = resolve_config({}, [f"particles.n={n}", f"target.n_samples={n}", f"run.backend={backend}",
                                  f"run.dtype={dtype}", "dynamics.critic_steps_startup=0"], seed=seed)
        def build_and_step():
            model, state = dyn.build_model(cfg)
            return model, dyn.outer_step(model, state)[0]  # warm-up (and compilation)
        (model, state), peak = peak_memory_mb(build_and_step)
        holder = [state]

        def one_step():
            holder[0], _ = dyn.outer_step(model, holder[0])
        best = _best_time(one_step, min_time, max_repeats)
        rows.append(BenchRow("step", meth, n, n, cfg["target"]["dim"], dtype, 1.0 / best, peak))
        del model, state, holder
    return rows


# ----------------------------------------------------------- fixed costs and bookkeeping --
def startup_times(n: int = 128, steps: int = 10) -> list[tuple[str, float]]:
    """Wall seconds of ``particlegan run`` (N = n, ``steps`` steps, no plot) in fresh processes:
    the numpy backend, the cpu backend compiling into an empty numba cache, and the cpu backend
    with that cache warm. The last minus the first is the fixed cost the cpu backend adds."""
    import subprocess
    import sys
    import tempfile

    out = []
    with tempfile.TemporaryDirectory() as scratch:
        env = {**os.environ, "PARTICLEGAN_CACHE_DIR": os.path.join(scratch, "cache"), "PARTICLEGAN_QUIET": "1"}
        for label, backend in (("numpy", "numpy"), ("cpu, empty cache", "cpu"), ("cpu, warm cache", "cpu")):
            cmd = [sys.executable, "-m", "particlegan", "run", "--no-plot", "--force",
                   "--out", os.path.join(scratch, "run"), "--set", f"particles.n={n}",
                   "--set", f"run.steps={steps}", "--set", f"run.backend={backend}"]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise ConfigError(f"startup measurement failed: {proc.stderr.strip().splitlines()[-1:]}")
            out.append((label, time.perf_counter() - t0))
    return out


def record_times(table_sizes=(1, 2028), repeats: int = 20) -> list[tuple[int, float, float]]:
    """Seconds to record one finished run in results.csv when the table already holds k rows:
    (k, appending one row as sweeps do, rewriting the whole table as they did before)."""
    import tempfile

    from particlegan.sweeps.sweep import ResultsAppender, load_base, parse_grid, plan_sweep, write_results_csv

    big = max(table_sizes)
    side = math.ceil(math.sqrt(big))
    plan = plan_sweep(load_base(None, ["run.steps=10"]),
                      [parse_grid("generator.phi=" + ",".join(f"{i / side:.6g}" for i in range(side))),
                       parse_grid("dynamics.eta_d=" + ",".join(f"{0.01 * (i + 1):.6g}" for i in range(side)))],
                      [0])
    outcome = {"status": "ok", "wall_time_s": 1.0, "summary": {"steps": 10, "collapse": 0.5, "mmd2": 1e-3}}
    out = []
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "results.csv")
        for k in table_sizes:
            outcomes = {run.run_id: outcome for run in plan.runs[:k]}
            table = ResultsAppender(path, plan, outcomes)
            t0 = time.perf_counter()
            for _ in range(repeats):
                table.append(plan.runs[k - 1], outcome)
            t_append = (time.perf_counter() - t0) / repeats
            table.close(outcomes)
            t0 = time.perf_counter()
            for _ in range(max(1, repeats // 4)):
                write_results_csv(path, plan, outcomes)
            t_rewrite = (time.perf_counter() - t0) / max(1, repeats // 4)
            out.append((k, t_append, t_rewrite))
    return out


MNIST_WIDTHS = (64, 1024, 64)  # the study's critic (sims/mnist): 784 -> 64 -> 1024 -> 64 -> 1


def mlp_step_flops(layer_sizes, n_particles: int, n_targets: int, critic_steps: int) -> float:
    """Matmul FLOPs of one outer step of particles against an MLP critic with the gradient
    penalty on the particles, as :func:`particlegan.model.particle_critics.mlp_critic_objective` computes it.

    With S = sum_k n_k n_{k+1}, B = M + N rows of [y; x] and P = N penalty rows, a critic step
    is one forward, one backward (input gradients included) and one parameter-gradient pass on
    B rows, and the penalty's tangent and parameter passes on P rows: 2 S (3 B + 2 P) FLOPs;
    the forces add a forward and a backward pass on N rows, 2 S (2 N).
    """
    S = sum(a * b for a, b in zip(layer_sizes[:-1], layer_sizes[1:]))
    B, P = n_particles + n_targets, n_particles
    return 2.0 * S * (critic_steps * (3 * B + 2 * P) + 2 * n_particles)


def matmul_peak_flops(dtype: str, n: int = 1024, min_time: float = 0.3) -> float:
    """FLOP/s of a square n x n matmul (numpy's BLAS, all its threads): the machine's matmul peak."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    return 2.0 * n ** 3 / _best_time(lambda: a @ b, min_time, 50)


def mnist_step_times(dtypes=("float32", "float64"), repeats: int = 3) -> list[tuple[str, float, float, float]]:
    """One outer step of the MNIST study's setting (N = M = 100 in d = 784, the 784-64-1024-64-1
    ReLU critic with dropout, 20 Adam critic steps, penalty on the particles), per dtype:
    (dtype, seconds per outer step, matmul FLOP/s it reaches, the machine's matmul peak FLOP/s
    measured just after)."""
    from particlegan.store.config import resolve_config
    from particlegan.engine.dynamics import build_model, outer_step

    out = []
    for dt in dtypes:
        cfg = resolve_config(overrides=[
            "target.kind=ring", "target.dim=784", "target.n_samples=100", "particles.n=100",
            "critic.type=mlp", f"critic.widths={list(MNIST_WIDTHS)}", "critic.dropout=[0, 0.2, 0]",
            "critic.output_bias=false", "critic.optimizer=adam", "critic.amsgrad=true", "critic.adam_reset=true",
            "critic.weight_decay=1e-4", "loss.penalty=fake", "loss.penalty_weight=1.25",
            "loss.penalty_form=mean_grad", "generator.normalization=none", "dynamics.eta_g=1e-4",
            "dynamics.eta_d=4.64e-4", "dynamics.critic_steps=20", "dynamics.critic_steps_startup=0",
            f"run.dtype={dt}"])
        model, state = build_model(cfg)
        outer_step(model, state)  # warm-up (allocations, BLAS threads)
        t = _best_time(lambda: outer_step(model, state), 0.5, repeats)
        flops = mlp_step_flops((784, *MNIST_WIDTHS, 1), 100, 100, 20)
        out.append((dt, t, flops / t, matmul_peak_flops(dt)))
    return out


def format_mnist_steps(rows) -> str:
    """The text of :func:`mnist_step_times`."""
    lines = ["one outer step of the MNIST study (N = M = 100, d = 784, critic 784-64-1024-64-1, 20 critic steps):"]
    lines += [f"  {dt:<8} {t * 1e3:7.1f} ms   matmul {f / 1e9:6.1f} GFLOP/s = {f / peak:4.0%} of the "
              f"{peak / 1e9:.0f} GFLOP/s peak (1024^3 matmul, same run)" for dt, t, f, peak in rows]
    return "\n".join(lines)


# ------------------------------------------------------------ sweep-scale runs ------------
PAPER_GRID_RUNS = 26 * 26 * 3  # the paper-resolution mode-collapse grid (phi x eta_D x seeds)

# run in a fresh process with the sweep workers' thread settings; prints one JSON line
_SWEEP_RUN_SCRIPT = """
import json, sys, time, tomllib
import numpy as np
from numba import njit
from particlegan.store.config import resolve_config
from particlegan.engine.simulate import simulate
from particlegan.maths import pairmath as pm
from particlegan.bench import matmul_peak_flops
path, backend, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(path, "rb") as fh:
    user = tomllib.load(fh)
cells = [("0.0", "0.001"), ("0.3", "0.01"), ("0.1", "0.003"), ("0.98", "0.001")]
times = []
for i in range(runs + 1):  # the first run compiles (cpu) and is not counted
    phi, eta = cells[i % len(cells)]
    cfg = resolve_config(user, [f"run.backend={backend}", f"generator.phi={phi}", f"dynamics.eta_d={eta}"], seed=i)
    t = time.perf_counter(); simulate(cfg); times.append(time.perf_counter() - t)
@njit(fastmath={"contract", "reassoc", "arcp", "nsz", "afn"})  # the cpu backend's flags
def sweep_sincos(x, out):
    for i in range(x.shape[0]):
        s, c = pm.sincos_in_dtype(x[i])
        out[i] = s + c
n, K = cfg["particles"]["n"], cfg["critic"]["features"]
x = np.random.default_rng(0).uniform(-20, 20, n * K); out = np.empty_like(x); sweep_sincos(x, out)
best = float("inf")  # one outer step's phases (N K, in cache as in the run), best of 50
for _ in range(50):
    t = time.perf_counter(); sweep_sincos(x, out); best = min(best, time.perf_counter() - t)
peak = matmul_peak_flops("float64", n=512, min_time=0.2)  # the worker's one BLAS thread
print(json.dumps({"times": times[1:], "steps": cfg["run"]["steps"], "n": n, "features": K,
                  "dim": cfg["target"]["dim"], "critic_steps": cfg["dynamics"]["critic_steps"],
                  "penalty": cfg["loss"]["penalty"] != "none", "per_sincos": best / x.size,
                  "matmul_flops": peak}))
"""


def sweep_run_times(config_path: str, backends=("numpy", "cpu"), runs: int = 3) -> list[dict]:
    """Whole runs of a study config (build, start-up critic steps, every outer step, the
    observables) as a sweep worker runs them: a fresh process per backend with one numba and one
    BLAS thread. Returns per backend: seconds per run (``times``), ``steps``, N, features K,
    ``dim``, ``critic_steps``, ``penalty`` (bool), and the worker's machine rates measured in the
    same process: seconds per float64 (sin, cos) pair of the vectorised polynomial over one
    step's N K phases (``per_sincos``, best of 50) and the one-thread float64 matmul FLOP/s
    (``matmul_flops``), from which :func:`outer_step_limit` forms the run-step's floor."""
    import json
    import subprocess
    import sys

    from particlegan.sweeps.sweep import WORKER_THREAD_ENV

    env = {**os.environ, **WORKER_THREAD_ENV, "PARTICLEGAN_QUIET": "1"}
    out = []
    for backend in backends:
        proc = subprocess.run([sys.executable, "-c", _SWEEP_RUN_SCRIPT, str(config_path), backend, str(runs)],
                              env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ConfigError(f"sweep-run measurement failed: {proc.stderr.strip().splitlines()[-1:]}")
        out.append({"backend": backend, **json.loads(proc.stdout.strip().splitlines()[-1])})
    return out


def outer_step_work(n: int, features: int, dim: int, critic_steps: int, penalty: bool = True) -> tuple[int, float]:
    """Transcendentals and FLOPs of one outer step of N particles against a random-feature critic
    (K features in d dimensions, IPM objective, n_c critic steps) as the cpu backend computes it.

    * (sin, cos) pairs: N K (the particles' features; the targets' are computed once).
    * FLOPs: phases 2 N K d; the feature mean N K; per critic step with the gradient penalty the
      input gradients 2 N K d, their pull-back 2 N K d + 2 N K (without a penalty a critic step
      is O(K)); the forces 2 N K d. Total N K (4 d + 1 + n_c (4 d + 2)) with the penalty.
    The O(K) optimizer updates and the O(N d) coupling are left out (under 1% here), and so are
    the observables (every ``record_every`` steps). The setting has no exp in its outer step.

    Returns
    -------
    (sincos pairs, FLOPs) per outer step.
    """
    nk = n * features
    per_critic_step = nk * (4 * dim + 2) if penalty else 0
    return nk, float(nk * (4 * dim + 1) + critic_steps * per_critic_step)


def outer_step_limit(row: dict) -> float:
    """Seconds one outer step of a :func:`sweep_run_times` row costs at the machine's measured
    rates: N K (sin, cos) pairs at ``per_sincos`` plus :func:`outer_step_work`'s FLOPs at the
    one-thread matmul rate (optimistic: the d = 2 passes are vector- and load-bound, not GEMMs)."""
    pairs, flops = outer_step_work(row["n"], row["features"], row["dim"], row["critic_steps"], row["penalty"])
    return pairs * row["per_sincos"] + flops / row["matmul_flops"]


def format_sweep_runs(rows, config_path: str, grid_runs: int = PAPER_GRID_RUNS, workers: int = 2) -> str:
    """The text of :func:`sweep_run_times`: seconds per run and per run-step, the projected wall
    time of ``grid_runs`` runs on ``workers`` workers, and the run-step against the machine's
    limit for its work (:func:`outer_step_limit`, with the sin/cos and FLOP parts)."""
    lines = [f"whole runs of {config_path} (1 thread, as a sweep worker; {grid_runs} runs on {workers} workers):"]
    for r in rows:
        per_run = sum(r["times"]) / len(r["times"])
        per_step = per_run / r["steps"]
        pairs, flops = outer_step_work(r["n"], r["features"], r["dim"], r["critic_steps"], r["penalty"])
        limit = outer_step_limit(r)
        lines.append(f"  {r['backend']:<6} {per_run:6.2f} s per run  {per_step * 1e3:6.3f} ms per run-step  "
                     f"grid {grid_runs * per_run / workers / 60:6.1f} min  "
                     f"{per_step / limit:5.1f}x the machine limit")
    r = rows[-1]
    lines.append(f"  machine limit of one outer step: {outer_step_limit(r) * 1e3:.3f} ms = {pairs} sin/cos pairs at "
                 f"{r['per_sincos'] * 1e9:.2f} ns + {flops / 1e6:.2f} MFLOP at {r['matmul_flops'] / 1e9:.1f} GFLOP/s "
                 "(1-thread matmul); start-up critic steps and observables add to the run-step, not to the limit")
    return "\n".join(lines)


_ENSEMBLE_SCRIPT = """
import json, sys, time, tomllib
from particlegan.store.config import resolve_config
from particlegan.engine.simulate import simulate
from particlegan.engine.ensemble import simulate_ensemble
path, backend, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
sizes = [int(v) for v in sys.argv[4].split(",")]
with open(path, "rb") as fh:
    user = tomllib.load(fh)
cells = [("0.0", "0.001"), ("0.3", "0.01"), ("0.1", "0.003"), ("0.98", "0.001")]
def cfgs(n):
    return [resolve_config(user, [f"run.backend={backend}", f"run.steps={steps}", f"generator.phi={cells[i % 4][0]}",
                                  f"dynamics.eta_d={cells[i % 4][1]}"], seed=i) for i in range(n)]
simulate(cfgs(1)[0]); simulate_ensemble(cfgs(1)); simulate_ensemble(cfgs(2))  # compile, warm up: not counted
group = cfgs(4)
t = time.perf_counter()
for cfg in group:
    simulate(cfg)
rows = [{"size": 0, "seconds": (time.perf_counter() - t) / len(group)}]  # unbatched, per run
for n in sizes:
    group = cfgs(n)
    t = time.perf_counter(); simulate_ensemble(group); rows.append({"size": n, "seconds": (time.perf_counter() - t) / n})
print(json.dumps({"steps": steps, "rows": rows}))
"""


def ensemble_run_times(config_path: str, backend: str = "cpu", steps: int = 100,
                       sizes=(1, 16, 64, 256)) -> dict:
    """Seconds per run of a study config advanced as batched ensembles of each size in
    ``sizes`` (:func:`particlegan.engine.ensemble.simulate_ensemble`), and unbatched (size 0 in
    the rows: :func:`particlegan.engine.simulate.simulate`, one run after another), with
    ``steps`` outer steps, in a fresh process with one numba and one BLAS thread as a sweep
    worker. Returns {"steps", "backend", "rows": [{"size", "seconds"}, ...]}."""
    import json
    import subprocess
    import sys

    from particlegan.sweeps.sweep import WORKER_THREAD_ENV

    env = {**os.environ, **WORKER_THREAD_ENV, "PARTICLEGAN_QUIET": "1"}
    proc = subprocess.run([sys.executable, "-c", _ENSEMBLE_SCRIPT, str(config_path), backend, str(steps),
                           ",".join(str(n) for n in sizes)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ConfigError(f"ensemble measurement failed: {proc.stderr.strip().splitlines()[-1:]}")
    return {"backend": backend, **json.loads(proc.stdout.strip().splitlines()[-1])}


def format_ensemble_runs(res: dict, config_path: str) -> str:
    """The text of :func:`ensemble_run_times`: ms per run-step per group size and its ratio to
    the unbatched path measured in the same process."""
    steps = res["steps"]
    base = next(r["seconds"] for r in res["rows"] if r["size"] == 0) / steps
    lines = [f"batched ensembles of {config_path} ({res['backend']}, {steps} steps, 1 thread):",
             f"  unbatched   {base * 1e3:6.3f} ms per run-step"]
    for r in res["rows"]:
        if r["size"]:
            per = r["seconds"] / steps
            lines.append(f"  group {r['size']:<5} {per * 1e3:6.3f} ms per run-step  "
                         f"{base / per:5.2f}x the unbatched speed")
    return "\n".join(lines)


def format_side_measurements(startup, records) -> str:
    """The text of :func:`startup_times` and :func:`record_times` printed below the table."""
    lines = []
    if startup:
        base = startup[0][1]
        lines.append("fixed cost of a short `particlegan run` (fresh process, N = 128, 10 steps):")
        lines += [f"  {label:<18} {sec:6.2f} s   ({sec - base:+.2f} s over numpy)" for label, sec in startup]
    if records:
        lines.append("recording one finished run in results.csv (k rows already there):")
        lines += [f"  k = {k:<6} append {a * 1e3:7.3f} ms   rewrite (before) {r * 1e3:7.2f} ms"
                  for k, a, r in records]
    return "\n".join(lines)


# ------------------------------------------------------------------------- reporting -------
def format_table(rows: Iterable[BenchRow]) -> str:
    """One text table: a line per (op, n, m, d, dtype), a column per method (pairs/s, or steps/s).

    Then the cpu backend's speed-up over the fastest baseline (numpy/scipy) and over each
    installed peer (cpu/torch, cpu/pykeops), and the peak memory of each method (MiB).
    """
    rows = list(rows)
    if not rows:
        return "(no measurements)"
    meths = [m for m in METHODS if any(r.method == m for r in rows)]
    meths += sorted({r.method for r in rows} - set(meths))
    peers = [p for p in PEERS if p in meths]
    keys = []
    table: dict[tuple, dict[str, BenchRow]] = {}
    for r in rows:
        key = (r.op, r.n, r.m, r.d, r.dtype)
        if key not in table:
            keys.append(key)
            table[key] = {}
        table[key][r.method] = r
    head = (["op", "n", "m", "d", "dtype"] + meths + ["cpu/best_baseline"] + [f"cpu/{p}" for p in peers]
            + [f"MiB {m}" for m in meths])
    lines = []
    for key in keys:
        vals = {m: r.pairs_per_s for m, r in table[key].items()}
        cells = [key[0], str(key[1]), str(key[2]), str(key[3]), key[4]]
        cells += [f"{vals[m]:.3g}" if m in vals else "-" for m in meths]
        base = [vals[m] for m in BASELINES if m in vals]
        cells.append(f"{vals['cpu'] / max(base):.1f}x" if base and "cpu" in vals else "-")
        cells += [f"{vals['cpu'] / vals[p]:.2f}x" if p in vals and "cpu" in vals else "-" for p in peers]
        cells += [f"{table[key][m].peak_mb:.0f}" if m in table[key] and math.isfinite(table[key][m].peak_mb)
                  else "-" for m in meths]
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(head)]

    def fmt(cells):
        return "  ".join(c.rjust(wd) if i >= 1 else c.ljust(wd) for i, (c, wd) in enumerate(zip(cells, widths)))
    out = ["pair interactions per second (op 'step': simulator steps per second); MiB: peak memory",
           fmt(head), "  ".join("-" * wd for wd in widths)]
    out += [fmt(c) for c in lines]
    missing = missing_peers()
    if missing:
        out.append(f"peers not installed, skipped: {', '.join(missing)}")
    return "\n".join(out)


def write_csv(rows: Iterable[BenchRow], path) -> None:
    """Write rows with columns exactly op,method,n,m,d,dtype,pairs_per_s,peak_mb."""
    try:
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(COLUMNS)
            for r in rows:
                writer.writerow([r.op, r.method, r.n, r.m, r.d, r.dtype, repr(float(r.pairs_per_s)),
                                 repr(float(r.peak_mb))])
    except OSError as exc:
        raise ConfigError(f"cannot write benchmark CSV '{path}': {exc.strerror}") from None


def read_csv(path) -> list[BenchRow]:
    """Read a CSV written by :func:`write_csv` back into rows."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return [BenchRow(r["op"], r["method"], int(r["n"]), int(r["m"]), int(r["d"]), r["dtype"],
                         float(r["pairs_per_s"]), float(r.get("peak_mb") or "nan")) for r in reader]
