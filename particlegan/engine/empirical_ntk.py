"""Empirical neural tangent kernel of a generator MLP, and the two-layer ReLU closed form.

The generator NTK on fixed latents z_i (effective-gan-spec A2.0, A2.3, A6.9) is::

    Theta^{mu nu}_{ij} = sum_p d G^mu(z_i)/d theta_p  d G^nu(z_j)/d theta_p      (n, n, d, d)

and its trace-normalised scalar version Theta_ij = (1/d) sum_mu Theta^{mu mu}_{ij} (n, n). Both
are exact (no sampling). The default ``method="layerwise"`` uses that the per-sample gradient of
layer k's weights is the outer product a_k delta_k^{(i,mu)} (x) h_k^{(i)}, so::

    Theta^{mu nu}_{ij} = sum_k (delta_k^{(i,mu)} . delta_k^{(j,nu)})
                              * (a_k^2 h_k^{(i)} . h_k^{(j)} + c^2 [bias])

with the per-sample deltas from d batched backward passes (grad_out = e_mu) of
:mod:`particlegan.maths.nn`; this equals J J^T without storing the Jacobian J (n d, P).
``method="jacobian"`` builds J explicitly (:func:`particlegan.maths.nn.mlp_jacobian`) for small nets.

Summary constants (A2.3 recommendation): g1 = mean diagonal, g2 = mean off-diagonal,
phi = g2/g1, and the spread of the off-diagonal entries as a validity check of the universal
(two-constant) kernel.

Closed form. For the one-hidden-layer network of :mod:`particlegan.maths.nn` in NTK parameterisation,
with all parameters N(0, 1), the infinite-width NTK is (ecosystem-anchors section 3)::

    G^mu(z) = sigma_w/sqrt(m) sum_k V_{mu k} relu(sigma_w w_k.z/sqrt(d_z) + sigma_b b_k)
              + sigma_b b2_mu

    Sigma1 = sigma_w^2 z.z'/d_z + sigma_b^2,  q = Sigma1(z, z),  theta = arccos(Sigma1/sqrt(q q'))
    Theta^{mu nu}(z, z') = delta^{mu nu} [sigma_w^2 Sigma_hat + sigma_b^2
                                          + sigma_w^2 Sigma_dot Sigma1]
    Sigma_hat = sqrt(q q')/(2 pi) (sin theta + (pi - theta) cos theta)
    Sigma_dot = (pi - theta)/(2 pi)

Bias-free (sigma_b = 0) with latents on the sphere of radius sqrt(d_z), u = z.z'/d_z:
Sigma1 = sigma_w^2 u, q = sigma_w^2, Sigma_hat = sigma_w^2 kappa1(u)/2, Sigma_dot = kappa0(u)/2, so

    Theta(z, z') = c kappa(u),   c = sigma_w^4 / 2,
    kappa(u) = u kappa0(u) + kappa1(u),  kappa0 = 1 - arccos(u)/pi,
    kappa1 = (u (pi - arccos u) + sqrt(1 - u^2))/pi,

hence g1 = c kappa(1) = sigma_w^4 (= 1 with the default sigma_w = 1), g2 = c kappa(0) =
sigma_w^4/(2 pi), and phi = g2/g1 = 1/(2 pi) for every sigma_w.

Config keys: the generator of ``generator.width`` / ``depth`` / ``activation`` / ``bias`` /
``parameterization`` on ``generator.latent_dim`` latents of kind ``generator.latent``;
:func:`ntk_summary` gives the (g1, g2) to feed to the effective model's ``generator.g1`` /
``generator.g2`` (A6.9).
"""
from __future__ import annotations

import io
import math

import numpy as np

from particlegan.maths.kernels import ntk_matrix
from particlegan.maths.nn import MLP, _backward_deltas, mlp_apply, mlp_forward, mlp_jacobian

NTK_METHODS = ("layerwise", "jacobian")


