"""Target distributions and particle initialisation.

* ``ring``: K isotropic Gaussians of std sigma, means on a circle of radius R in the first two
  coordinates (USD ``mog`` target: K = 8, R = 0.75, sigma = 0.075), zero in the other d - 2.
* ``grid``: a ``G x G`` square grid of Gaussians with spacing s, centred on the origin.
* ``file``: user samples from ``.npy``/``.npz``; each sample is its own "mode" for the
  order parameters (as in Paper A's MNIST analysis, where K = M data points).
* ``idx``: images of an IDX file (MNIST's format, also gzipped), flattened to d = rows x cols.
  Both data kinds take ``target.indices`` (which rows) and ``target.normalize`` (pixel scaling).

Particles start as a Gaussian at the origin (std 0.1, USD ``gauss`` source) or from a file.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from particlegan.errors import DataError
from particlegan.store.storage import load_sample_array, read_idx

# per-pixel scalings of data targets (target.normalize); mnist: the paper's (mean 0.1307, std 0.3081)
NORMALIZE = {"none": lambda x: x, "unit": lambda x: x / 255.0,
             "mnist": lambda x: (x / 255.0 - 0.1307) / 0.3081}


@dataclass(frozen=True)
class Target:
    """A target sample together with its mode centres.

    Attributes
    ----------
    samples : (M, d) target samples y_m.
    centres : (K, d) mode centres (the samples themselves for file targets).
    sigma : mode std (sets the 3-sigma high-quality radius).
    """

    samples: np.ndarray
    centres: np.ndarray
    sigma: float


def ring_centres(modes: int, radius: float, dim: int) -> np.ndarray:
    """Centres ``(R cos 2 pi k/K, R sin 2 pi k/K, 0, ...)``, k = 0..K-1. Shape (K, dim)."""
    angles = 2.0 * np.pi * np.arange(modes) / modes
    c = np.zeros((modes, dim))
    c[:, 0] = radius * np.cos(angles)
    c[:, 1] = radius * np.sin(angles)
    return c


def grid_centres(size: int, spacing: float, dim: int) -> np.ndarray:
    """Centres of a ``size x size`` grid with the given spacing, centred at 0. Shape (size^2, dim)."""
    ticks = (np.arange(size) - (size - 1) / 2.0) * spacing
    gx, gy = np.meshgrid(ticks, ticks, indexing="ij")
    c = np.zeros((size * size, dim))
    c[:, 0] = gx.ravel()
    c[:, 1] = gy.ravel()
    return c


def sample_mixture(centres: np.ndarray, sigma: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """Draw n samples from the equal-weight isotropic mixture; modes get n//K (+1) samples each.

    Stratified by mode (as USD's ``size_class`` samples per mode) so the target sample has
    exactly balanced modes. Shape (n, d).
    """
    k, d = centres.shape
    labels = np.arange(n) % k
    return centres[labels] + sigma * rng.standard_normal((n, d))


def make_target(tcfg: dict, rng: np.random.Generator) -> Target:
    """Build the target of config section ``target`` (see module docstring)."""
    dim = tcfg["dim"]
    if tcfg["kind"] == "ring":
        centres = ring_centres(tcfg["modes"], tcfg["radius"], dim)
    elif tcfg["kind"] == "grid":
        centres = grid_centres(tcfg["grid_size"], tcfg["grid_spacing"], dim)
    else:
        samples = load_data_target(tcfg)
        return Target(samples=samples, centres=samples, sigma=float(tcfg["sigma"]))
    samples = sample_mixture(centres, tcfg["sigma"], tcfg["n_samples"], rng)
    return Target(samples=samples, centres=centres, sigma=float(tcfg["sigma"]))


def load_data_target(tcfg: dict) -> np.ndarray:
    """Samples (M, d) float64 of a ``file`` or ``idx`` target: the rows ``target.indices``
    (default: all rows of a file, the first ``target.n_samples`` images of an IDX file), each
    image flattened, scaled by ``target.normalize``."""
    dim, idx = tcfg["dim"], list(tcfg["indices"])
    if tcfg["kind"] == "idx":
        items = read_idx(tcfg["path"], "target.path", max_items=(max(idx) + 1) if idx else tcfg["n_samples"])
        flat = items.reshape(items.shape[0], -1)
        if flat.shape[1] != dim:
            raise DataError(f"target.path file '{tcfg['path']}' holds items of {' x '.join(map(str, items.shape[1:]))}"
                            f" = {flat.shape[1]} values, but target.dim = {dim}")
        samples = flat.astype(np.float64)
    else:
        samples = load_sample_array(tcfg["path"], "target.path", ncols=dim, min_rows=1)
    if idx:
        if max(idx) >= samples.shape[0]:
            raise DataError(f"target.indices asks for row {max(idx)}, but target.path file '{tcfg['path']}' "
                            f"has {samples.shape[0]} rows")
        samples = samples[idx]
    if samples.shape[0] < 2:
        raise DataError(f"target.path file '{tcfg['path']}': at least 2 target samples are needed, "
                        f"got {samples.shape[0]}")
    return NORMALIZE[tcfg["normalize"]](samples)


def init_particles(pcfg: dict, dim: int, rng: np.random.Generator,
                   target_mean: np.ndarray | None = None) -> np.ndarray:
    """Initial particles x_i(0), shape (N, d): N(0, init_sigma^2 I), N(mean, init_sigma^2 I)
    around ``target_mean`` (d,) for ``init = "target_mean"``, or loaded from a file."""
    n = pcfg["n"]
    if pcfg["init"] == "file":
        x = load_sample_array(pcfg["init_path"], "particles.init_path", ncols=dim)
        if x.shape[0] != n:
            raise DataError(f"particles.init_path file '{pcfg['init_path']}' has {x.shape[0]} rows, "
                            f"expected particles.n = {n}")
        return x
    x = pcfg["init_sigma"] * rng.standard_normal((n, dim))
    if pcfg["init"] == "target_mean":
        if target_mean is None:
            raise ValueError("particles.init = 'target_mean' needs the target mean")
        x += np.asarray(target_mean, dtype=np.float64)
    return x
