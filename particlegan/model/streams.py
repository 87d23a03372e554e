"""Random-number streams of a run: one independent Generator per random ingredient, held in
the state and never advanced in place (a step that draws works on a copy and stores it)."""
from __future__ import annotations

import numpy as np

STREAMS = ("target", "particles", "critic", "coupling", "noise", "observables")


def seed_streams(seed: int) -> dict[str, np.random.Generator]:
    """Independent generators for each random ingredient (:data:`STREAMS`), spawned from
    SeedSequence(seed)."""
    children = np.random.SeedSequence(seed).spawn(len(STREAMS))
    return {n: np.random.Generator(np.random.PCG64(c)) for n, c in zip(STREAMS, children)}


def advanced_copy(rng: np.random.Generator) -> np.random.Generator:
    """An independent Generator in ``rng``'s state, to draw from without touching ``rng``
    (states hold Generators that are never advanced in place)."""
    return generator_in_state(rng.bit_generator.state)


def generator_in_state(bit_state: dict) -> np.random.Generator:
    """A Generator whose bit generator is in ``bit_state`` (a ``bit_generator.state`` dict, as
    checkpoints store it)."""
    bit = getattr(np.random, bit_state["bit_generator"])()
    bit.state = bit_state
    return np.random.Generator(bit)
