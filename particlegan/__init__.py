"""particlegan: GAN training simulated as particle dynamics.

The generator is replaced by N particles in output space, coupled through a generator
(NTK-style) kernel; a critic is trained against them and the particles follow its gradient.

Python API (:mod:`particlegan.api`; loaded on first use, so that ``import particlegan`` stays
light for sweep workers): ``run``, ``grid_sweep``, ``resolve``, ``load_run``, ``load_sweep``,
``list_runs``.

Layers, bottom to top (each imports only from its own layer, the ones below it and the
top-level ``errors`` / ``progress`` / ``numba_setup``):

* :mod:`particlegan.store` -- config schema and validation, atomic storage and data loaders;
* :mod:`particlegan.maths` -- per-pair maths and closed forms: kernel specs (``kernels``), the
  ``@njit`` pair functions (``pairmath``), MMD estimators (``mmd``), MLP maths (``nn``), the
  linear stability theory (``stability``);
* :mod:`particlegan.backends` -- numpy (reference oracle), cpu (numba prange) and cuda drivers of
  the pair sums;
* :mod:`particlegan.model` -- the model parts: targets, generator couplings, the generator
  objects (particles or an MLP generator), critics, losses, optimizers, random streams, and
  ``from_config`` (config sections -> model parts, the one place keys are read at build time);
* :mod:`particlegan.engine` -- the one outer step of any generator with any critic
  (``dynamics``), the empirical NTK, observables, checkpoints, resource estimates and the run
  loop (``simulate``);
* :mod:`particlegan.sweeps` -- grid sweeps, their analysis, stored runs (``runstore``);
* :mod:`particlegan.plots` -- figures;
* ``api``, ``cli`` (thin: parses, then calls the library), ``bench``.

Importing the package changes no environment variable and no numba or matplotlib setting: the
numba process settings (:mod:`particlegan.numba_setup`) are applied when the cpu or cuda
backend is chosen, and by the ``particlegan`` command (glibc's malloc thresholds, which change
no result, when any backend is chosen).
"""
__version__ = "0.1.0"

_API = {"run": "api", "grid_sweep": "api", "resolve": "api", "load_run": "sweeps.runstore",
        "load_sweep": "sweeps.runstore", "list_runs": "sweeps.runstore", "Run": "sweeps.runstore"}
__all__ = ["__version__", *_API]


def __getattr__(name):  # PEP 562: the API modules import numpy; only load them when used
    if name in _API:
        import importlib

        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'particlegan' has no attribute {name!r}")
