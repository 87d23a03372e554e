"""Dispersion-relation figure (effective-gan-spec B4): generator decay and critic growth rates vs |k|."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from particlegan.errors import DataError
from particlegan.maths.stability import dispersion_relation, parse_kernel_argument


def _kernel_entries(kernels) -> list[tuple[str, dict, str]]:
    """(name, params, legend label) for each entry: "name", "name:k=v,..." or (name, params)."""
    entries = []
    for item in kernels:
        if isinstance(item, str):
            name, params = parse_kernel_argument(item)
        else:
            name, params = item[0], dict(item[1])
        label = name + ("" if not params else " (" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")")
        entries.append((name, params, label))
    return entries


def plot_dispersion(kernels, k, out_path, dim: int = 2, beta: float = 0.0, rho0: float = 1.0,
                    normalize: bool = True) -> None:
    """Plot r_G(k) = rho0 |k|^2 K_hat(k) and the critic growth (1 - beta) r_G(k) for several kernels.

    Left panel: generator decay rate (log-log). Right panel: critic growth rate (symmetric-log y,
    positive = discriminator unstable; beta > 1 flips it negative, the derived stabiliser of B2).
    The PNG is written atomically (temporary file in the same directory, then os.replace).

    Parameters
    ----------
    kernels : list of kernel names, "name:key=value,..." strings or (name, params) pairs.
    k : (n,) wavenumbers > 0.
    out_path : PNG path; its directory must exist.
    dim, beta, rho0 : see :func:`particlegan.maths.stability.dispersion_relation`.
    normalize : divide each kernel's rates by max_k r_G(k) so kernels of different overall scale
        share an axis (the shapes, not the prefactors, are what differ between kernels).
    """
    out_path = Path(out_path)
    if not out_path.parent.exists():
        raise DataError(f"output directory '{out_path.parent}' does not exist")
    entries = _kernel_entries(kernels)
    if not entries:
        raise DataError("plot_dispersion needs at least one kernel")
    curves = []
    for name, params, label in entries:
        rel = dispersion_relation(name, k, rho0=rho0, dim=dim, beta=beta, kernel_params=params)
        scale = np.max(np.abs(rel["generator_decay_rate"])) if normalize else 1.0
        scale = scale if scale > 0 else 1.0
        curves.append((label, rel["k"], rel["generator_decay_rate"] / scale, rel["critic_growth_rate"] / scale))

    from particlegan.plots.plotting import new_figure, save_figure, set_signed_log_scale

    fig, (ax_g, ax_d) = new_figure(1, 2, figsize=(10, 4))
    for i, (label, kk, r_g, r_d) in enumerate(curves):
        positive = r_g > 0  # zero-symbol kernels (e.g. distance_induced beta = 1) cannot go on a log axis
        ax_g.loglog(kk[positive], r_g[positive], color=f"C{i}", label=label)
        ax_d.plot(kk, r_d, color=f"C{i}", label=label)
    unit = " / max" if normalize else ""
    top = max(float(np.max(c[2])) for c in curves)
    if top > 0:  # fast-decaying symbols (Gaussian) would otherwise squash every other curve
        ax_g.set_ylim(top * 1e-8, top * 3.0)
    ax_g.set_xlabel("wavenumber |k|")
    ax_g.set_ylabel(r"generator decay rate $r_G(k)=\rho_0|k|^2\hat K(k)$" + unit)
    ax_g.set_title(f"generator flow (dim {dim})")
    ax_d.set_xscale("log")
    # growth rates change sign with beta and span decades: asinh (smooth through 0), not symlog
    set_signed_log_scale(ax_d, np.concatenate([c[3] for c in curves]))
    ax_d.axhline(0.0, color="0.5", lw=0.8)
    ax_d.set_xlabel("wavenumber |k|")
    ax_d.set_ylabel(r"critic growth rate $(1-\beta)\,r_G(k)$" + unit)
    ax_d.set_title(rf"critic flow, stabiliser $\beta$ = {beta:g} (derived)")
    ax_g.legend(fontsize=8)
    ax_d.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out_path)
