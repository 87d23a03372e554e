"""Compute backends for the dense pair sums of the simulator.

``get_backend(name)`` returns a module exposing the same functions on every backend:

* ``kernel_sum(X, Y, w, kernel) -> (n,)``            out_i = sum_j w_j k(x_i, y_j)
* ``kernel_grad_sum(X, Y, w, kernel) -> (n, d)``     out_i = sum_j w_j grad_1 k(x_i, y_j)
* ``kernel_value_and_grad_sum(X, Y, w, kernel) -> ((n,), (n, d))``  both (one pass on cpu/cuda)
* ``pair_sum(X, Y, kernel) -> float``                sum_{i,j} k(x_i, y_j)
* ``random_features(X, A, b, activation, scale) -> (psi, dpsi)``, each (n, K)
* ``feature_mean_and_dpsi(X, A, b, activation, scale) -> (mean psi (K,), dpsi (n, K))``  the same
  features when only the mean of psi is read (the cpu backend never writes psi then)
* ``feature_input_grads(dpsi, A, w) -> (n, d)``  grad f(x_i) of f = psi w
* ``feature_penalty(dpsi, A, w, form) -> (sq (n,), back (K,))``  input-gradient norms of f = psi w
  and their pull-back to w (the gradient penalty of the random-feature critics)
* ``ntk_apply(Z, F, kind, sigma_w, sigma_b) -> (N, d)``  out_i = sum_j Theta(z_i, z_j) F_j

Ensembles (:mod:`particlegan.engine.ensemble`) call the feature ops through
:func:`members`: the same ops with a leading member axis B on their array arguments, each
member bitwise as its own call; a backend may define ``<op>_members`` running all members as
one program (the cpu backend does, over (member, row group) work items; the cuda backend's
feature kernels take the member axis as blockIdx.z, one launch for all members), otherwise the
members are looped. A backend may also define ``feature_ascent_members`` (the cpu backend does): the
critic steps of an IPM random-feature critic with an element-wise optimizer in one call
(:meth:`particlegan.model.particle_critics.FeatureCritic.fused_ascent`), for single runs
(one member) and ensembles alike.

Backends: ``numpy`` (chunked reference oracle), ``cpu`` (numba parallel drivers),
``cuda`` (numba.cuda tiled kernels; needs a GPU, or the simulator with NUMBA_ENABLE_CUDASIM=1).
Inputs may be float32 or float64; results come back as numpy arrays in the input's float dtype.
Backends are imported lazily, so importing this package never compiles or probes for a GPU.
"""
from __future__ import annotations

from particlegan.errors import ConfigError

BACKENDS = ("numpy", "cpu", "cuda")


def cuda_available() -> bool:
    """True if numba.cuda can run kernels here (a real GPU, or the CUDA simulator)."""
    try:
        from numba import cuda
    except Exception:  # numba-cuda missing or broken: no cuda backend
        return False
    try:
        return bool(cuda.is_available())
    except Exception:
        return False


def get_backend(name: str):
    """The backend module called ``name`` (one of :data:`BACKENDS`).

    Raises
    ------
    ConfigError
        Unknown name, or 'cuda' without a usable GPU.
    """
    from particlegan.numba_setup import configure_malloc

    configure_malloc()  # every backend: large numpy temporaries from the heap (bitwise the same results)
    if name == "numpy":
        from particlegan.backends import numpy_backend
        return numpy_backend
    if name in ("cpu", "cuda"):
        from particlegan.numba_setup import configure

        configure()  # before numba's first import (vector width, sleeping idle threads)
    if name == "cpu":
        from particlegan.backends import cpu_backend
        return cpu_backend
    if name == "cuda":
        if not cuda_available():
            try:
                import numba_cuda  # noqa: F401  (the package of numba.cuda's kernels)
            except ImportError:
                raise ConfigError("backend 'cuda' needs the CUDA extra: pip install -e '.[cuda]' "
                                  "(numba-cuda); use 'cpu' or 'numpy'") from None
            raise ConfigError("backend 'cuda' needs a CUDA GPU (none found); use 'cpu' or 'numpy'")
        from particlegan.backends import cuda_backend
        return cuda_backend
    raise ConfigError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


#: feature ops with an ensemble form, and how many leading arguments carry the member axis
MEMBER_OPS = {"random_features": 3, "feature_mean_and_dpsi": 3, "feature_input_grads": 3,
              "feature_penalty": 3}


class MemberOps:
    """The feature ops of ``backend`` taking a leading ensemble axis B (see :func:`members`)."""

    def __init__(self, backend):
        from particlegan.backends.numpy_backend import loop_members

        self.backend = backend
        self.NAME = backend.NAME
        for name, n_arrays in MEMBER_OPS.items():
            fast = getattr(backend, f"{name}_members", None)
            setattr(self, name, fast if fast is not None else loop_members(getattr(backend, name), n_arrays))
        # the fused critic steps exist in member form only (a single run is one member)
        self.feature_ascent_members = getattr(backend, "feature_ascent_members", None)


def members(backend) -> MemberOps:
    """The ensemble form of ``backend``'s feature ops (:data:`MEMBER_OPS`): array arguments
    with a leading member axis B, results stacked along it, member m bitwise as ``backend``'s
    own op on member m's arrays."""
    return MemberOps(backend)
