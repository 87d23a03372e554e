"""Model parts: targets, generator couplings, the generator and critic objects, losses,
optimizers and random streams. Each part is built from its config section and used by the
engine through one interface.
"""
