"""Parameter sweeps (planning, execution on local processes or Dask, crash-safe results), their
analysis, and reading stored runs and sweeps back (``runstore``).
"""
