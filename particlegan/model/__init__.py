"""Model parts: targets, generator couplings, critics, losses and optimizers. Each part is built
from its config section and used by the engine through one interface.
"""
