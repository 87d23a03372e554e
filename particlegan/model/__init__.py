"""Model parts: targets, generator couplings, the generator and critic objects, losses,
optimizers and random streams, each taking explicit arguments and used by the engine through
one interface; ``from_config`` is the one module that builds them from config sections.
"""
