"""Generator coupling kernels: the matrix C in the particle step dx_i = eta_G sum_j C_ij F_j.

C = K / N (normalisation ``"ntk"``, the exact NTK scaling of effective-gan-spec A2.6) or C = K
(``"none"``), where K is the frozen generator NTK restricted to the particles (one scalar kernel
per pair; the output-space factor is delta^{mu nu}). For the universal kernel only,
``"mean"`` [derived; another reading of A6.1] keeps the individual term and averages the
collective one, C = (g1 - g2) I + (g2 / N) 1 1^T: the relative modes move at rate g1 - g2 and the
centre of mass at g1 whatever N (with ``"none"`` the centre of mass moves at g1 + (N - 1) g2).

* ``universal``: K = (g1 - g2) I + g2 1 1^T (A-2). Applied in O(N d) via its rank-one structure:
  K F = (g1 - g2) F + g2 1 (1^T F).
* ``identity``: K = g1 I (uncoupled particles: a plain Wasserstein gradient flow).
* ``ntk_relu`` / ``ntk_erf``: closed-form NTK of a one-hidden-layer ReLU / erf network on latent
  codes z_i uniform on the sphere of radius sqrt(d_z) (ecosystem-anchors section 3). Built densely
  for N <= ``dense_max``, otherwise applied matrix-free by the backend.
* ``matrix``: a user-supplied symmetric PSD (N, N) matrix from ``.npy``.

Kernels are applied, never required dense: :func:`apply_coupling` is the only hot entry point.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import DataError
from .storage import load_sample_array


@dataclass(frozen=True)
class Coupling:
    """Frozen description of the generator coupling C (shape (N, N), never stored when structured).

    Attributes
    ----------
    kind : kernel name (see module docstring).
    n : number of particles N.
    scale : 1/N for normalisation 'ntk', 1 for 'none' and 'mean'.
    g1, g2 : universal/identity constants (g2 = 0 for identity).
    collective : factor on the rank-one term g2 1 1^T of the universal kernel (1/N for 'mean').
    dense : (N, N) unnormalised kernel K when held densely, else None.
    latents : (N, d_z) latent codes for matrix-free NTK kernels, else None.
    ntk_kind, sigma_w, sigma_b : NTK parameters for the matrix-free apply.
    """

    kind: str
    n: int
    scale: float
    g1: float = 1.0
    g2: float = 0.0
    dense: np.ndarray | None = None
    latents: np.ndarray | None = None
    ntk_kind: str = ""
    sigma_w: float = 1.0
    sigma_b: float = 0.0
    collective: float = 1.0


def sample_sphere(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """n points uniform on the sphere of radius sqrt(dim) in R^dim (so z.z/dim = 1). Shape (n, dim)."""
    z = rng.standard_normal((n, dim))
    return z * (np.sqrt(dim) / np.linalg.norm(z, axis=1, keepdims=True))


def make_coupling(gcfg: dict, n: int, rng: np.random.Generator) -> Coupling:
    """Build the coupling of config section ``generator`` for N = n particles."""
    scale = 1.0 / n if gcfg["normalization"] == "ntk" else 1.0
    kind = gcfg["kernel"]
    g1 = float(gcfg["g1"])
    if kind == "universal":
        collective = 1.0 / n if gcfg["normalization"] == "mean" else 1.0
        return Coupling(kind, n, scale, g1=g1, g2=g1 * float(gcfg["phi"]), collective=collective)
    if kind == "identity":
        return Coupling(kind, n, scale, g1=g1, g2=0.0)
    if kind in ("ntk_relu", "ntk_erf"):
        from .kernels import ntk_matrix

        ntk_kind = kind.split("_")[1]
        z = sample_sphere(n, gcfg["latent_dim"], rng)
        dense = None
        if n <= gcfg["dense_max"]:
            dense = ntk_matrix(z, z, ntk_kind, gcfg["sigma_w"], gcfg["sigma_b"])
        return Coupling(kind, n, scale, dense=dense, latents=z, ntk_kind=ntk_kind,
                        sigma_w=float(gcfg["sigma_w"]), sigma_b=float(gcfg["sigma_b"]))
    # user matrix
    path = gcfg["matrix_path"]
    k = load_sample_array(path, "generator.matrix_path")
    if k.shape != (n, n):
        raise DataError(f"generator.matrix_path file '{path}' has shape {k.shape}, expected ({n}, {n})")
    if not np.allclose(k, k.T, rtol=1e-10, atol=1e-12 * np.abs(k).max()):
        raise DataError(f"generator.matrix_path file '{path}' is not symmetric")
    eig_min = np.linalg.eigvalsh(k)[0]
    if eig_min < -1e-8 * max(1.0, np.abs(k).max()):
        raise DataError(f"generator.matrix_path file '{path}' is not positive semi-definite "
                        f"(smallest eigenvalue {eig_min:.3g})")
    return Coupling(kind, n, scale, dense=k)


def apply_coupling(c: Coupling, forces: np.ndarray, backend=None) -> np.ndarray:
    """Return C F, shape (N, d), for per-particle forces F = grad f(x_j) of shape (N, d).

    universal/identity cost O(N d); dense kernels a matmul; matrix-free NTK the backend's
    ``ntk_apply`` (O(N^2 d) time, O(N d) memory).
    """
    if c.kind == "universal":
        total = forces.sum(axis=0, keepdims=True)
        return c.scale * ((c.g1 - c.g2) * forces + (c.g2 * c.collective) * total)
    if c.kind == "identity":
        return (c.scale * c.g1) * forces
    if c.dense is not None:
        return c.scale * (c.dense.astype(forces.dtype, copy=False) @ forces)
    if backend is None:
        from .backends import get_backend

        backend = get_backend("numpy")
    z = c.latents.astype(forces.dtype, copy=False)
    return c.scale * backend.ntk_apply(z, forces, c.ntk_kind, c.sigma_w, c.sigma_b)


def coupling_matrix(c: Coupling) -> np.ndarray:
    """Dense C = scale * K, shape (N, N): for analysis and tests only (O(N^2) memory)."""
    if c.kind == "universal":
        k = np.full((c.n, c.n), c.g2 * c.collective) + (c.g1 - c.g2) * np.eye(c.n)
    elif c.kind == "identity":
        k = c.g1 * np.eye(c.n)
    elif c.dense is not None:
        k = c.dense
    else:
        from .kernels import ntk_matrix

        k = ntk_matrix(c.latents, c.latents, c.ntk_kind, c.sigma_w, c.sigma_b)
    return c.scale * k

