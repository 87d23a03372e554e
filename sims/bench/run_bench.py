"""Run the pair-sum benchmark (same function as `particlegan bench`) and print its table.

Usage: python sims/bench/run_bench.py [--quick] [--csv PATH] [--sizes 1000,10000] [--dims 2,3]
       [--dtypes float64,float32] [--methods cpu,scipy_cdist] [--step-n 10000] [--table-only]
       [--mnist-only] [--sweep-only]
"""
import argparse
import sys
from pathlib import Path

from particlegan.numba_setup import configure

configure()  # as the particlegan command does: before numpy (OpenBLAS) and numba load

from particlegan.bench import (STEP_N, ensemble_run_times, format_ensemble_runs, format_mnist_steps,
                               format_side_measurements, format_sweep_runs, format_table, mnist_step_times,
                               record_times, run_benchmark, startup_times, sweep_run_times, write_csv)
from particlegan.errors import ParticleGANError


def _ints(text):
    return tuple(int(v) for v in text.split(",") if v)


def _names(text):
    return tuple(v for v in text.split(",") if v)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, about a minute on 2 cores")
    parser.add_argument("--csv", default=None, help="also write op,method,n,m,d,dtype,pairs_per_s rows here")
    parser.add_argument("--sizes", type=_ints, default=None, help="N = M values, comma separated")
    parser.add_argument("--dims", type=_ints, default=None, help="dimensions d, comma separated")
    parser.add_argument("--dtypes", type=_names, default=("float64",), help="float64 and/or float32")
    parser.add_argument("--methods", type=_names, default=None, help="subset of the available methods")
    parser.add_argument("--step-n", type=int, default=STEP_N, help="N = M of the simulator-step rows (0: skip)")
    parser.add_argument("--table-only", action="store_true",
                        help="skip the run start-up, results.csv bookkeeping and MNIST-step measurements")
    parser.add_argument("--mnist-only", action="store_true",
                        help="only the MNIST outer step against the machine's matmul peak")
    parser.add_argument("--sweep-only", action="store_true",
                        help="only whole sims/mode_collapse runs per backend, the paper grid's projected time "
                             "and the time per run-step of batched ensembles (group sizes 1, 16, 64, 256)")
    args = parser.parse_args(argv)
    study = str(Path(__file__).resolve().parents[1] / "mode_collapse" / "config.toml")
    if args.sweep_only:
        print(format_sweep_runs(sweep_run_times(study), "sims/mode_collapse/config.toml"))
        print(format_ensemble_runs(ensemble_run_times(study), "sims/mode_collapse/config.toml"))
        return 0
    if args.mnist_only:
        print(format_mnist_steps(mnist_step_times(args.dtypes if args.dtypes != ("float64",) else
                                                  ("float32", "float64"))))
        return 0
    try:
        rows = run_benchmark(quick=args.quick, sizes=args.sizes, dims=args.dims, dtypes=args.dtypes,
                             methods=args.methods, step_n=args.step_n)
        if args.csv:
            write_csv(rows, args.csv)
    except ParticleGANError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(rows))
    if not args.table_only:
        print(format_side_measurements(startup_times(), record_times()))
        print(format_mnist_steps(mnist_step_times()))
        print(format_sweep_runs(sweep_run_times(study), "sims/mode_collapse/config.toml"))
        print(format_ensemble_runs(ensemble_run_times(study), "sims/mode_collapse/config.toml"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
