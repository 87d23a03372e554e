"""Benchmark: the baselines compute the right sums, rows/CSV/table format, hooks, CLI and script."""
import csv
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from particlegan import bench
from particlegan.cli import main
from particlegan.errors import ConfigError
from particlegan.maths.kernels import kernel_grad_matrix, kernel_matrix, make_kernel

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("method", ["numpy_broadcast", "scipy_cdist", "numpy_blas"])
@pytest.mark.parametrize("op", ["kernel_sum", "kernel_grad"])
@pytest.mark.parametrize("d", [2, 7])
def test_baselines_compute_the_gaussian_sums(method, op, d, monkeypatch):
    monkeypatch.setattr(bench, "_CHUNK_ELEMS", 50 * d)  # several row chunks
    rng = np.random.default_rng(d)
    X, Y, w = rng.normal(size=(30, d)), rng.normal(size=(25, d)), rng.normal(size=25)
    spec = make_kernel("gaussian", sigma=1.0)
    got = bench._method_fn(method)(op, X, Y, w, 0.5)
    if op == "kernel_sum":
        expect = kernel_matrix(X, Y, spec) @ w
    else:
        expect = np.einsum("ijk,j->ik", kernel_grad_matrix(X, Y, spec), w)
    np.testing.assert_allclose(got, expect, rtol=1e-10, atol=1e-12)


def test_run_benchmark_rows_and_table():
    rows = bench.run_benchmark(quick=True, sizes=(40, 80), dims=(2,), methods=("numpy_broadcast", "scipy_cdist"),
                               extra_rows=[bench.BenchRow("step", "cpu", 80, 80, 2, "float64", 123.0)])
    got = {(r.op, r.method, r.n) for r in rows}
    for op in ("kernel_sum", "kernel_grad"):
        for meth in ("numpy_broadcast", "scipy_cdist"):
            assert {(op, meth, 40), (op, meth, 80)} <= got
    assert ("step", "cpu", 80) in got
    assert all(math.isfinite(r.pairs_per_s) and r.pairs_per_s > 0 for r in rows)
    table = bench.format_table(rows)
    assert "numpy_broadcast" in table and "scipy_cdist" in table
    assert any(line.startswith("step") and "123" in line for line in table.splitlines())


def test_budget_skips_sizes_that_would_take_too_long():
    rows = bench.run_benchmark(sizes=(30, 3000), dims=(2,), methods=("numpy_broadcast",), ops=("kernel_sum",),
                               budget_s=1e-9)
    assert [r.n for r in rows] == [30]  # the smallest size is always measured, the next is skipped


def test_row_hooks_add_rows(monkeypatch):
    monkeypatch.setattr(bench, "ROW_HOOKS", [lambda quick: [bench.BenchRow("step", "cpu", 10, 10, 2, "float64",
                                                                           5.0 if quick else 1.0)]])
    rows = bench.run_benchmark(quick=True, sizes=(20,), dims=(2,), methods=("scipy_cdist",), ops=("kernel_sum",))
    assert rows[-1] == bench.BenchRow("step", "cpu", 10, 10, 2, "float64", 5.0)


def test_csv_has_exact_columns_and_round_trips(tmp_path):
    rows = [bench.BenchRow("kernel_sum", "cpu", 1000, 1000, 2, "float64", 1.25e9, 12.5),
            bench.BenchRow("step", "cpu", 256, 256, 2, "float32", 31.5, 3.0)]
    path = tmp_path / "b.csv"
    bench.write_csv(rows, path)
    with open(path, newline="") as fh:
        assert next(csv.reader(fh)) == ["op", "method", "n", "m", "d", "dtype", "pairs_per_s", "peak_mb"]
    assert bench.read_csv(path) == rows


@pytest.mark.parametrize("kwargs, bad", [(dict(methods=("gpu9",)), "gpu9"), (dict(ops=("kernel_hess",)), "kernel_hess"),
                                         (dict(dtypes=("float16",)), "float16")])
def test_bad_arguments_are_config_errors(kwargs, bad):
    with pytest.raises(ConfigError, match=bad):
        bench.run_benchmark(sizes=(10,), dims=(2,), **kwargs)


def test_unavailable_method_is_a_config_error():
    missing = [m for m in bench.METHODS if m not in bench.available_methods()]
    if not missing:
        pytest.skip("every method is available here")
    with pytest.raises(ConfigError, match=missing[0]):
        bench.run_benchmark(sizes=(10,), dims=(2,), methods=(missing[0],))


