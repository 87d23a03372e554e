"""Per-pair maths and closed forms (the bottom layer): kernel specs, ``@njit`` pair functions shared by the
cpu and cuda drivers, MMD estimators, MLP forward/backward maths and the linear stability theory.
"""
