"""particlegan: GAN training simulated as particle dynamics.

The generator is replaced by N particles in output space, coupled through a generator
(NTK-style) kernel; a critic is trained against them and the particles follow its gradient.

Python API (:mod:`particlegan.api`; loaded on first use, so that ``import particlegan`` stays
light for sweep workers): ``run``, ``grid_sweep``, ``resolve``, ``load_run``, ``load_sweep``,
``list_runs``.
"""
from .numba_setup import configure_vector_width as _configure_vector_width

__version__ = "0.1.0"

# before anything imports numba: prefer 512-bit vectors on AVX-512 hosts (particlegan.numba_setup)
_configure_vector_width()

_API = {"run": "api", "grid_sweep": "api", "resolve": "api", "load_run": "runstore", "load_sweep": "runstore",
        "list_runs": "runstore", "Run": "runstore"}
__all__ = ["__version__", *_API]


def __getattr__(name):  # PEP 562: the API modules import numpy; only load them when used
    if name in _API:
        import importlib

        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'particlegan' has no attribute {name!r}")