def _float64(params: MLP) -> MLP:
    if params.dtype == np.float64:
        return params
    return params.with_theta(params.theta.astype(np.float64))


def _check_method(method: str) -> None:
    if method not in NTK_METHODS:
        raise ValueError(f"method must be one of {NTK_METHODS}, got {method!r}")


def _layer_grams(params: MLP, Z: np.ndarray):
    """Forward pass plus, per layer k, H_k = a_k^2 h_k h_k^T + c^2 [bias]  (n, n)."""
    out, cache = mlp_forward(params, Z)
    c2 = params.bias_scale() ** 2
    grams = []
    for k, (_, bs) in enumerate(params.layout()):
        h = cache.inputs[k]
        H = params.weight_scale(k) ** 2 * (h @ h.T)
        if bs is not None:
            H = H + c2
        grams.append(H)
    return out, cache, grams


def empirical_ntk(params: MLP, Z: np.ndarray, method: str = "layerwise") -> np.ndarray:
    """Full empirical NTK Theta[i, j, mu, nu] = sum_p dG^mu(z_i)/dtheta_p dG^nu(z_j)/dtheta_p.

    Parameters
    ----------
    params : generator MLP (computed in float64 whatever its dtype).
    Z : (n, d_z) latent codes.
    method : "layerwise" (d batched backward passes, no Jacobian stored) or "jacobian".

    Returns
    -------
    Theta : (n, n, d, d) float64, symmetric under (i, mu) <-> (j, nu).
    """
    _check_method(method)
    params = _float64(params)
    Z = np.asarray(Z, dtype=np.float64)
    d = params.d_out
    if method == "jacobian":
        J = mlp_jacobian(params, Z)                         # (n, d, P)
        n = J.shape[0]
        flat = J.reshape(n * d, -1)
        return (flat @ flat.T).reshape(n, d, n, d).transpose(0, 2, 1, 3)
    out, cache, grams = _layer_grams(params, Z)
    n = out.shape[0]
    per_mu = []
    for mu in range(d):
        grad_out = np.zeros_like(out)
        grad_out[:, mu] = 1.0
        per_mu.append(_backward_deltas(params, cache, grad_out)[0])
    theta = np.zeros((n, n, d, d))
    for k, H in enumerate(grams):
        D = np.stack([per_mu[mu][k] for mu in range(d)])    # (d, n, n_{k+1})
        D = D.reshape(d * n, -1)
        G = (D @ D.T).reshape(d, n, d, n).transpose(1, 3, 0, 2)
        theta += G * H[:, :, None, None]
    return theta


def empirical_ntk_scalar(params: MLP, Z: np.ndarray, method: str = "layerwise") -> np.ndarray:
    """Trace-normalised empirical NTK Theta_ij = (1/d) sum_mu Theta^{mu mu}_{ij}.

    Same parameters as :func:`empirical_ntk`; the layerwise method needs memory O(n width)
    per layer (one output coordinate at a time) instead of O(n^2 d^2).

    Returns
    -------
    Theta : (n, n) float64, symmetric positive semi-definite.
    """
    _check_method(method)
    params = _float64(params)
    Z = np.asarray(Z, dtype=np.float64)
    d = params.d_out
    if method == "jacobian":
        J = mlp_jacobian(params, Z)
        return np.einsum("imp,jmp->ij", J, J) / d
    out, cache, grams = _layer_grams(params, Z)
    n = out.shape[0]
    theta = np.zeros((n, n))
    for mu in range(d):
        grad_out = np.zeros_like(out)
        grad_out[:, mu] = 1.0
        deltas, _ = _backward_deltas(params, cache, grad_out)
        for k, H in enumerate(grams):
            theta += (deltas[k] @ deltas[k].T) * H
    return theta / d


