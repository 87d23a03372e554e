"""The engine: one outer step of any generator with any critic as a function of the state
(``dynamics``), the empirical NTK, observables, checkpoints, resource estimates and the run loop
that records them (``simulate``).
"""
