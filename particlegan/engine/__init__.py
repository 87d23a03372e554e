"""The engine: one outer step as a function of the state (``dynamics`` for particles,
``neural_model`` for an MLP generator), the empirical NTK, observables, checkpoints, resource
estimates and the run loop that records them (``simulate``).
"""
