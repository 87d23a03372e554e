"""Reading and reducing sweep results: results tables, seed averages, convergence times and
fits of damped oscillations (the error dynamics of effective-gan-spec A2.9).

* :func:`load_results` reads a sweep's results.csv (numeric columns as floats).
* :func:`seed_average` groups rows by swept keys: mean, standard deviation, standard error.
* :func:`convergence_time` is the first recorded step after which a series stays below a
  threshold.
* :func:`oscillation_fit` fits ``e(t) ~ A exp(-gamma t) cos(omega t + p) + c``.
* :func:`load_run` reads a run directory (result.npz arrays, summary, config).
* :func:`critical_penalties` evaluates the theory lines of A2.9 for a run's config.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from particlegan.errors import DataError

# columns of results.csv that stay text even when they look like numbers (a run id can be all
# digits)
TEXT_COLUMNS = ("run_id", "status", "error")


def _as_float(text: str) -> float | None:
    if text == "":
        return math.nan
    try:
        return float(text)
    except ValueError:
        return None


def load_results(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a sweep's results.csv as dicts.

    Parameters
    ----------
    path : the sweep directory or the CSV file itself.

    Returns
    -------
    list of dicts, one per run, in file order. A column whose non-empty cells all parse as
    numbers is returned as floats (empty cells become nan); run_id, status, error and any other
    column stay strings.

    Raises
    ------
    DataError : the file does not exist or is not a results table.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "results.csv"
    try:
        with open(p, newline="") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames
            rows = list(reader)
    except FileNotFoundError:
        raise DataError(f"no results table '{p}' (run `particlegan sweep ... --out DIR` first)") from None
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise DataError(f"results table '{p}' cannot be read: {exc}") from None
    if not header or "run_id" not in header or "status" not in header:
        raise DataError(f"'{p}' is not a sweep results table (no run_id/status columns)")
    for col in header:
        if col in TEXT_COLUMNS:
            continue
        parsed = [_as_float(r[col] or "") for r in rows]
        if all(v is not None for v in parsed) and any(r[col] for r in rows):
            for r, v in zip(rows, parsed):
                r[col] = v
    return rows


def columns(rows: Sequence[Mapping]) -> list[str]:
    """Column names of loaded rows (empty list for no rows)."""
    return list(rows[0].keys()) if rows else []


def _sort_key(value: Any):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def seed_average(rows: Iterable[Mapping], keys: Sequence[str], observable: str,
                 include_failed: bool = False) -> list[dict[str, Any]]:
    """Average ``observable`` over the runs (seeds) that share the values of ``keys``.

    Failed runs are left out (their observables are empty) unless ``include_failed``; NaN values
    are left out; infinite values (e.g. a convergence time that was never reached) are kept and
    make the mean infinite.

    Returns
    -------
    list of dicts sorted by the key values, each with the key values and "mean", "std"
    (sample standard deviation, ddof=1), "sem" (std / sqrt(n); nan for n < 2), "n" (runs
    averaged), "values" (the individual values).
    """
    keys = list(keys)
    groups: dict[tuple, list[float]] = {}
    for row in rows:
        for k in (*keys, observable):
            if k not in row:
                raise DataError(f"no column {k!r} in the results (columns: {', '.join(row)})")
        if not include_failed and row.get("status") == "failed":
            continue
        group = groups.setdefault(tuple(row[k] for k in keys), [])
        value = row[observable]
        if isinstance(value, str):
            raise DataError(f"column {observable!r} is not numeric")
        if not math.isnan(value):
            group.append(float(value))
    out = []
    for group_key in sorted(groups, key=lambda t: tuple(_sort_key(v) for v in t)):
        values = np.asarray(groups[group_key], dtype=float)
        n = len(values)
        with np.errstate(invalid="ignore"):
            mean = float(values.mean()) if n else math.nan
            std = float(values.std(ddof=1)) if n > 1 else math.nan
        entry = dict(zip(keys, group_key))
        entry.update(mean=mean, std=std, sem=std / math.sqrt(n) if n > 1 else math.nan, n=n,
                     values=values.tolist())
        out.append(entry)
    return out


def convergence_time(steps: Sequence[float], values: Sequence[float], threshold: float) -> float:
    """First recorded step after which ``values`` stays strictly below ``threshold``.

    Parameters
    ----------
    steps : (R,) recorded steps (or times), increasing.
    values : (R,) the series at those steps; NaN counts as not below.
    threshold : the level.

    Returns
    -------
    float : ``steps[i]`` for the smallest i with ``values[i:] < threshold``; ``inf`` when the
    last value is not below the threshold (never converged, or no data).
    """
    steps = np.asarray(steps, dtype=float)
    values = np.asarray(values, dtype=float)
    if steps.shape != values.shape or steps.ndim != 1:
        raise ValueError(f"steps and values must be 1-d of the same length, got {steps.shape} "
                         f"and {values.shape}")
    below = values < threshold  # NaN compares False
    if len(below) == 0 or not below[-1]:
        return math.inf
    above = np.flatnonzero(~below)
    first = above[-1] + 1 if len(above) else 0
    return float(steps[first])


@dataclass(frozen=True)
class OscillationFit:
    """Result of :func:`oscillation_fit`: ``e(t) ~ amplitude exp(-gamma s) cos(omega s + phase) + offset``
    with ``s = t - t0`` (t0 = first time after the transient). ``rmse``: root mean square
    residual of the fit; ``n``: samples used."""

    gamma: float
    omega: float
    amplitude: float
    phase: float
    offset: float
    t0: float
    rmse: float
    n: int

    @property
    def period(self) -> float:
        return 2 * math.pi / self.omega if self.omega > 0 else math.inf

    @property
    def damping_ratio(self) -> float:
        """zeta = gamma / sqrt(gamma^2 + omega^2) (1 = critical damping)."""
        return self.gamma / math.hypot(self.gamma, self.omega) if (self.gamma or self.omega) else math.nan

    def __call__(self, t) -> np.ndarray:
        s = np.asarray(t, dtype=float) - self.t0
        return self.amplitude * np.exp(-self.gamma * s) * np.cos(self.omega * s + self.phase) + self.offset


def _damped_cosine(s, amplitude, gamma, omega, phase, offset):
    return amplitude * np.exp(-gamma * s) * np.cos(omega * s + phase) + offset


def _initial_guesses(s: np.ndarray, e: np.ndarray) -> list[tuple[float, ...]]:
    """Starting points for the fit: oscillation frequencies from the FFT peaks, decay rate and
    phase from the analytic signal (Hilbert envelope)."""
    from scipy.signal import find_peaks, hilbert

    # resample on a uniform grid: the FFT and the envelope need even spacing
    n = len(s)
    grid = np.linspace(s[0], s[-1], n)
    dt = grid[1] - grid[0]
    u = np.interp(grid, s, e)
    offset = float(np.median(u[-max(3, n // 5):]))
    centred = u - offset
    pad = 8 * n
    power = np.abs(np.fft.rfft(centred * np.hanning(n), pad)) ** 2
    freqs = 2 * np.pi * np.fft.rfftfreq(pad, dt)
    peaks, _ = find_peaks(power)
    peaks = peaks[np.argsort(power[peaks])[::-1][:2]] if len(peaks) else np.array([], dtype=int)
    omegas = [float(freqs[i]) for i in peaks if freqs[i] > 0] or [2 * np.pi / (s[-1] - s[0])]
    analytic = hilbert(centred)
    envelope = np.abs(analytic)
    # log-envelope slope over the middle part (the Hilbert transform rings at the ends)
    lo, hi = n // 10, max(n // 10 + 3, n - n // 10)
    good = envelope[lo:hi] > 1e-12 * max(envelope.max(), 1e-300)
    gamma0 = 0.0
    if good.sum() >= 3:
        gamma0 = float(-np.polyfit(grid[lo:hi][good], np.log(envelope[lo:hi][good]), 1)[0])
    amp0 = float(envelope[lo] * math.exp(gamma0 * (grid[lo] - grid[0]))) or float(np.abs(centred).max())
    phase0 = float(np.angle(analytic[lo]) - omegas[0] * (grid[lo] - grid[0]))
    span = s[-1] - s[0]
    guesses = []
    for omega in omegas:
        for gamma in (gamma0, 1.0 / span):
            for phase in (phase0, phase0 + math.pi / 2):
                guesses.append((amp0, gamma, omega, phase, offset))
    return guesses


def oscillation_fit(t: Sequence[float], e: Sequence[float], transient: float = 0.0) -> OscillationFit:
    """Fit a damped oscillation ``e(t) ~ A exp(-gamma (t - t0)) cos(omega (t - t0) + p) + c``.

    Parameters
    ----------
    t : (R,) increasing times (e.g. recorded steps).
    e : (R,) scalar error signal (e.g. one coordinate of the centre-of-mass error).
    transient : length of the initial stretch (in units of t) left out of the fit; the fit
        starts at the first time >= t[0] + transient (that time is ``t0``).

    Returns
    -------
    OscillationFit : damping rate ``gamma`` (1/time; negative for a growing oscillation),
    angular frequency ``omega >= 0``, amplitude (>= 0), phase, offset, fit rmse.

    Notes
    -----
    Least squares (``scipy.optimize.curve_fit``) started from several guesses (FFT peaks for
    omega, the Hilbert envelope's log-slope for gamma); the best fit is returned. A monotone
    (overdamped) signal gives omega close to 0.
    """
    from scipy.optimize import curve_fit

    t = np.asarray(t, dtype=float)
    e = np.asarray(e, dtype=float)
    if t.shape != e.shape or t.ndim != 1:
        raise ValueError(f"t and e must be 1-d of the same length, got {t.shape} and {e.shape}")
    keep = (t >= t[0] + transient) & np.isfinite(e) & np.isfinite(t) if len(t) else np.zeros(0, bool)
    t, e = t[keep], e[keep]
    if len(t) < 8:
        raise DataError(f"oscillation_fit needs at least 8 finite samples after the transient, got {len(t)}")
    if np.any(np.diff(t) <= 0):
        raise ValueError("t must be strictly increasing")
    t0 = float(t[0])
    s = t - t0
    scale = float(np.abs(e - np.median(e)).max()) or 1.0
    y = e / scale  # fit in units of the signal size: keeps the tolerances meaningful
    best, best_cost = None, math.inf
    for guess in _initial_guesses(s, y):
        try:
            params, _ = curve_fit(_damped_cosine, s, y, p0=guess, maxfev=4000)
        except (RuntimeError, ValueError, FloatingPointError):
            continue
        with np.errstate(over="ignore", invalid="ignore"):
            cost = float(np.mean((_damped_cosine(s, *params) - y) ** 2))
        if np.isfinite(cost) and cost < best_cost:
            best, best_cost = params, cost
    if best is None:
        raise DataError("oscillation_fit did not converge for any starting guess")
    amplitude, gamma, omega, phase, offset = (float(v) for v in best)
    if omega < 0:  # cos(-w s + p) = cos(w s - p)
        omega, phase = -omega, -phase
    if amplitude < 0:
        amplitude, phase = -amplitude, phase + math.pi
    phase = (phase + math.pi) % (2 * math.pi) - math.pi
    return OscillationFit(gamma=gamma, omega=omega, amplitude=amplitude * scale, phase=phase,
                          offset=offset * scale, t0=t0, rmse=math.sqrt(best_cost) * scale, n=len(t))


# ---------------------------------------------------------------------------------------------
# run directories
# ---------------------------------------------------------------------------------------------
def load_run(run_dir: str | Path) -> dict[str, Any]:
    """Arrays and metadata of a run directory.

    Returns
    -------
    dict with every array of result.npz (``step``, the observable series, ``snapshots``,
    ``snapshot_steps``, ``final_particles``, ``target_samples``, ``mode_centres`` ...) plus
    ``config`` (the resolved config), ``summary`` and ``meta`` (dicts; empty when missing).

    Raises
    ------
    DataError : no readable result.npz in ``run_dir``.
    """
    d = Path(run_dir)
    path = d / "result.npz"
    try:
        with np.load(path, allow_pickle=False) as z:
            out: dict[str, Any] = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise DataError(f"'{d}' holds no result.npz (not a finished run directory)") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"'{path}' cannot be read: {exc}") from None
    for name in ("config", "summary", "meta"):
        try:
            data = json.loads((d / f"{name}.json").read_text())
        except (OSError, ValueError):
            data = {}
        if name == "config" and isinstance(data, dict) and "config" in data:
            data = data["config"]
        out[name] = data
    return out


def add_convergence_times(rows: Sequence[dict], sweep_dir: str | Path, series: str, threshold: float,
                          column: str = "convergence_time") -> list[dict]:
    """Add ``column`` = :func:`convergence_time` of each run's ``series`` (read from its
    result.npz) to the rows; failed runs get nan. Returns the same rows."""
    runs = Path(sweep_dir) / "runs"
    for row in rows:
        if row.get("status") == "failed":
            row[column] = math.nan
            continue
        data = load_run(runs / str(row["run_id"]))
        if series not in data:
            raise DataError(f"run {row['run_id']} has no series {series!r} in result.npz")
        row[column] = convergence_time(data["step"], data[series], threshold)
    return rows


def critical_penalties(cfg: Mapping, point_mass: float = 1.0) -> dict[str, float] | None:
    """Critical gradient-penalty strengths lambda_c of the centre-of-mass ("cm") and relative
    ("rel") modes (effective-gan-spec A2.9) for a run's resolved config [derived].

    lambda_c,a = sqrt(eta_G kappa_a / (eta_D,eff h_eff)) (twice that for the half_lambda form),
    with

    * kappa_a the eigenvalues of the universal kernel, divided by N under the NTK normalisation;
    * eta_D,eff = dynamics.critic_steps * dynamics.eta_d: the critic's learning "time" per
      particle step (the A2.9 oscillator is written per unit time for both players);
    * h_eff = point_mass * h, h = 1/sigma^2 the random-feature curvature. ``point_mass`` is the
      target probability mass each particle's critic response sees: 1 when all data and
      particles sit within one critic width (a single cluster, the spec's h), 1/N for N
      isolated target points with one particle each (the expectations E_P, E_Q weight each point
      by 1/N, so the critic's restoring rate per point is eta_D h / N).

    A mode whose rate kappa is not positive (phi = 1 freezes the relative mode) gets nan.

    Returns None where the linear theory does not apply: a kernel other than the universal
    one, a critic other than the random-feature ones (rff, relu_features) or not trained by
    plain SGD, or no gradient penalty.
    """
    gen, crit, loss, dyn = cfg["generator"], cfg["critic"], cfg["loss"], cfg["dynamics"]
    if gen["kernel"] != "universal" or loss["penalty"] == "none" or crit.get("optimizer", "sgd") != "sgd":
        return None
    if not (point_mass > 0 and math.isfinite(point_mass)):
        raise DataError(f"point_mass must be a positive number, got {point_mass!r}")
    from particlegan.model.coupling import universal_mode_rates
    from particlegan.model.from_config import make_coupling, run_penalty_coefficient
    from particlegan.maths.stability import critical_penalty, relu_feature_curvature, rff_curvature

    if crit["type"] == "rff":
        h = rff_curvature(crit["sigma"])
    elif crit["type"] == "relu_features":
        h = relu_feature_curvature(crit["sigma"])
    else:
        return None
    n = cfg["particles"]["n"]
    rates = universal_mode_rates(make_coupling(gen, n, np.random.default_rng(0)))
    eta_d_eff = dyn["critic_steps"] * dyn["eta_d"]
    # the config's lambda multiplies E||grad f||^2 by `per_unit` (1, 1/2, or 1/n^2 for mean_grad):
    # lambda_c in the config's units is the 'lambda'-form critical value divided by it
    unit_cfg = {**cfg, "loss": {**loss, "penalty_weight": 1.0}}
    per_unit = run_penalty_coefficient(unit_cfg, cfg["target"]["n_samples"])
    out = {}
    for mode, kappa in zip(("cm", "rel"), rates):
        out[mode] = (float(critical_penalty(dyn["eta_g"], eta_d_eff, kappa, point_mass * h, "lambda")) / per_unit
                     if kappa > 0 else math.nan)
    return out


# ------------------------------------------------------------------ phase-map comparison ----
def first_crossing(xs: Sequence[float], values: Sequence[float], level: float) -> float:
    """Smallest x (of a row of a phase map, xs ascending) whose value exceeds ``level``
    (the critical coupling phi_c of a collapse map with level C = 2); nan when none does.
    nan values are skipped (missing cells)."""
    for x, v in sorted(zip(xs, values)):
        if np.isfinite(v) and v > level:
            return float(x)
    return math.nan


def same_side_fraction(a: Mapping, b: Mapping, level: float) -> tuple[float, int]:
    """Fraction of the cells common to two maps {cell: value} (finite in both) on the same
    side of ``level`` (value > level counts as above), and the number of common cells
    (fraction nan when there are none)."""
    common = [k for k in a if k in b and np.isfinite(a[k]) and np.isfinite(b[k])]
    if not common:
        return math.nan, 0
    same = sum((a[k] > level) == (b[k] > level) for k in common)
    return same / len(common), len(common)
