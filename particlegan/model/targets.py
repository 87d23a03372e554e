"""Target distributions and particle initialisation.

* ``ring``: K isotropic Gaussians of std sigma, means on a circle of radius R in the first two
  coordinates (USD ``mog`` target: K = 8, R = 0.75, sigma = 0.075), zero in the other d - 2.
* ``grid``: a ``G x G`` square grid of Gaussians with spacing s, centred on the origin.
* ``file``: user samples from ``.npy``/``.npz``; each sample is its own "mode" for the
  order parameters (as in Paper A's MNIST analysis, where K = M data points).
* ``idx``: images of an IDX file (MNIST's format, also gzipped), flattened to d = rows x cols.
  Both data kinds take ``target.indices`` (which rows) and ``target.normalize`` (pixel scaling).

Particles start as a Gaussian at the origin (std 0.1, USD ``gauss`` source) or from a file.
Both are built from their config sections by :func:`particlegan.model.from_config.make_target`
and :func:`particlegan.model.from_config.init_particles`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np



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


