"""The package boundaries of docs/architecture.md, enforced on every import statement."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OURS = {"cloud", "viewer_api", "collectors", "gateway", "mpr", "imaging_cloud"}
# package -> the packages of ours it may import (besides itself)
ALLOWED = {
    "mpr": set(),
    "collectors": set(),
    "gateway": {"collectors"},
    "cloud": {"mpr"},
    "viewer_api": {"cloud", "mpr", "collectors"},
    "imaging_cloud": OURS,  # the composition root wires everything
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & OURS


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_the_architecture_allows(package: str) -> None:
    offences = [
        f"{path.relative_to(REPO)} imports {imported}"
        for path in sorted((REPO / package).rglob("*.py"))
        for imported in _imports(path) - ALLOWED[package] - {package}
    ]
    assert not offences, "\n".join(offences)


def test_mpr_stays_pure() -> None:
    allowed_third_party = {"numpy", "pydicom", "pylibjpeg", "PIL", "skimage", "scipy", "simplejpeg"}
    for path in (REPO / "mpr").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                root = node.module.split(".")[0]
                assert root in allowed_third_party or root in sys.stdlib_module_names, (
                    f"{path.name} imports {root}"
                )
