"""particlegan: GAN training simulated as particle dynamics.

The generator is replaced by N particles in output space, coupled through a generator
(NTK-style) kernel; a critic is trained against them and the particles follow its gradient.
"""
from .numba_setup import configure_vector_width as _configure_vector_width

__version__ = "0.1.0"

# before anything imports numba: prefer 512-bit vectors on AVX-512 hosts (particlegan.numba_setup)
_configure_vector_width()
