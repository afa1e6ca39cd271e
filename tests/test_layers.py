"""The layers: the core (`fastslow/`) imports no Ray and nothing above it; the query path imports no training."""

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ABOVE_CORE = ("ray", "cluster", "actors", "jobs", "serve_app", "apps", "benchmarks")
TRAINING = ("fastslow.train", "fastslow.config")


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def test_no_core_module_imports_ray_or_a_layer_above_it():
    offending = {}
    for path in sorted((ROOT / "fastslow").rglob("*.py")):
        if path.name == "__main__.py":  # `python -m fastslow`: the entry that starts the app, not library code
            continue
        bad = sorted(m for m in imported_modules(path) if m.split(".")[0] in ABOVE_CORE)
        if bad:
            offending[str(path.relative_to(ROOT))] = bad
    assert not offending, f"core modules importing ray or a layer above the core: {offending}"


# `python -m jobs.X` for `ray job submit`: each the command line under its old name, nothing else.
COMMAND_ALIASES = {"jobs/train_fast.py", "jobs/train_slow.py", "jobs/distill.py", "jobs/build_index.py"}


def test_the_ray_layers_do_not_import_the_apps():
    offending = {}
    for layer in ("cluster", "actors", "jobs", "serve_app"):
        for path in sorted((ROOT / layer).rglob("*.py")):
            if str(path.relative_to(ROOT)) in COMMAND_ALIASES:
                assert len(path.read_text().splitlines()) < 12, f"{path}: an alias of the command line, no more"
                continue
            bad = sorted(m for m in imported_modules(path) if m.split(".")[0] in ("apps", "benchmarks"))
            if bad:
                offending[str(path.relative_to(ROOT))] = bad
    assert not offending, f"Ray layers importing the apps: {offending}"


def _loaded_after_import(modules: list[str]) -> list[str]:
    code = (f"import json, sys\nfor m in {modules!r}: __import__(m)\n"
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_query_path_and_the_serve_modules_import_no_training_module():
    query_path = ["fastslow.search.pipeline", "serve_app.ingress", "serve_app.deployments", "serve_app.media"]
    loaded = _loaded_after_import(query_path)
    training = [m for m in loaded if m.startswith(TRAINING)]
    assert not training, f"importing the query path loaded training modules: {training}"


def test_the_core_search_path_does_not_import_ray():
    loaded = _loaded_after_import(["fastslow.search.pipeline", "fastslow.index.build", "fastslow.eval.retrieval"])
    assert not [m for m in loaded if m == "ray" or m.startswith("ray.")]
