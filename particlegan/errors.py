"""Package error types.

Every error a user can cause (bad config, bad file, bad path) is raised as a subclass of
:class:`ParticleGANError`; the CLI turns these into a one-line message and exit status 2.
"""


class ParticleGANError(Exception):
    """Base class of all errors raised deliberately by particlegan."""


class ConfigError(ParticleGANError):
    """A configuration key, value or file is invalid."""


class DataError(ParticleGANError):
    """A sample/particle/matrix file is missing, unreadable or has the wrong shape/content."""
