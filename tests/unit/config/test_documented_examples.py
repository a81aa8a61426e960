"""Every TOML example in README.md and docs/ is a valid configuration, so the documentation
cannot drift from the config model. README's first example is a whole configuration; the
others are fragments, checked laid over it (a job fragment adds keys to README's job)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from backupd.config.load import parse_data

ROOT = Path(__file__).resolve().parents[3]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TOML_BLOCK = re.compile(r"```toml\n(.*?)```", re.S)


def _blocks() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for i, block in enumerate(TOML_BLOCK.findall(doc.read_text())):
            found.append((f"{doc.relative_to(ROOT)}#{i + 1}", block))
    return found


def _overlay(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _overlay(merged[key], value)
        else:
            merged[key] = value
    return merged


def test_readme_holds_a_whole_configuration() -> None:
    name, block = _blocks()[0]
    config = parse_data(tomllib.loads(block), name)
    assert config.jobs and config.sources and config.destinations


@pytest.mark.parametrize(("name", "block"), _blocks()[1:], ids=[n for n, _ in _blocks()[1:]])
def test_documented_fragment_is_valid(name: str, block: str) -> None:
    whole = tomllib.loads(_blocks()[0][1])
    parse_data(_overlay(whole, tomllib.loads(block)), name)
