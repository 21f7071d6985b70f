"""The import rules of docs/internals.md, checked on the source (every import, also inside
functions) and on what a fresh interpreter actually loads."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# package folder -> the isthmus packages its modules may import (itself always allowed)
ALLOWED: dict[str, set[str]] = {
    "protocol": set(),
    "tokenizer": {"protocol"},
    "engine": {"protocol", "tokenizer"},
    "center": {"protocol", "tokenizer", "engine"},
    "edge": {"protocol", "tokenizer", "engine"},
    "client": {"protocol"},
    "models": {"protocol", "tokenizer", "engine"},
    "cli": {"protocol", "tokenizer", "engine", "center", "edge", "client", "models"},
}
# engine subpackage -> the engine subpackages it may import
ENGINE_ALLOWED: dict[str, set[str]] = {
    "core": set(),  # the runner is reached through a lazy import in core.py only (see below)
    "kernels": set(),
    "model": {"kernels"},
    "runner": {"core", "model", "kernels"},
}
# the one place the torch-free core builds the torch runner, inside a function
LAZY_EXCEPTIONS = {("engine/core/core.py", "isthmus.engine.runner.model_runner")}


def imports_of(path: Path) -> list[tuple[str, bool]]:
    """(module, at_module_level) for every `import` / `from ... import` in a file."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(n) for n in tree.body}
    found: list[tuple[str, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, id(node) in top))
    return found


def sources(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_packages_import_only_what_the_layers_allow(folder: str) -> None:
    bad = []
    for path in sources(folder):
        for module, _ in imports_of(path):
            parts = module.split(".")
            if parts[0] != "isthmus" or len(parts) < 2 or parts[1] == folder:
                continue
            if parts[1] not in ALLOWED[folder]:
                bad.append(f"{path.relative_to(REPO)} imports {module}")
    assert not bad, "\n".join(bad)


def test_edge_and_center_never_import_each_other() -> None:
    assert "center" not in ALLOWED["edge"] and "edge" not in ALLOWED["center"]


def test_engine_subpackages_follow_the_torch_line() -> None:
    bad = []
    for sub, allowed in ENGINE_ALLOWED.items():
        for path in sources(f"engine/{sub}"):
            rel = str(path.relative_to(REPO))
            for module, top_level in imports_of(path):
                parts = module.split(".")
                if sub == "core" and parts[0] == "torch" and top_level:
                    bad.append(f"{rel} imports torch at module level")
                if parts[:2] != ["isthmus", "engine"] or len(parts) < 3 or parts[2] in (sub, "audit"):
                    continue
                if parts[2] not in allowed and (rel, module) not in LAZY_EXCEPTIONS:
                    bad.append(f"{rel} imports {module}")
    assert not bad, "\n".join(bad)


def loaded_after(code: str) -> set[str]:
    """Top-level module names a fresh interpreter holds after running `code`."""
    probe = code + "\nimport sys\nprint(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_engine_core_loads_no_torch() -> None:
    modules = [p.stem for p in sources("engine/core") if p.stem != "__init__"]
    code = "import isthmus.engine\n" + "\n".join(f"import isthmus.engine.core.{m}" for m in modules)
    loaded = loaded_after(code)
    assert "torch" not in loaded


@pytest.mark.parametrize("package", ["isthmus.protocol", "isthmus.client"])
def test_protocol_and_client_load_neither_torch_nor_grpc(package: str) -> None:
    modules = [p.stem for p in sources(package.split(".")[1]) if p.stem != "__init__"]
    code = f"import {package}\n" + "\n".join(f"import {package}.{m}" for m in modules)
    loaded = loaded_after(code)
    assert not loaded & {"torch", "grpc"}