def ntk_summary(theta_scalar: np.ndarray) -> dict:
    """Universal-kernel constants of a scalar NTK matrix (effective-gan-spec A2.3).

    Parameters
    ----------
    theta_scalar : (n, n), n >= 2.

    Returns
    -------
    dict with g1 (mean diagonal), g2 (mean off-diagonal), phi = g2/g1, offdiag_std
    (population std of the n(n-1) off-diagonal entries), offdiag_rel_spread = offdiag_std/|g2|
    (inf when g2 = 0), diag_std, and n.
    """
    T = np.asarray(theta_scalar, dtype=np.float64)
    if T.ndim != 2 or T.shape[0] != T.shape[1] or T.shape[0] < 2:
        raise ValueError(f"theta_scalar must be a square (n, n) matrix with n >= 2, got {T.shape}")
    n = T.shape[0]
    diag = np.diag(T)
    off = T[~np.eye(n, dtype=bool)]
    g1 = float(diag.mean())
    g2 = float(off.mean())
    std = float(off.std())
    return {
        "g1": g1,
        "g2": g2,
        "phi": g2 / g1 if g1 != 0 else math.nan,
        "offdiag_std": std,
        "offdiag_rel_spread": std / abs(g2) if g2 != 0 else math.inf,
        "diag_std": float(diag.std()),
        "n": n,
    }


# ----------------------------------------------------------------------- closed form ----
def relu_ntk_kappa(u) -> np.ndarray:
    """kappa(u) = u kappa0(u) + kappa1(u) (arc-cosine kernels; u clipped to [-1, 1]).

    kappa0(u) = 1 - arccos(u)/pi,  kappa1(u) = (u (pi - arccos u) + sqrt(1 - u^2))/pi;
    kappa(1) = 2, kappa(0) = 1/pi, kappa'(0) = 1.
    """
    u = np.clip(np.asarray(u, dtype=np.float64), -1.0, 1.0)
    acos = np.arccos(u)
    kappa0 = 1.0 - acos / np.pi
    kappa1 = (u * (np.pi - acos) + np.sqrt(1.0 - u * u)) / np.pi
    return u * kappa0 + kappa1


def two_layer_relu_ntk(Z1: np.ndarray, Z2: np.ndarray | None = None, sigma_w: float = 1.0,
                       sigma_b: float = 0.0) -> np.ndarray:
    """Infinite-width NTK (per output coordinate) of the one-hidden-layer ReLU generator.

    Theta = sigma_w^2 Sigma_hat + sigma_b^2 + sigma_w^2 Sigma_dot Sigma1 (module docstring),
    for the :mod:`particlegan.maths.nn` network in NTK parameterisation (bias=True with sigma_b > 0,
    or bias-free with sigma_b = 0). On the sphere of radius sqrt(d_z) and sigma_b = 0 this is
    (sigma_w^4 / 2) kappa(z.z'/d_z).

    Parameters
    ----------
    Z1 : (n, d_z) latents.  Z2 : (m, d_z) latents (default Z1).
    sigma_w : > 0.  sigma_b : >= 0.

    Returns
    -------
    Theta : (n, m) float64.
    """
    return ntk_matrix(  # the one closed form (numba twin: pairmath.ntk_entry)
        Z1, Z1 if Z2 is None else Z2, "relu", sigma_w, sigma_b)


def two_layer_relu_constants(sigma_w: float = 1.0) -> dict:
    """Closed-form universal constants of the bias-free two-layer ReLU generator on the sphere.

    Returns dict c = sigma_w^4/2, g1 = c kappa(1) = sigma_w^4, g2 = c kappa(0) = sigma_w^4/(2 pi),
    phi = 1/(2 pi), and slope_at_0 = c kappa'(0) = c (the off-diagonal fluctuation scale:
    Theta_ij - g2 ~ c u_ij with u_ij ~ N(0, 1/d_z)).
    """
    c = sigma_w ** 4 / 2.0
    return {"c": c, "g1": 2.0 * c, "g2": c / np.pi, "phi": 1.0 / (2.0 * np.pi),
            "slope_at_0": c}


