"""The package's layering: each sub-package imports only from its own layer, the layers below
it and the top-level helpers (README, "Library layout")."""
import ast
from pathlib import Path

import particlegan

LAYERS = ["store", "maths", "backends", "model", "engine", "sweeps", "plots"]
PKG = Path(particlegan.__file__).resolve().parent


def _imported_layers(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("particlegan."):
            yield node.module.split(".")[1], node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("particlegan."):
                    yield alias.name.split(".")[1], node.lineno


def test_every_module_imports_only_its_layer_and_those_below():
    bad = []
    for rank, layer in enumerate(LAYERS):
        for path in sorted((PKG / layer).glob("*.py")):
            for target, line in _imported_layers(path):
                if target in LAYERS and LAYERS.index(target) > rank:
                    bad.append(f"{path.relative_to(PKG)}:{line} imports particlegan.{target}")
    assert not bad, "\n".join(bad)


def test_no_relative_imports_hide_the_layer():
    rel = [f"{p.relative_to(PKG)}:{n.lineno}" for p in PKG.rglob("*.py")
           for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.ImportFrom) and n.level > 0]
    assert not rel, rel


def test_the_top_level_holds_only_the_entry_points_and_helpers():
    top = sorted(p.stem for p in PKG.glob("*.py"))
    assert top == ["__init__", "__main__", "api", "bench", "cli", "errors", "numba_setup", "progress"]
    assert sorted(p.name for p in PKG.iterdir() if p.is_dir() and p.name != "__pycache__") == sorted(LAYERS)


def test_only_from_config_reads_config_sections_in_the_model_layer():
    """The model parts take explicit arguments: no function of particlegan/model/ but those of
    from_config.py takes a config dict (a parameter named cfg or <section>cfg)."""
    bad = []
    for path in sorted((PKG / "model").glob("*.py")):
        if path.name == "from_config.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names = [a.arg for a in node.args.args + node.args.kwonlyargs]
                bad += [f"{path.name}:{node.lineno} {node.name}({n})" for n in names if n.endswith("cfg")]
    assert not bad, bad
