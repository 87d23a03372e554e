"""Memory a run will need, estimated from its resolved config before anything is allocated.

A config such as ``particles.n = 1e9`` would otherwise grow until the operating system kills
the process, with no message. :func:`check_memory` compares the estimate with the memory the
machine has available and refuses, with a one-line ConfigError naming the keys that drive the
estimate, a run that cannot fit.

The estimate counts the arrays that live for the whole run and the largest temporaries of one
step (in bytes, ``dtype`` itemsize per number; float64 for the reference-backend kernel blocks):

    particles   (N, d) positions, proposals, forces, gradients: ~6 N d
    targets     (M, d) samples in float64 and the run dtype:     2 M d
    features    rff / relu_features: psi and dpsi of the particles (N K x 2), of the interpolates
                with the WGAN-GP penalty (N K x 2), those of the targets that the loss reads
                (M K x 0..2: none for the IPM loss, see from_config.target_feature_needs), and the
                temporaries of the largest batch while it is built
    coupling    a dense (N, N) kernel (matrix, or ntk_* with N <= dense_max)
    snapshots   S N d;  kernel-critic memory: memory N d
    neural      generator (and MLP critic) activations: ~4 N width depth
    blocks      one row block of a pair sum: max(2^22, M d) x 4 float64 temporaries

The blocks and feature temporaries are those of the numpy backend (the reference); the cpu
backend's fused passes need less (measured 2-4.5x below the estimate), so there the estimate
errs on the safe side. It is an estimate, meant to catch configs that are off by orders of
magnitude, not to predict the peak to the byte; runs that pass it can still run out of memory (a MemoryError
is then reported in one line as well).
"""
from __future__ import annotations

import os

from particlegan.errors import ConfigError

_BLOCK_ELEMS = 1 << 22  # numpy backend row-block size (backends.numpy_backend._CHUNK_ELEMS)


def estimate_memory(cfg: dict) -> dict[str, int]:
    """Bytes per component of a run of the resolved ``cfg`` (see the module docstring)."""
    item = 4 if cfg["run"]["dtype"] == "float32" else 8
    n, d = cfg["particles"]["n"], cfg["target"]["dim"]
    m = cfg["target"]["n_samples"]
    if cfg["target"]["kind"] == "ring":
        m = max(m, cfg["target"]["modes"])
    crit, gen = cfg["critic"], cfg["generator"]
    out = {
        "particles": 6 * n * d * item,
        "targets": m * d * (8 + item),
        "snapshots": cfg["run"]["snapshots"] * n * d * item,
        "blocks": 4 * max(_BLOCK_ELEMS, max(m, n) * d) * 8,
    }
    if crit["type"] in ("rff", "relu_features"):
        from particlegan.model.critics import TARGET_CHUNK_ELEMS
        from particlegan.model.from_config import target_feature_needs

        k = crit["features"]
        keep = sum(target_feature_needs(cfg["loss"]))
        rows = n + (n if cfg["loss"]["penalty"] == "interpolates" else 0)
        # psi, dpsi of the particle batches and the targets' kept ones, plus the temporaries of
        # the largest batch while it is built (the targets are built whole only when both are kept)
        build = 2 * m * k if keep == 2 else max(2 * n * k, 4 * min(TARGET_CHUNK_ELEMS, m * k))
        out["features"] = (2 * rows + keep * m + build // k) * k * item + k * d * item
    if crit["type"] == "kernel":
        out["kernel_memory"] = (crit["memory"] + 1) * n * d * item
    if gen["kernel"] == "matrix" or (gen["kernel"].startswith("ntk") and n <= gen["dense_max"]):
        out["coupling"] = n * n * 8
    if cfg["model"]["type"] == "neural":
        out["generator"] = 4 * n * gen["width"] * gen["depth"] * item + gen["width"] ** 2 * gen["depth"] * item
    if crit["type"] in ("mlp", "learned_features"):
        hidden = (crit["widths"] if crit["type"] == "mlp" else []) or [crit["width"]] * crit["depth"]
        sizes = [d, *hidden, 1]
        weights = sum(a * b for a, b in zip(sizes, sizes[1:]))
        out["critic"] = 4 * (m + n) * sum(hidden) * item + 4 * weights * item  # + grads, Adam moments
    return out


# the keys that set each component's size, named in the refusal
_DRIVERS = {
    "particles": "particles.n, target.dim", "targets": "target.n_samples, target.dim",
    "snapshots": "run.snapshots, particles.n, target.dim", "blocks": "target.n_samples, target.dim",
    "features": "critic.features, target.n_samples, particles.n",
    "kernel_memory": "critic.memory, particles.n", "coupling": "particles.n (dense N x N kernel)",
    "generator": "generator.width, generator.depth, particles.n",
    "critic": "critic.width(s), critic.depth, target.n_samples, particles.n",
}


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux MemAvailable; else physical
    memory from sysconf; None when unknown)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2 ** 30:.3g} GiB"


def estimate_text(cfg: dict) -> str:
    """The total estimate of :func:`estimate_memory`, as "x.yz GiB" (for messages)."""
    return _gib(sum(estimate_memory(cfg).values()))


def check_memory(cfg: dict, available: int | None = None) -> int:
    """Refuse a run whose estimated memory exceeds what is available.

    Parameters
    ----------
    cfg : resolved config.
    available : bytes available (default: :func:`available_memory`; unknown -> no check).

    Returns
    -------
    The estimate in bytes.

    Raises
    ------
    ConfigError naming the largest component and its keys, the estimate and the memory available.
    """
    parts = estimate_memory(cfg)
    total = sum(parts.values())
    available = available_memory() if available is None else available
    if available is not None and total > available:
        worst = max(parts, key=parts.get)
        raise ConfigError(f"this run needs about {_gib(total)} of memory, more than the {_gib(available)} "
                          f"available (largest part: {worst} {_gib(parts[worst])}, set by "
                          f"{_DRIVERS[worst]}); reduce those keys")
    return total