# ------------------------------------------------------------- the `ntk` command's logic ----
def _two_layer_relu_applies(gcfg: dict) -> bool:
    return (gcfg["depth"] == 1 and gcfg["activation"] == "relu"
            and gcfg["parameterization"] == "ntk")


def _initial_generator(cfg: dict, dtype):
    """The MLP generator at initialisation and its latents z (N, d_z), exactly as a
    ``model.type = "neural"`` run with the same config and seed builds them."""
    from particlegan.model.from_config import mlp_generator
    from particlegan.model.streams import seed_streams

    gen, _, state = mlp_generator(cfg, seed_streams(cfg["run"]["seed"]), None, None, dtype)
    return gen.net, state.z


def generator_ntk_report(cfg: dict, method: str = "layerwise") -> tuple[dict, np.ndarray]:
    """Empirical NTK of a config's neural generator at initialisation on its fixed latents.

    The generator and latents are exactly those of a ``model.type = "neural"`` run with the same
    config and seed (:func:`particlegan.model.from_config.mlp_generator`: same random streams), so the
    measured constants describe that run's generator at step 0.

    Parameters
    ----------
    cfg : resolved config (``generator.*`` architecture, ``particles.n`` latents, ``run.seed``).
    method : see :func:`empirical_ntk_scalar`.

    Returns
    -------
    report : dict with the :func:`ntk_summary` constants (g1, g2, phi, offdiag_std,
        offdiag_rel_spread, diag_std, n), the architecture (width, depth, latent_dim, latent,
        activation, bias, parameterization, sigma_w, sigma_b, n_params), and, for a
        one-hidden-layer ReLU generator in NTK parameterisation, ``closed_form``: the
        infinite-width kernel of :func:`two_layer_relu_ntk` averaged the same way on the SAME
        latents (g1, g2, phi; bias allowed), the relative errors of the measured g1 and g2
        against it, and, without bias, ``sphere_limit``: the d_z -> infinity values on the sphere
        (effective-gan-spec A2.3: g1 = sigma_w^4, g2 = sigma_w^4/(2 pi), phi = 1/(2 pi); they
        assume latents on the sphere of radius sqrt(d_z) with overlaps u_ij -> 0, i.e. a large
        latent_dim; Gaussian latents only approach them as their norms concentrate).
    theta : (N, N) trace-normalised empirical NTK (float64).
    """
    gen, z = _initial_generator(cfg, np.float64)
    theta = empirical_ntk_scalar(gen, z, method)
    g = cfg["generator"]
    report = dict(ntk_summary(theta))
    report.update({"width": g["width"], "depth": g["depth"], "latent_dim": g["latent_dim"],
                   "latent": g["latent"], "activation": g["activation"], "bias": g["bias"],
                   "parameterization": g["parameterization"], "sigma_w": g["sigma_w"],
                   "sigma_b": g["sigma_b"], "n_params": gen.n_params, "seed": cfg["run"]["seed"]})
    if _two_layer_relu_applies(g):
        sb = g["sigma_b"] if g["bias"] else 0.0
        exact = ntk_summary(two_layer_relu_ntk(z, sigma_w=g["sigma_w"], sigma_b=sb))
        closed = {k: exact[k] for k in ("g1", "g2", "phi")}
        closed["rel_err_g1"] = report["g1"] / exact["g1"] - 1.0
        closed["rel_err_g2"] = report["g2"] / exact["g2"] - 1.0 if exact["g2"] else math.nan
        report["closed_form"] = closed
        if not g["bias"]:
            lim = two_layer_relu_constants(g["sigma_w"])
            report["sphere_limit"] = {
                "g1": lim["g1"], "g2": lim["g2"], "phi": lim["phi"],
                "rel_err_g1": report["g1"] / lim["g1"] - 1.0,
                "rel_err_g2": report["g2"] / lim["g2"] - 1.0}
    return report, theta


