"""The import contracts in pyproject.toml name every module: a new one is not left unchecked."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _modules() -> set[str]:
    names = {f"botrix.{path.stem}" for path in (ROOT / "botrix").glob("*.py") if path.stem != "__init__"}
    return names | {"botrix.cli"}


def _contracts() -> list[dict[str, Any]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts: list[dict[str, Any]] = config["tool"]["importlinter"]["contracts"]
    return contracts


def test_every_module_but_the_store_is_forbidden_to_import_redis() -> None:
    (forbidden,) = [c for c in _contracts() if c["type"] == "forbidden"]
    assert forbidden["forbidden_modules"] == ["redis"]
    assert set(forbidden["source_modules"]) == _modules() - {"botrix.store"}


def test_every_module_but_the_entry_points_has_a_layer() -> None:
    (layers,) = [c for c in _contracts() if c["type"] == "layers"]
    layered = {name.strip() for layer in layers["layers"] for name in layer.split("|")}
    assert layered == _modules() - {"botrix.__main__", "botrix.examples"}
