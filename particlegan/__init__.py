"""particlegan: GAN training simulated as particle dynamics.

The generator is replaced by N particles in output space, coupled through a generator
(NTK-style) kernel; a critic is trained against them and the particles follow its gradient.
"""
__version__ = "0.1.0"
