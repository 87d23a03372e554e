"""Generic checkpoint serialisation (particlegan.engine.checkpoint): any engine's state, field by field."""
import dataclasses

import numpy as np
import pytest

from particlegan.engine import checkpoint as ck
from particlegan.engine import dynamics as dyn
from particlegan.errors import DataError
from particlegan.model.optimizers import OptState
from particlegan.store.config import resolve_config

TINY = ["particles.n=16", "target.n_samples=32", "critic.features=16", "dynamics.critic_steps_startup=2",
        "observables.mmd_samples=16", "critic.width=8", "critic.depth=1", "generator.width=8"]

CASES = {
    "rff_adam": ["critic.optimizer=adam", "critic.amsgrad=true"],
    "kernel_memory": ["critic.type=kernel", "critic.memory=2", "loss.penalty=none"],
    "mlp_interpolates_cg": ["critic.type=mlp", "loss.penalty=interpolates", "critic.optimizer=cg"],
    "neural_fresh_latents": ["model.type=neural", "critic.type=mlp", "generator.fresh_latents=true",
                             "generator.optimizer=momentum", "critic.dropout=[0.2]"],
}


def _advanced(case):
    model, state = dyn.build_model(resolve_config(overrides=TINY + CASES[case], seed=4))
    for _ in range(3):  # moments, memory, streams all set
        state, _ = dyn.outer_step(model, state)
    return model, state


def _roundtrip(state, tmp_path, fresh):
    path = tmp_path / "checkpoint.npz"
    ck.save_checkpoint(path, "rid", state, {"step": [0, 1]}, [], [])
    return ck.restore_state(fresh, ck.load_checkpoint(path, "rid"))


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_restored_state_continues_bitwise_as_the_original(case, tmp_path):
    model, state = _advanced(case)
    _, fresh = dyn.build_model(model.cfg)  # the rebuilt run's initial state is the template
    restored = _roundtrip(state, tmp_path, fresh)
    assert restored.step == state.step == 3
    a, b = state, restored
    for _ in range(2):
        a, _ = dyn.outer_step(model, a)
        b, _ = dyn.outer_step(model, b)
    np.testing.assert_array_equal(a.x, b.x)
    if a.w is not None:
        np.testing.assert_array_equal(a.w, b.w)
    if a.kernel_state is not None:
        np.testing.assert_array_equal(a.kernel_state.snapshots, b.kernel_state.snapshots)
        np.testing.assert_array_equal(a.kernel_state.coefs, b.kernel_state.coefs)
    assert a.noise.bit_generator.state == b.noise.bit_generator.state
    if a.gen is not None:  # the MLP generator's parameters, latents, stream and optimizer
        np.testing.assert_array_equal(a.gen.theta, b.gen.theta)
        np.testing.assert_array_equal(a.gen.z, b.gen.z)
        assert a.gen.latents.bit_generator.state == b.gen.latents.bit_generator.state
    for a_opt, b_opt in ((a.critic_opt, b.critic_opt), (getattr(a.gen, "opt", None), getattr(b.gen, "opt", None))):
        assert (a_opt is None) == (b_opt is None)
        for key, value in (vars(a_opt) if a_opt is not None else {}).items():  # the optimizer states
            np.testing.assert_array_equal(np.asarray(value, dtype=object), np.asarray(getattr(b_opt, key), dtype=object))


def test_every_state_field_is_stored_without_a_field_list(tmp_path):
    _, state = _advanced("neural_fresh_latents")
    arrays, scalars = ck.state_fields(state)
    stored = {k for k in (*arrays, *scalars) if "__" not in k}
    assert stored == {f.name for f in dataclasses.fields(state)}
    assert scalars["gen"]["__dataclass__"] == "MLPGeneratorState"  # nested: the generator's own state
    assert "__rng__" in scalars["gen__latents"] and scalars["gen__opt"]["__dataclass__"] == "OptState"
    assert arrays["gen__theta"].shape == state.gen.theta.shape


def test_a_field_without_a_checkpoint_form_is_refused():
    @dataclasses.dataclass(frozen=True)
    class Odd:
        x: np.ndarray
        handle: object

    with pytest.raises(TypeError, match="'handle'"):
        ck.state_fields(Odd(np.zeros(2), object()))


def test_an_old_or_incomplete_checkpoint_is_refused_in_one_line(tmp_path):
    from particlegan.store.storage import atomic_save_npz

    model, state = _advanced("rff_adam")
    path = tmp_path / "checkpoint.npz"
    ck.save_checkpoint(path, "rid", state, {}, [], [])
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    loaded = ck.load_checkpoint(path, "rid")
    del loaded["fields"][0]["x"]
    with pytest.raises(DataError, match="no field 'x'"):
        ck.restore_state(state, loaded)
    arrays[ck._JSON_KEY] = ck._json_bytes({"run_id": "rid", "step": 3})  # a format-1 file: no "format"
    atomic_save_npz(path, arrays)
    with pytest.raises(DataError, match="older particlegan") as err:
        ck.load_checkpoint(path, "rid")
    assert "\n" not in str(err.value)


def _leaves(value, path):
    """(path, leaf) of a state value, through nested state dataclasses."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _leaves(getattr(value, f.name), f"{path}.{f.name}")
    else:
        yield path, value


@pytest.mark.parametrize("case", sorted(CASES))
def test_states_hold_only_arrays_numbers_and_streams(case):
    """Pure state: after a few steps every leaf of the state (optimizer moments included) is an
    array, a number, None or a random stream -- no object with behaviour of its own."""
    _, state = _advanced(case)
    kinds = (np.ndarray, np.random.Generator, bool, int, float, type(None))
    odd = [(p, type(v).__name__) for p, v in _leaves(state, "state") if not isinstance(v, kinds)]
    assert not odd, odd
    assert isinstance(state.critic_opt, (type(None), OptState))