def generator_initial_outputs(cfg: dict) -> np.ndarray:
    """x_i(0) = G_theta0(z_i) (N, d) of a config's neural generator on its fixed latents: the
    same generator and latents as :func:`generator_ntk_report` and a ``model.type = "neural"``
    run with the same seed, in the run dtype."""
    gen, z = _initial_generator(cfg, np.dtype(cfg["run"]["dtype"]))
    return mlp_apply(gen, z)


def _save_npy(path, array: np.ndarray, option: str) -> str:
    from particlegan.store.storage import atomic_write_bytes, check_output_file

    p = check_output_file(path, option, ".npy")
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(p, buf.getvalue())
    return str(p)


def particle_config_from_ntk(cfg: dict, report: dict, matrix_path: str | None = None,
                             init_path: str | None = None) -> dict:
    """Particle-model config equivalent to ``cfg``'s neural run, with the measured kernel.

    ``model.type = "particle"``; ``generator.kernel = "universal"`` with g1 = report["g1"] and
    phi = report["phi"] (g2 unset: derived), or, with ``matrix_path``, ``kernel = "matrix"``
    reading the full (N, N) empirical NTK from that .npy; with ``init_path`` the particles
    start from that .npy (the generator's initial outputs, :func:`generator_initial_outputs`)
    instead of the default Gaussian. The normalisation is "ntk" (C = K/N),
    which is what the neural generator's SGD step gives to first order in eta_G
    (:class:`particlegan.model.generators.MLPGenerator`), so dynamics.eta_g carries over unchanged.

    Returns
    -------
    resolved config (ConfigError if the measured phi is outside the PSD range).
    """
    from particlegan.store.config import resolve_config

    out = {sec: dict(vals) for sec, vals in cfg.items()}
    out["model"]["type"] = "particle"
    gen = out["generator"]
    gen.update({"g1": float(report["g1"]), "phi": float(report["phi"]), "g2": None,
                "normalization": "ntk"})
    if matrix_path is not None:
        gen.update({"kernel": "matrix", "matrix_path": str(matrix_path)})
    else:
        gen["kernel"] = "universal"
    if init_path is not None:
        out["particles"].update({"init": "file", "init_path": str(init_path)})
    return resolve_config(out)


def run_ntk(cfg: dict, out_path: str, matrix_path: str | None = None,
            init_path: str | None = None) -> dict:
    """The ``particlegan ntk`` command: measure, write the particle config (TOML) and, with
    ``matrix_path``, the full empirical NTK (.npy), with ``init_path`` the generator's initial
    outputs (.npy, the particles' start in the written config). Returns the report (plus
    ``config_path``, ``matrix_path`` and ``init_path``)."""
    from particlegan.store.config import to_toml
    from particlegan.store.storage import atomic_write_bytes, check_output_file

    # every output is checked before the (possibly long) measurement writes any of them
    op = check_output_file(out_path, "--out")
    for path, option in ((matrix_path, "--matrix"), (init_path, "--init")):
        if path is not None:
            check_output_file(path, option, ".npy")
    report, theta = generator_ntk_report(cfg)
    if matrix_path is not None:
        matrix_path = _save_npy(matrix_path, theta, "--matrix")
    if init_path is not None:
        init_path = _save_npy(init_path, generator_initial_outputs(cfg), "--init")
    pcfg = particle_config_from_ntk(cfg, report, matrix_path, init_path)
    header = (f"# particle-model config from the empirical NTK of the neural generator\n"
              f"# g1 = {report['g1']!r}, g2 = {report['g2']!r}, phi = {report['phi']!r}, "
              f"offdiag_std = {report['offdiag_std']!r}\n")
    atomic_write_bytes(op, (header + to_toml(pcfg)).encode())
    report["config_path"] = str(op)
    report["matrix_path"] = matrix_path
    report["init_path"] = init_path
    return report