def test_cli_bench_writes_csv_and_prints_table(tmp_path, monkeypatch):
    calls = []

    def fake_run(quick=False, **kw):
        calls.append(quick)
        return [bench.BenchRow("kernel_sum", "cpu", 10, 10, 2, "float64", 7.0)]
    monkeypatch.setattr(bench, "run_benchmark", fake_run)
    monkeypatch.setattr(bench, "startup_times", lambda: [("numpy", 1.0), ("cpu, warm cache", 1.5)])
    monkeypatch.setattr(bench, "record_times", lambda: [(1, 1e-4, 1e-3), (2028, 1e-4, 0.09)])
    path = tmp_path / "out.csv"
    result = CliRunner().invoke(main, ["bench", "--quick", "--csv", str(path)])
    assert result.exit_code == 0, result.output
    assert calls == [True] and "kernel_sum" in result.output
    assert "+0.50 s over numpy" in result.output and "k = 2028" in result.output
    assert bench.read_csv(path)[0].pairs_per_s == 7.0
    bad = CliRunner().invoke(main, ["bench", "--csv", str(tmp_path / "no" / "such" / "dir.csv")])
    assert bad.exit_code == 2 and "cannot write benchmark CSV" in bad.output


def test_script_runs_the_same_function(tmp_path):
    out = tmp_path / "s.csv"
    proc = subprocess.run([sys.executable, "sims/bench/run_bench.py", "--sizes", "30", "--dims", "2",
                           "--methods", "scipy_cdist", "--csv", str(out), "--table-only"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "scipy_cdist" in proc.stdout
    assert {r.op for r in bench.read_csv(out)} == {"kernel_sum", "kernel_grad"}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_simulator_step_rows_time_the_default_model(dtype):
    rows = bench.simulator_step_rows(n=200, methods=("numpy_broadcast", "cpu"), dtype=dtype, min_time=0.0,
                                     max_repeats=2)
    assert [(r.op, r.method, r.n, r.m, r.d, r.dtype) for r in rows] == [
        ("step", meth, 200, 200, 2, dtype) for meth in ("numpy_broadcast", "cpu")]
    assert all(math.isfinite(r.pairs_per_s) and r.pairs_per_s > 0 for r in rows)


def test_run_benchmark_adds_step_rows_for_backend_methods_only():
    rows = bench.run_benchmark(quick=True, sizes=(30,), dims=(2,), methods=("scipy_cdist", "cpu"),
                               ops=("kernel_sum",), step_n=150)
    assert [(r.method, r.n) for r in rows if r.op == "step"] == [("cpu", 150)]


def test_peak_memory_sees_a_temporary_allocation():
    _, small = bench.peak_memory_mb(lambda: np.ones(10))
    result, big = bench.peak_memory_mb(lambda: float(np.ones(40 * 2 ** 20 // 8).sum()))  # 40 MiB, freed
    assert result == 40 * 2 ** 20 // 8
    assert 35 < big < 80 and small < 5


def test_step_rows_report_the_run_peak_memory():
    (row,) = bench.simulator_step_rows(n=2000, methods=("numpy_broadcast",), min_time=0.0, max_repeats=1)
    # at least the targets' and particles' arrays; far below keeping all (M, K) features thrice
    assert 0.05 < row.peak_mb < 200


def test_record_times_compare_appending_with_rewriting():
    (k1, a1, r1), (k2, a2, r2) = bench.record_times(table_sizes=(1, 400), repeats=4)
    assert (k1, k2) == (1, 400) and min(a1, a2, r1, r2) > 0  # measured; never compared here


def test_torch_peer_computes_the_same_sums_when_installed():
    pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    X, Y, w = rng.normal(size=(30, 4)), rng.normal(size=(25, 4)), rng.normal(size=25)
    for op in ("kernel_sum", "kernel_grad"):
        np.testing.assert_allclose(bench._method_fn("torch")(op, X, Y, w, 0.5),
                                   bench._numpy_blas(op, X, Y, w, 0.5), rtol=1e-10, atol=1e-12)


def test_table_names_missing_peers(monkeypatch):
    monkeypatch.setattr(bench, "missing_peers", lambda: ("pykeops",))
    table = bench.format_table([bench.BenchRow("kernel_sum", "cpu", 10, 10, 2, "float64", 7.0, 1.0)])
    assert "peers not installed, skipped: pykeops" in table


def test_mlp_step_flops_counts_the_matmuls_of_the_fused_critic_step():
    """Count by hand for sizes (3, 4, 1), N = 2, M = 3, one critic step: S = 3*4 + 4*1 = 16;
    per critic step forward + backward + parameter gradient on B = 5 rows and the penalty's
    tangent + parameter passes on P = 2 rows = 16 * (3*5 + 2*2) MACs; forces 16 * 2 * 2 MACs."""
    assert bench.mlp_step_flops((3, 4, 1), 2, 3, 1) == 2 * 16 * (19 + 4)
    assert bench.mlp_step_flops((3, 4, 1), 2, 3, 20) == 2 * 16 * (20 * 19 + 4)


def test_mnist_step_rows_and_text(monkeypatch):
    monkeypatch.setattr(bench, "MNIST_WIDTHS", (8, 16, 8))  # small net: the machinery, not the numbers
    rows = bench.mnist_step_times(dtypes=("float32",), repeats=1)
    (dt, t, flops, peak), = rows
    assert dt == "float32" and t > 0 and flops > 0 and peak > 0
    text = bench.format_mnist_steps(rows)
    assert "float32" in text and "GFLOP/s" in text and "of the" in text


def test_sweep_run_times_time_whole_runs_in_a_worker_like_process(tmp_path):
    cfg = tmp_path / "tiny.toml"  # a few steps of a small run: the machinery, not the numbers
    cfg.write_text("[particles]\nn = 16\n[target]\nn_samples = 64\n[critic]\nfeatures = 32\n"
                   "[dynamics]\ncritic_steps_startup = 2\n[run]\nsteps = 4\nrecord_every = 2\n")
    rows = bench.sweep_run_times(str(cfg), backends=("numpy",), runs=1)
    (row,) = rows
    assert row["backend"] == "numpy" and len(row["times"]) == 1 and row["times"][0] > 0
    assert (row["steps"], row["n"], row["features"], row["dim"], row["critic_steps"]) == (4, 16, 32, 2, 5)
    assert row["penalty"] is True and 0 < row["per_sincos"] < 1e-6 and row["matmul_flops"] > 1e6


def test_sweep_run_text_projects_the_grid_from_the_mean_run():
    rows = [{"backend": "cpu", "times": [2.0, 4.0], "steps": 1000, "n": 128, "features": 512, "dim": 2,
             "critic_steps": 5, "penalty": True, "per_sincos": 1e-8, "matmul_flops": 1e10}]
    text = bench.format_sweep_runs(rows, "x.toml", grid_runs=600, workers=2)
    # mean run 3 s -> 3 ms per run-step; 600 runs / 2 workers * 3 s = 15 min
    assert "3.00 s per run" in text and "3.000 ms per run-step" in text and "grid   15.0 min" in text
    # limit by hand: 128*512 = 65536 pairs * 10 ns = 0.65536 ms; FLOPs 65536 * (4*2 + 1 + 5*(4*2 + 2))
    # = 3.866624e6 at 1e10/s = 0.3866624 ms; 1.0420224 ms in all; 3 ms / 1.042 ms = 2.88
    assert "2.9x the machine limit" in text
    assert "1.042 ms = 65536 sin/cos pairs at 10.00 ns + 3.87 MFLOP at 10.0 GFLOP/s" in text


def test_outer_step_work_counts_the_penalty_passes_only_with_a_penalty():
    # N K = 10 * 20 = 200; d = 3: phases + mean + forces 200 * 13, a penalised critic step 200 * 14
    assert bench.outer_step_work(10, 20, 3, 4, penalty=True) == (200, 200.0 * (13 + 4 * 14))
    assert bench.outer_step_work(10, 20, 3, 4, penalty=False) == (200, 200.0 * 13)


def test_ensemble_run_times_measure_groups_against_the_unbatched_path(tmp_path):
    cfg = tmp_path / "tiny.toml"  # the machinery, not the numbers
    cfg.write_text("[particles]\nn = 16\n[target]\nn_samples = 64\n[critic]\nfeatures = 32\n"
                   "[dynamics]\ncritic_steps_startup = 2\n[run]\nrecord_every = 2\n")
    res = bench.ensemble_run_times(str(cfg), backend="numpy", steps=4, sizes=(1, 3))
    assert res["steps"] == 4 and [r["size"] for r in res["rows"]] == [0, 1, 3]
    assert all(r["seconds"] > 0 for r in res["rows"])


def test_ensemble_text_gives_ms_per_run_step_and_the_ratio_to_unbatched():
    res = {"backend": "cpu", "steps": 100, "rows": [{"size": 0, "seconds": 0.2}, {"size": 16, "seconds": 0.1}]}
    text = bench.format_ensemble_runs(res, "x.toml")
    # 0.2 s / 100 steps = 2 ms unbatched; 1 ms in a group of 16 -> 2x
    assert " 2.000 ms per run-step" in text and "group 16     1.000 ms per run-step   2.00x" in text
