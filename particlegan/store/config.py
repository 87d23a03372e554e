"""Run configuration: schema with defaults, TOML loading, ``--set`` overrides, validation.

A config is a nested ``dict`` ``{section: {key: value}}``. :func:`resolve_config` merges the
user's TOML and overrides into the defaults of :data:`SCHEMA`, checks every key, type, range and
cross-key constraint, and returns the *full resolved* config (defaults included) that a run
stores in ``config.json`` and that reproduces the run exactly.

Every problem raises :class:`particlegan.errors.ConfigError` with a one-line message that names
the offending key (with a did-you-mean suggestion for unknown keys).
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from particlegan.errors import ConfigError
from particlegan.store import checks
from particlegan.numba_setup import default_backend

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Key:
    """One config key: its default, type tag, allowed choices and an optional range check.

    ``kind`` is one of ``"int"``, ``"float"``, ``"ints"``, ``"bool"``, ``"str"``, ``"path"`` (a data file,
    stored as an absolute path), ``"sha256"`` (the content hash of the path key of the same name
    without ``_sha256``: "" or 64 hex digits), ``"float?"`` (float or None), ``"floats"`` (list
    of floats).
    ``check(value)`` returns an error message (without the key name) or None.
    """

    default: Any
    kind: str
    doc: str
    choices: tuple | None = None
    check: Callable[[Any], str | None] | None = None


def _alpha(v):
    return None if v > 0 else "must be > 0 (use inf for alpha = infinity)"


def _optimizer_keys(who: str) -> dict[str, Key]:
    """Optimizer option keys of one player section (read by model.from_config.optimizer_from_config;
    each applies only to the optimizers named in its doc, the others ignore it)."""
    return {
        "momentum": Key(0.9, "float", f"{who}: momentum coefficient mu (optimizer = momentum)",
                        check=checks.unit_half_open),
        "nesterov": Key(False, "bool", f"{who}: Nesterov momentum (optimizer = momentum)"),
        "betas": Key([0.9, 0.999], "floats", f"{who}: Adam (beta1, beta2) (optimizer = adam)",
                     check=checks.pair_of(checks.unit_half_open, "numbers in [0, 1)")),
        "amsgrad": Key(False, "bool", f"{who}: AMSGrad variant (optimizer = adam)"),
        "adam_eps": Key(1e-8, "float", f"{who}: Adam epsilon (optimizer = adam)", check=checks.positive),
        "adam_reset": Key(False, "bool", f"{who}: reset optimizer moments/directions at every "
                          "outer step (USD's Adam re-created each step; any optimizer)"),
        "cg_rule": Key("FR", "str", f"{who}: conjugate-gradient beta rule (optimizer = cg)",
                       choices=("FR", "PRP", "HS", "DY", "HS_DY", "FR_PRP", "HZ")),
        "cg_beta_scale": Key(1.0, "float", f"{who}: CG scale c, gamma = c beta (optimizer = cg)",
                             check=checks.nonneg),
        "cg_beta_clip": Key("default", "str", f"{who}: CG beta clip: default [0, 1/2], code "
                            "(reference code: min(beta, 1/2) only), none (textbook)",
                            choices=("default", "code", "none")),
        "lr_schedule": Key("constant", "str", f"{who}: learning-rate rule: constant, diminishing "
                           "lr/(n+1)^lr_power, inv_sqrt, inv lr/(n+1), step_decay "
                           "lr lr_decay^(n // lr_every)",
                           choices=("constant", "diminishing", "inv_sqrt", "inv", "step_decay")),
        "lr_power": Key(0.5, "float", f"{who}: exponent of lr_schedule = diminishing",
                        check=checks.unit_open_closed),
        "lr_decay": Key(0.9, "float", f"{who}: factor of lr_schedule = step_decay",
                        check=checks.unit_open_closed),
        "lr_every": Key(10000, "int", f"{who}: period (steps) of lr_schedule = step_decay",
                        check=checks.at_least(1)),
    }


SCHEMA: dict[str, dict[str, Key]] = {
    "model": {
        "type": Key("particle", "str", "particle (effective model) or neural (MLP generator)",
                    choices=("particle", "neural")),
    },
    "target": {
        "kind": Key("ring", "str", "target distribution (file: .npy/.npz samples; idx: an MNIST-style "
                    "IDX image file, each image flattened to one sample)", choices=("ring", "grid", "file", "idx")),
        "dim": Key(2, "int", "data dimension d (ring/grid live in the first two coordinates)",
                   check=checks.at_least(2)),
        "modes": Key(8, "int", "number of ring modes", check=checks.at_least(1)),
        "radius": Key(0.75, "float", "ring radius", check=checks.positive),
        "grid_size": Key(5, "int", "modes per side of the square grid", check=checks.at_least(1)),
        "grid_spacing": Key(0.5, "float", "distance between neighbouring grid modes", check=checks.positive),
        "sigma": Key(0.075, "float", "isotropic std of each mode (also the 3-sigma quality scale)",
                     check=checks.positive),
        "n_samples": Key(4000, "int", "number M of target samples drawn", check=checks.at_least(2)),
        "path": Key("", "path", "(kind='file') .npy/.npz of target samples, shape (M, d); (kind='idx') "
                    "an IDX file such as train-images-idx3-ubyte(.gz)"),
        "indices": Key([], "ints", "(file / idx) which samples to use, by row; empty: all rows of a "
                       "file, the first n_samples images of an IDX file", check=checks.each(checks.nonneg, "integers >= 0")),
        "normalize": Key("none", "str", "(file / idx) pixel scaling of the samples: none, unit "
                         "(x / 255), mnist ((x / 255 - 0.1307) / 0.3081, the paper's)",
                         choices=("none", "unit", "mnist")),
        "path_sha256": Key("", "sha256", "content hash of target.path (filled in when the config is "
                           "resolved; a stored one must match the file)"),
    },
    "particles": {
        "n": Key(256, "int", "number N of particles", check=checks.at_least(2)),
        "init": Key("gaussian", "str", "particle initialisation: N(0, init_sigma^2 I), "
                    "N(target mean, init_sigma^2 I) (target_mean) or a file",
                    choices=("gaussian", "target_mean", "file")),
        "init_sigma": Key(0.1, "float", "std of the Gaussian initialisation (at the origin or at "
                          "the target mean)", check=checks.positive),
        "init_path": Key("", "path", "(init='file') .npy/.npz of initial particles, shape (N, d)"),
        "init_path_sha256": Key("", "sha256", "content hash of particles.init_path (filled in when "
                                "the config is resolved; a stored one must match the file)"),
    },
    "generator": {
        "kernel": Key("universal", "str", "generator coupling kernel",
                      choices=("universal", "identity", "ntk_relu", "ntk_erf", "matrix")),
        "g1": Key(1.0, "float", "universal kernel: same-particle constant g1", check=checks.positive),
        "phi": Key(0.0, "float", "universal kernel: coupling ratio g2/g1 (PSD: -1/(N-1) <= phi <= 1)"),
        "g2": Key(None, "float?", "universal kernel: g2 (overrides phi when set; phi := g2/g1)"),
        "normalization": Key("ntk", "str", "coupling C = K/N ('ntk'), C = K ('none'), or for the "
                             "universal kernel C = (g1 - g2) I + (g2/N) 1 1^T ('mean', [derived]: "
                             "collective force = g2 x the mean critic gradient), or C = K / lambda_max(K) "
                             "('spectral', [derived]: the fastest mode at rate 1; dense kernels only), or "
                             "for the universal kernel the centre of mass at rate g1 and the relative modes "
                             "at g1 (g1 - g2) / (g1 + c g2), c = generator.interp_c ('interpolated', "
                             "[derived, fitted]: c = 0 is 'mean', c = N - 1 is g1 x 'spectral')",
                             choices=("ntk", "none", "mean", "spectral", "interpolated")),
        "interp_c": Key(0.0, "float", "(normalization='interpolated') c >= 0 in the relative-mode rate "
                        "g1 (g1 - g2) / (g1 + c g2): 0 is 'mean', N - 1 is g1 x 'spectral'",
                        check=checks.nonneg),
        "latent_dim": Key(64, "int", "dimension d_z of the latent codes (sphere of radius sqrt(d_z))",
                          check=checks.at_least(1)),
        "sigma_w": Key(1.0, "float", "NTK weight std", check=checks.positive),
        "sigma_b": Key(0.0, "float", "NTK bias std", check=checks.nonneg),
        "matrix_path": Key("", "path", "(kernel='matrix') .npy of a symmetric PSD (N, N) kernel"),
        "matrix_path_sha256": Key("", "sha256", "content hash of generator.matrix_path (filled in "
                                  "when the config is resolved; a stored one must match the file)"),
        "dense_max": Key(4096, "int", "build NTK kernels densely up to this N, else matrix-free",
                         check=checks.at_least(1)),
        # neural generator (model.type = 'neural')
        "width": Key(256, "int", "neural generator: hidden width", check=checks.at_least(1)),
        "depth": Key(1, "int", "neural generator: number of hidden layers", check=checks.at_least(1)),
        "activation": Key("relu", "str", "neural generator activation",
                          choices=("relu", "leaky_relu", "tanh")),
        "bias": Key(False, "bool", "neural generator: use biases"),
        "latent": Key("sphere", "str", "latent distribution", choices=("gaussian", "sphere")),
        "parameterization": Key("ntk", "str", "neural generator parameterisation",
                                choices=("standard", "ntk")),
        "fresh_latents": Key(False, "bool", "neural generator: fresh latent minibatch every step"),
        "optimizer": Key("sgd", "str", "neural generator optimizer (learning rate dynamics.eta_g)",
                         choices=("sgd", "momentum", "adam", "cg")),
        **_optimizer_keys("neural generator"),
    },
    "critic": {
        "type": Key("rff", "str", "critic (discriminator) model",
                    choices=("rff", "relu_features", "kernel", "mmd", "energy", "riesz", "mlp",
                             "learned_features")),
        "sigma": Key(0.2, "float", "RBF width of the random-feature / kernel critic", check=checks.positive),
        "features": Key(512, "int", "number K of random features", check=checks.at_least(1)),
        "memory": Key(0, "int", "kernel critic: past particle snapshots kept (0 = current witness)",
                      check=checks.nonneg),
        "ridge": Key(0.0, "float", "kernel critic: RKHS ridge lambda_r (memory decay 1 - eta_d lambda_r)",
                     check=checks.nonneg),
        "weight_decay": Key(0.0, "float", "L2 decay on trainable critic parameters", check=checks.nonneg),
        "optimizer": Key("sgd", "str", "critic optimizer (gradient ascent, learning rate dynamics.eta_d)",
                         choices=("sgd", "momentum", "adam", "cg")),
        **_optimizer_keys("critic"),
        "riesz_s": Key(1.0, "float", "riesz critic exponent s (default m - 1 = 1 in d = 2)",
                       check=checks.positive),
        "riesz_eps": Key(1e-3, "float", "riesz critic regularisation eps", check=checks.positive),
        "mmd_sigmas": Key([0.2], "floats", "mmd critic: Gaussian widths of the mixture",
                          check=checks.each(checks.positive, "numbers > 0", nonempty=True)),
        "width": Key(128, "int", "mlp / learned_features critic: hidden width", check=checks.at_least(1)),
        "widths": Key([], "ints", "mlp critic: hidden widths layer by layer, e.g. [64, 1024, 64] "
                      "(empty: depth layers of width)", check=checks.each(checks.at_least(1), "integers >= 1")),
        "depth": Key(2, "int", "mlp / learned_features critic: hidden layers", check=checks.at_least(1)),
        "dropout": Key([], "floats", "mlp critic: dropout rate after each hidden "
                       "layer, one per hidden layer (e.g. [0, 0.2, 0], USD's critic); applied in "
                       "the critic steps, not in the particle forces; empty: none", check=checks.each(checks.unit_half_open, "rates in [0, 1)")),
        "output_bias": Key(True, "bool", "mlp critic: bias on the output layer (false: USD's "
                           "Linear(64, 1, bias=False))"),
        "activation": Key("relu", "str", "mlp / learned_features critic activation",
                          choices=("relu", "leaky_relu", "tanh")),
        "feature_dim": Key(2, "int", "learned_features critic: feature-space dimension m",
                           check=checks.at_least(1)),
        "feature_kernel": Key("gaussian", "str", "learned_features critic: feature-space kernel "
                              "(gaussian: widths mmd_sigmas; riesz: riesz_s, riesz_eps)",
                              choices=("gaussian", "energy", "riesz")),
        "beta": Key(0.0, "float", "learned_features critic: weight of the stabilising term "
                    "[derived construction; beta > 1 removes the linear instability; 0: off]",
                    check=checks.nonneg),
        "stabilizer": Key("real", "str", "learned_features critic: stabilising self-interaction on "
                          "the target features (real) or on both feature clouds (symmetric)",
                          choices=("real", "symmetric")),
    },
    "loss": {
        "kind": Key("ipm", "str", "objective",
                    choices=("ipm", "minimax", "nonsaturating", "alpha")),
        "alpha_d": Key(1.0, "float", "alpha-loss parameter of the critic (inf allowed)", check=_alpha),
        "alpha_g": Key(1.0, "float", "alpha-loss parameter of the generator (inf allowed)",
                       check=_alpha),
        "saturating": Key(True, "bool", "alpha loss: saturating generator (False: non-saturating)"),
        "penalty": Key("fake", "str", "gradient penalty location",
                       choices=("none", "fake", "real", "interpolates")),
        "penalty_weight": Key(1.0, "float", "gradient penalty strength lambda", check=checks.nonneg),
        "penalty_form": Key("lambda", "str",
                            "penalty convention: lambda E||grad f||^2, (lambda/2) E||grad f||^2, or "
                            "mean_grad: lambda E||grad_x mean_j f(x_j)||^2 = (lambda/n^2) E||grad f||^2 "
                            "over the n penalty points (IBM/USD's D_forward_weights)",
                            choices=("lambda", "half_lambda", "mean_grad")),
    },
    "dynamics": {
        "eta_g": Key(1.0, "float", "particle (generator) step size eta_G", check=checks.positive),
        "eta_d": Key(0.01, "float", "critic learning rate eta_D", check=checks.positive),
        "critic_steps": Key(5, "int", "critic steps n_c per particle step", check=checks.at_least(1)),
        "critic_steps_startup": Key(100, "int", "critic steps before the first outer step (whose own "
                                     "dynamics.critic_steps then precede the first particle step)",
                                    check=checks.nonneg),
        "update": Key("alternating", "str", "alternating or simultaneous updates",
                      choices=("alternating", "simultaneous")),
    },
    "observables": {
        "mmd_sigma": Key(0.2, "float", "Gaussian width of the recorded MMD^2", check=checks.positive),
        "mmd_samples": Key(1000, "int", "target samples used for the recorded MMD^2",
                           check=checks.at_least(2)),
        "hq_sigmas": Key(3.0, "float", "high-quality radius in units of target.sigma", check=checks.positive),
        "kid": Key(False, "bool", "record the KID (P1.5: cubic polynomial kernel, gamma = 1/d, on the "
                   "raw positions: particles as fake, target samples as real features) as series "
                   "kid and kid_std (absent when false)"),
        "cosine": Key(False, "bool", "record the cosine observables of data-point targets (the paper's "
                      "MNIST measures: collapse_cos = log M - H(p) with nearest-target cosine assignment, "
                      "quality_cos, spread_cos, targets_hit; absent when false)"),
        "kid_subsets": Key(10, "int", "KID: number of random subsets (drawn from the observables "
                           "random stream)", check=checks.at_least(1)),
        "kid_subset_size": Key(200, "int", "KID: rows per subset, capped at min(particles.n, "
                               "target.n_samples)", check=checks.at_least(2)),
    },
    "schedule": {
        "kind": Key("none", "str", "learning-rate schedule of the run: none, or kid (KID-driven "
                    "decay of eta_G and eta_D by the three-sample test of P1.7-P1.8 on the raw "
                    "positions, first min(2048, N, M) particles and target samples; series "
                    "lr_scale)",
                    choices=("none", "kid")),
        "every": Key(50, "int", "kid schedule: evaluate every this many particle steps (spec: 2000, "
                     "for ~1e5-step GAN training; with 50 a 1500-step run fills a 10-entry window "
                     "by step 450 and tests from step 500 on)", check=checks.at_least(1)),
        "window": Key(10, "int", "kid schedule: FIFO memory of past evaluations; the current "
                      "particles are tested against the oldest", check=checks.at_least(1)),
        "p_threshold": Key(0.1, "float", "kid schedule: a test with p above this is a failure "
                           "(no significant improvement)", check=checks.unit_closed),
        "patience": Key(3, "int", "kid schedule: consecutive failures that trigger a decay",
                        check=checks.at_least(1)),
        "factor": Key(0.5, "float", "kid schedule: decay factor of eta_G and eta_D",
                      check=checks.unit_open),
        "floor": Key(1e-6, "float", "kid schedule: lower bound of the decayed eta_G (eta_D keeps "
                     "the ratio eta_D / eta_G)", check=checks.nonneg),
    },
    "run": {
        "steps": Key(1500, "int", "number of particle steps", check=checks.at_least(1)),
        "record_every": Key(10, "int", "record observables every this many steps", check=checks.at_least(1)),
        "snapshots": Key(6, "int", "particle snapshots stored (evenly spaced, incl. start and end)",
                         check=checks.at_least(2)),
        "seed": Key(0, "int", "master seed", check=checks.nonneg),
        "backend": Key("auto", "str", "compute backend; 'auto': cpu when numba is installed, else "
                       "numpy (resolved, and stored as the one chosen)", choices=("auto", "numpy", "cpu", "cuda")),
        "dtype": Key("float64", "str", "floating point type", choices=("float64", "float32")),
        "checkpoint_every": Key(0, "int", "write a checkpoint every this many steps (0: never)",
                                check=checks.nonneg),
        "divergence_bound": Key(1e6, "float",
                                "stop as diverged when max |x_i| exceeds this times (1 + max |y|) "
                                "(runaway growth; 0: only NaN/inf)", check=checks.nonneg),
    },
}


# --------------------------------------------------------------------------------------------
def default_config() -> dict:
    """Return the full default config as a fresh nested dict (``run.backend``'s "auto"
    resolved to this machine's choice, :func:`particlegan.numba_setup.default_backend`)."""
    cfg = {sec: {k: copy.deepcopy(spec.default) for k, spec in keys.items()} for sec, keys in SCHEMA.items()}
    cfg["run"]["backend"] = default_backend()
    return cfg


def _suggest(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def load_toml(path: str | Path) -> dict:
    """Read a TOML config file; unreadable or malformed files raise ConfigError naming the file."""
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file '{p}' does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file '{p}' is a directory") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file '{p}' cannot be read: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file '{p}' is not valid TOML: {exc}") from None
    return data


def parse_override(item: str) -> tuple[str, str, Any]:
    """Parse ``section.key=value``; the value is read as a TOML value, else as a bare string."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    lhs, raw = item.split("=", 1)
    parts = lhs.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"override {item!r}: the key must look like section.key")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return parts[0], parts[1], value


def _coerce(section: str, key: str, spec: Key, value: Any) -> Any:
    name = f"{section}.{key}"
    kind = spec.kind
    if kind == "float?" and value is None:
        return None
    if kind in ("float", "float?"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        try:
            value = float(value)
        except OverflowError:
            raise ConfigError(f"{name} = {value} is too large for a floating-point number") from None
        if math.isnan(value):
            raise ConfigError(f"{name} must be a finite number, got nan")
        if math.isinf(value) and not (key.startswith("alpha") and value > 0):
            raise ConfigError(f"{name} must be a finite number, got {value}")
    elif kind == "int":
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        if not -2 ** 63 <= value < 2 ** 63:  # every integer key ends up in an int64 somewhere
            raise ConfigError(f"{name} = {value} is out of the 64-bit integer range")
    elif kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
    elif kind in ("str", "path", "sha256"):
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        if kind == "sha256" and value and not (len(value) == 64 and all(c in "0123456789abcdef" for c in value)):
            raise ConfigError(f"{name} must be empty or 64 lowercase hex digits, got {value!r}")
    elif kind == "ints":
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if isinstance(value, list):
            value = [int(v) if isinstance(v, float) and math.isfinite(v) and v.is_integer() else v
                     for v in value]
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                  and -2 ** 63 <= v < 2 ** 63 for v in value):
            raise ConfigError(f"{name} must be a list of integers, got {value!r}")
    elif kind == "floats":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{name} must be a list of numbers, got {value!r}")
        try:
            value = [float(v) for v in value]
        except OverflowError:
            raise ConfigError(f"{name} holds a number too large for a floating-point number") from None
        if not all(math.isfinite(v) for v in value):
            raise ConfigError(f"{name} must hold finite numbers, got {value!r}")
    if spec.choices is not None:
        msg = checks.one_of(spec.choices)(value)
        if msg:
            raise ConfigError(f"{name} {msg}, got {value!r}{_suggest(str(value), spec.choices)}")
    if spec.check is not None and value is not None:
        checks.require(name, value, spec.check)
    return value


def _set(cfg: dict, section: str, key: str, value: Any) -> None:
    if section not in SCHEMA:
        raise ConfigError(f"unknown config section {section!r}{_suggest(section, SCHEMA)}")
    if key not in SCHEMA[section]:
        raise ConfigError(f"unknown config key {section + '.' + key!r}"
                          f"{_suggest(key, SCHEMA[section])}")
    cfg[section][key] = _coerce(section, key, SCHEMA[section][key], value)


def _check_cross(cfg: dict) -> None:
    """Constraints that involve several keys; derives phi from g2 when g2 is given."""
    gen = cfg["generator"]
    n = cfg["particles"]["n"]
    if gen["g2"] is not None:
        gen["phi"] = gen["g2"] / gen["g1"]
    if gen["kernel"] == "universal":
        lo = -1.0 / (n - 1)
        if not (lo <= gen["phi"] <= 1.0):
            key = "generator.g2" if gen["g2"] is not None else "generator.phi"
            raise ConfigError(f"{key} gives phi = {gen['phi']!r} outside the PSD range "
                              f"[{lo:.6g}, 1] for particles.n = {n}")
    if cfg["target"]["kind"] in ("file", "idx") and not cfg["target"]["path"]:
        raise ConfigError(f"target.path must be set when target.kind = '{cfg['target']['kind']}'")
    if cfg["particles"]["init"] == "file" and not cfg["particles"]["init_path"]:
        raise ConfigError("particles.init_path must be set when particles.init = 'file'")
    if gen["normalization"] in ("mean", "interpolated") and gen["kernel"] != "universal":
        raise ConfigError(f"generator.normalization = '{gen['normalization']}' is defined for "
                          "generator.kernel = 'universal' only (use 'ntk' or 'none')")
    if gen["normalization"] == "interpolated" and not 1.0 + gen["interp_c"] * gen["phi"] > 0:
        raise ConfigError(f"generator.interp_c = {gen['interp_c']!r} with phi = {gen['phi']!r} gives "
                          "g1 + c g2 <= 0 (normalization = 'interpolated' needs 1 + c phi > 0)")
    if (gen["normalization"] == "spectral" and gen["kernel"] in ("ntk_relu", "ntk_erf")
            and n > gen["dense_max"]):
        raise ConfigError(f"generator.normalization = 'spectral' needs the kernel held densely: "
                          f"particles.n = {n} exceeds generator.dense_max = {gen['dense_max']}")
    if gen["kernel"] == "matrix" and not gen["matrix_path"]:
        raise ConfigError("generator.matrix_path must be set when generator.kernel = 'matrix'")
    if gen["bias"] and gen["parameterization"] == "ntk" and gen["sigma_b"] == 0:
        raise ConfigError("generator.bias = true has no effect with generator.sigma_b = 0 under "
                          "generator.parameterization = 'ntk' (biases enter as sigma_b b): set "
                          "generator.sigma_b > 0 (e.g. 1) or leave generator.bias = false")
    crit, loss = cfg["critic"], cfg["loss"]
    if crit["type"] in ("kernel", "mmd", "energy", "riesz") and loss["penalty"] != "none":
        raise ConfigError(f"loss.penalty must be 'none' for critic.type = '{crit['type']}' "
                          "(a fixed-kernel critic has no trainable parameters to penalise)")
    if loss["penalty_form"] == "mean_grad" and loss["penalty"] == "interpolates":
        raise ConfigError("loss.penalty_form = 'mean_grad' applies to the squared-norm penalties "
                          "(loss.penalty = 'fake' or 'real'), not to 'interpolates'")
    if crit["dropout"]:
        hidden = len(crit["widths"]) or crit["depth"]
        if crit["type"] != "mlp":
            raise ConfigError("critic.dropout is available for critic.type = 'mlp' only (leave it "
                              "empty otherwise)")
        if len(crit["dropout"]) != hidden:
            raise ConfigError(f"critic.dropout has {len(crit['dropout'])} rates for {hidden} hidden "
                              "layers: give one rate per hidden layer (0 for none)")
    sched = cfg["schedule"]
    if sched["kind"] == "kid":
        if sched["floor"] > cfg["dynamics"]["eta_g"]:
            raise ConfigError(f"schedule.floor = {sched['floor']!r} must not exceed dynamics.eta_g = "
                              f"{cfg['dynamics']['eta_g']!r} (the floor bounds the decayed eta_G)")
        if n < 3:
            raise ConfigError("schedule.kind = 'kid' needs particles.n >= 3 (three-sample test)")
        if cfg["target"]["n_samples"] < 3:
            raise ConfigError("schedule.kind = 'kid' needs target.n_samples >= 3 (three-sample test)")
    if crit["type"] == "learned_features" and (loss["kind"] != "ipm" or loss["penalty"] != "none"):
        raise ConfigError("critic.type = 'learned_features' needs loss.kind = 'ipm' and loss.penalty = "
                          "'none' (the critic maximises the feature-space distance itself)")
    if crit["type"] in ("mmd", "energy", "riesz") and loss["kind"] != "ipm":
        raise ConfigError(f"loss.kind must be 'ipm' for the distance flow critic.type = "
                          f"'{crit['type']}' (the particles descend the distance directly)")


PATH_KEYS = tuple((sec, k) for sec, keys in SCHEMA.items() for k, spec in keys.items() if spec.kind == "path")
_HASH_CACHE: dict[tuple, str] = {}


def file_sha256(path: str | Path) -> str | None:
    """sha256 hex digest of a file's content (None if it is not a readable regular file).

    A ``FILE.npz:NAME`` path hashes FILE. Cached by (path, size, mtime), so a sweep that
    resolves thousands of configs reads each data file once.
    """
    from particlegan.store.storage import split_npz_key

    p, _ = split_npz_key(path)
    try:
        st = p.stat()
    except (OSError, ValueError):  # ValueError: a NUL in the path
        return None
    if not p.is_file():
        return None
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        h = hashlib.sha256()
        try:
            with open(p, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        except OSError:
            return None
        _HASH_CACHE[key] = h.hexdigest()
    return _HASH_CACHE[key]


def _absolute(value: str, base_dir: str | Path | None) -> str:
    if not value:
        return value
    p = Path(value).expanduser()
    if not p.is_absolute():
        p = Path(base_dir or Path.cwd()) / p
    return os.path.abspath(p)


def absolutize_paths(user: Mapping, base_dir: str | Path | None) -> dict:
    """Copy of a user dict whose relative data paths (keys of kind "path") are made absolute
    against ``base_dir`` (the directory of the config file they were written in; None: the
    current directory)."""
    out = {sec: (dict(tab) if isinstance(tab, Mapping) else tab) for sec, tab in user.items()}
    for sec, key in PATH_KEYS:
        tab = out.get(sec)
        if isinstance(tab, dict) and isinstance(tab.get(key), str):
            tab[key] = _absolute(tab[key], base_dir)
    return out


def _attach_data_hashes(cfg: dict, stale: set[tuple[str, str]]) -> None:
    """Record the content hash of every (absolute) data path in ``<key>_sha256``.

    A hash already present (a stored config.json) must match the file: a changed data file is
    a different experiment, refused with ConfigError. ``stale``: path keys changed after the
    stored hash was given (an override), whose old hash is dropped.
    """
    for sec, key in PATH_KEYS:
        hkey = f"{key}_sha256"
        path = cfg[sec][key]
        if (sec, key) in stale:
            cfg[sec][hkey] = ""
        if not path:
            cfg[sec][hkey] = ""
            continue
        if "\x00" in path:
            raise ConfigError(f"{sec}.{key}: a file path cannot contain a NUL character")
        digest = file_sha256(path)
        if digest is None:  # missing or unreadable: building the model reports it
            continue
        stored = cfg[sec][hkey]
        if stored and stored != digest:
            raise ConfigError(f"{sec}.{key} file '{path}' has changed since this config was stored "
                              f"({sec}.{hkey} {stored[:12]}..., the file now {digest[:12]}...): its "
                              "results would not be reproduced; restore the file, or resolve the "
                              "config afresh without the stored hash")
        cfg[sec][hkey] = digest


def resolve_config(user: Mapping | None = None, overrides: list[str] | None = None,
                   seed: int | None = None, base_dir: str | Path | None = None) -> dict:
    """Merge ``user`` (parsed TOML) and ``--set`` overrides into the defaults and validate.

    Parameters
    ----------
    user : mapping ``{section: {key: value}}`` (e.g. from :func:`load_toml`), optional.
    overrides : list of ``"section.key=value"`` strings, applied after ``user``.
    seed : if given, overrides ``run.seed``.
    base_dir : directory that relative data paths in ``user`` are relative to (the config
        file's directory; default: the current directory). Paths in ``overrides`` are relative
        to the current directory.

    Returns
    -------
    dict : the full resolved config (every key present). Data paths are absolute, and each is
    paired with the sha256 of its content (``target.path_sha256``, ...), so that the run id
    changes with the data and a stored config reruns exactly from any directory.
    """
    if user is not None and not isinstance(user, Mapping):
        raise ConfigError(f"a config must be a table of sections {{section: {{key: value}}}}, "
                          f"got a {type(user).__name__}")
    cfg = default_config()
    for section, table in (user or {}).items():
        if section not in SCHEMA:
            raise ConfigError(f"unknown config section {section!r}{_suggest(section, SCHEMA)}")
        if not isinstance(table, Mapping):
            raise ConfigError(f"config section {section!r} must be a table, got {table!r}")
        for key, value in table.items():
            _set(cfg, section, key, value)
    for sec, key in PATH_KEYS:
        cfg[sec][key] = _absolute(cfg[sec][key], base_dir)
    given = {sk: cfg[sk[0]][sk[1]] for sk in PATH_KEYS}
    overridden = set()
    for item in overrides or []:
        section, key, value = parse_override(item)
        _set(cfg, section, key, value)
        overridden.add((section, key))
    for sec, key in PATH_KEYS:  # override paths are relative to the current directory
        cfg[sec][key] = _absolute(cfg[sec][key], None)
    # a path pointed elsewhere by an override drops the hash stored for the old file
    stale = {(sec, key) for sec, key in PATH_KEYS
             if cfg[sec][key] != given[(sec, key)] and (sec, f"{key}_sha256") not in overridden}
    if seed is not None:
        _set(cfg, "run", "seed", seed)
    if cfg["run"]["backend"] == "auto":  # stored resolved: a rerun uses the same backend anywhere
        cfg["run"]["backend"] = default_backend()
    _check_cross(cfg)
    _attach_data_hashes(cfg, stale)
    return cfg


def config_from_sources(path: str | Path | None = None, overrides: list[str] | None = None,
                        seed: int | None = None) -> dict:
    """Resolve a config from an optional TOML file plus overrides (the CLI entry point)."""
    user = load_toml(path) if path else {}
    return resolve_config(user, overrides, seed, base_dir=Path(path).parent if path else None)


def _json_default(obj):
    raise TypeError(f"not JSON serialisable: {obj!r}")


def canonical_json(cfg: Mapping) -> str:
    """Canonical JSON text of a config: sorted keys, repr floats, schema version included."""
    payload = {"schema_version": SCHEMA_VERSION, "config": cfg}
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=True,
                      default=_json_default)


def config_hash(cfg: Mapping, length: int = 12) -> str:
    """Run id: the first ``length`` hex digits of sha256 of :func:`canonical_json`."""
    return hashlib.sha256(canonical_json(cfg).encode()).hexdigest()[:length]


def config_from_json(text_or_path: str | Path) -> dict:
    """Re-resolve a stored ``config.json`` (as written by a run) so it can be rerun exactly."""
    p = Path(text_or_path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file '{p}' does not exist") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"config file '{p}' is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{p}' must hold a JSON object (a table of sections), "
                          f"got a {type(data).__name__}")
    if "schema_version" in data:
        version = data["schema_version"]
        if version != SCHEMA_VERSION:
            raise ConfigError(f"config file '{p}' has schema_version {version!r}; this particlegan "
                              f"reads schema_version {SCHEMA_VERSION}")
        if "config" not in data:
            raise ConfigError(f"config file '{p}' has a schema_version but no 'config' table")
        data = data["config"]
    return resolve_config(data)


def describe_schema() -> str:
    """Human-readable table of every key with its default and meaning (for docs and --help)."""
    lines = []
    for sec, keys in SCHEMA.items():
        lines.append(f"[{sec}]")
        for k, spec in keys.items():
            choices = f" one of {'/'.join(spec.choices)}." if spec.choices else ""
            lines.append(f"  {k} = {spec.default!r}  # {spec.doc}.{choices}")
    return "\n".join(lines)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "inf" if v == math.inf else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(v)  # a TOML basic string is a JSON string for our plain-text values


def to_toml(cfg: Mapping) -> str:
    """TOML text of a resolved config (None values are omitted: they mean 'derived')."""
    lines = []
    for sec in SCHEMA:
        lines.append(f"[{sec}]")
        for k in SCHEMA[sec]:
            v = cfg[sec][k]
            if v is not None:
                lines.append(f"{k} = {_toml_value(v)}")
        lines.append("")
    return "\n".join(lines)
