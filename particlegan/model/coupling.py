"""Generator coupling kernels: the matrix C in the particle step dx_i = eta_G sum_j C_ij F_j.

C = K / N (normalisation ``"ntk"``, the exact NTK scaling of effective-gan-spec A2.6) or C = K
(``"none"``), where K is the frozen generator NTK restricted to the particles (one scalar kernel
per pair; the output-space factor is delta^{mu nu}). For the universal kernel only,
``"mean"`` [derived; another reading of A6.1] keeps the individual term and averages the
collective one, C = (g1 - g2) I + (g2 / N) 1 1^T: the relative modes move at rate g1 - g2 and the
centre of mass at g1 whatever N (with ``"none"`` the centre of mass moves at g1 + (N - 1) g2).
``"spectral"`` [derived; a third reading of A6.1] divides by the largest eigenvalue,
C = K / lambda_max(K): the fastest mode moves at rate 1 whatever N and phi (for the universal
kernel with g2 >= 0, lambda_max = g1 + (N - 1) g2, the centre of mass; the relative modes then
move at (1 - phi) / (1 + (N - 1) phi)). Dense kernels only (universal, identity, matrix, and the
NTKs held densely).
``"interpolated"`` [derived; a one-parameter family between the two, fitted in sims/mnist]: for the
universal kernel, C = g1 [a I + ((1 - a)/N) 1 1^T] with a = (g1 - g2) / (g1 + c g2), c =
``generator.interp_c``: the centre of mass at rate g1, the relative modes at g1 a; c = 0 is
``"mean"``, c = N - 1 is g1 x ``"spectral"``. Held as scale g1 / (g1 + c g2) and collective
(1 + c) / N.

* ``universal``: K = (g1 - g2) I + g2 1 1^T (A-2). Applied in O(N d) via its rank-one structure:
  K F = (g1 - g2) F + g2 1 (1^T F).
* ``identity``: K = g1 I (uncoupled particles: a plain Wasserstein gradient flow).
* ``ntk_relu`` / ``ntk_erf``: closed-form NTK of a one-hidden-layer ReLU / erf network on latent
  codes z_i uniform on the sphere of radius sqrt(d_z) (ecosystem-anchors section 3). Built densely
  for N <= ``dense_max``, otherwise applied matrix-free by the backend.
* ``matrix``: a user-supplied symmetric PSD (N, N) matrix from ``.npy``.

Kernels are applied, never required dense: :func:`apply_coupling` is the only hot entry point
(:func:`apply_coupling_members` its ensemble form).
The coupling of config section ``generator`` is built by
:func:`particlegan.model.from_config.make_coupling`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np



@dataclass(frozen=True)
class Coupling:
    """Frozen description of the generator coupling C (shape (N, N), never stored when structured).

    Attributes
    ----------
    kind : kernel name (see module docstring).
    n : number of particles N.
    scale : 1/N for normalisation 'ntk', 1/lambda_max(K) for 'spectral', 1 for 'none' and 'mean',
        g1/(g1 + c g2) for 'interpolated'.
    g1, g2 : universal/identity constants (g2 = 0 for identity).
    collective : factor on the rank-one term g2 1 1^T of the universal kernel (1/N for 'mean',
        (1 + c)/N for 'interpolated').
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


def universal_top_eigenvalue(g1: float, g2: float, n: int) -> float:
    """Largest eigenvalue of K = (g1 - g2) I + g2 1 1^T, shape (n, n): g1 + (n - 1) g2 for
    g2 >= 0 (the centre of mass), g1 - g2 otherwise (the relative modes)."""
    return max(g1 + (n - 1) * g2, g1 - g2) if n > 1 else g1


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
        from particlegan.backends import get_backend

        backend = get_backend("numpy")
    z = c.latents.astype(forces.dtype, copy=False)
    return c.scale * backend.ntk_apply(z, forces, c.ntk_kind, c.sigma_w, c.sigma_b)


def apply_coupling_members(couplings, forces: np.ndarray, backend=None) -> np.ndarray:
    """C_m F_m of B ensemble members: ``couplings`` (B,) of one kind, forces (B, N, d) -> (B, N, d),
    bitwise each member's :func:`apply_coupling`. The universal and identity kernels are applied
    to all members at once (their constants as (B, 1, 1) columns in the forces' dtype, which is how
    a Python float enters the member's own product); other kinds member by member."""
    kinds = {c.kind for c in couplings}

    def column(values):
        return np.array(values, dtype=forces.dtype).reshape(-1, 1, 1)

    if kinds == {"universal"}:
        total = forces.sum(axis=1, keepdims=True)
        return column([c.scale for c in couplings]) * (column([c.g1 - c.g2 for c in couplings]) * forces
                                                      + column([c.g2 * c.collective for c in couplings]) * total)
    if kinds == {"identity"}:
        return column([c.scale * c.g1 for c in couplings]) * forces
    return np.stack([apply_coupling(c, f, backend) for c, f in zip(couplings, forces)])


def universal_mode_rates(c: Coupling) -> tuple[float, float]:
    """Eigenvalues (centre_of_mass, relative) of the universal or identity coupling C, every
    normalisation included: scale ((g1 - g2) + collective N g2) on 1 and scale (g1 - g2) on the
    N - 1 relative modes (A2.4 with the normalisation applied)."""
    if c.kind not in ("universal", "identity"):
        raise ValueError(f"mode rates are defined for the universal kernel, not '{c.kind}'")
    rel = c.scale * (c.g1 - c.g2)
    return c.scale * (c.g1 - c.g2 + c.collective * c.n * c.g2), rel


def coupling_matrix(c: Coupling) -> np.ndarray:
    """Dense C = scale * K, shape (N, N): for analysis and tests only (O(N^2) memory)."""
    if c.kind == "universal":
        k = np.full((c.n, c.n), c.g2 * c.collective) + (c.g1 - c.g2) * np.eye(c.n)
    elif c.kind == "identity":
        k = c.g1 * np.eye(c.n)
    elif c.dense is not None:
        k = c.dense
    else:
        from particlegan.maths.kernels import ntk_matrix

        k = ntk_matrix(c.latents, c.latents, c.ntk_kind, c.sigma_w, c.sigma_b)
    return c.scale * k

