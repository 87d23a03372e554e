"""particlegan: GAN training simulated as particle dynamics.

The generator is replaced by N particles in output space, coupled through a generator
(NTK-style) kernel; a critic is trained against them and the particles follow its gradient.

Python API (:mod:`particlegan.api`; loaded on first use, so that ``import particlegan`` stays
light for sweep workers): ``run``, ``grid_sweep``, ``resolve``, ``load_run``, ``load_sweep``,
``list_runs``.

Importing the package changes no environment variable and no numba or matplotlib setting: the
numba process settings (:mod:`particlegan.numba_setup`) are applied when the cpu or cuda
backend is chosen, and by the ``particlegan`` command.
"""
__version__ = "0.1.0"

_API = {"run": "api", "grid_sweep": "api", "resolve": "api", "load_run": "runstore", "load_sweep": "runstore",
        "list_runs": "runstore", "Run": "runstore"}
__all__ = ["__version__", *_API]


def __getattr__(name):  # PEP 562: the API modules import numpy; only load them when used
    if name in _API:
        import importlib

        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'particlegan' has no attribute {name!r}")
