"""The documentation: relative links lead somewhere, and the configuration reference
matches the run-config keys in pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "configuration.md"

# [text](target) and [text]: target; the target ends at whitespace or ")".
INLINE_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)", re.MULTILINE)
FENCE = re.compile(r"^[ \t]*(```|~~~).*?^[ \t]*\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
# A run-config key: lowercase words joined by hyphens, optionally "section.key".
KEY = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*(\.[a-z][a-z0-9]*(-[a-z0-9]+)*)?$")


def doc_files() -> list[Path]:
    """Every Markdown page a reader reaches from the README."""
    files = [ROOT / "README.md", ROOT / "BENCHMARKS.md", ROOT / "deploy" / "README.md"]
    return files + sorted((ROOT / "docs").rglob("*.md"))


def without_code(text: str) -> str:
    """Text with fenced blocks and inline code removed: links inside them are not links."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def links(text: str) -> list[str]:
    """Every link target in a Markdown text, outside code."""
    prose = without_code(text)
    return INLINE_LINK.findall(prose) + REFERENCE_LINK.findall(prose)


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: link text kept, code marks and punctuation
    dropped, lowercase, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a Markdown file's headings (repeats get -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    found = set()
    for match in re.finditer(r"^#{1,6} (.+?)\s*#*$", FENCE.sub("", path.read_text()), re.MULTILINE):
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """The relative links of one page that lead to no file, or to no heading of it."""
    broken = []
    for target in links(path.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        shown = dest.relative_to(root) if dest.is_relative_to(root) else dest
        if not dest.exists():
            broken.append(f"{target}: no file {shown}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor} in {shown}")
    return broken


def pyproject_keys() -> set[str]:
    """Every run-config key that has a default in pyproject.toml."""
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]

    def flat(node: dict, prefix: str = "") -> set[str]:
        keys = set()
        for name, value in node.items():
            if isinstance(value, dict):
                keys |= flat(value, f"{prefix}{name}.")
            else:
                keys.add(f"{prefix}{name}")
        return keys

    return flat(table)


def reference_keys(text: str) -> list[str]:
    """The keys named in the first column of every table headed `key` in a page.

    A cell may name several keys (`` `fault.scale`, `fault.text` ``); each counts."""
    keys: list[str] = []
    in_key_table = False
    for line in text.splitlines():
        if not line.startswith("|"):
            in_key_table = False
            continue
        first = line.strip().strip("|").split("|")[0].strip()
        if first == "key":
            in_key_table = True
        elif in_key_table and not set(first) <= set("-: "):
            keys += [code for code in re.findall(r"`([^`]+)`", first) if KEY.match(code)]
    return keys


# -- the helpers themselves, on texts worked out by hand ------------------------------


def test_links_skip_code_and_find_reference_links():
    text = (
        "see [a](docs/a.md#x) and `[b](nope.md)`\n"
        "```\n[c](nope.md)\n```\n"
        "- x\n  ```\n  [f](g.md)\n  ```\n"
        "[d]: e.md\n"
    )
    assert links(text) == ["docs/a.md#x", "e.md"]


def test_slug_matches_github():
    assert slug("A federation described client by client: `federation-spec`") == (
        "a-federation-described-client-by-client-federation-spec"
    )
    assert slug("3. Server scale: validate + embed + consensus") == (
        "3-server-scale-validate--embed--consensus"
    )


def test_broken_links_finds_missing_files_and_anchors(tmp_path):
    (tmp_path / "b.md").write_text("# Title\n\n## Two words\n")
    page = tmp_path / "a.md"
    page.write_text(
        "[ok](b.md#two-words) [top](#here) [gone](c.md) [bad](b.md#three) [web](https://x.org)\n"
        "# Here\n"
    )
    assert broken_links(page, root=tmp_path) == [
        "c.md: no file c.md",
        "b.md#three: no heading with anchor #three in b.md",
    ]


def test_reference_keys_reads_key_tables_only():
    text = (
        "| key | default | meaning |\n|---|---|---|\n"
        "| `a.b`, `c-d` | `x` | uses `not-this` |\n| `fault.scale`, `fault.text` | 1 | |\n\n"
        "| name | what |\n|---|---|\n| `model-x` | no key table |\n"
    )
    assert reference_keys(text) == ["a.b", "c-d", "fault.scale", "fault.text"]


# -- the real documentation ------------------------------------------------------------


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_lead_somewhere(path):
    assert path.exists(), f"{path.relative_to(ROOT)} is missing"
    assert broken_links(path) == [], f"dead links in {path.relative_to(ROOT)}"


def test_the_index_links_every_docs_page():
    index = ROOT / "docs" / "README.md"
    linked = {
        (index.parent / target.partition("#")[0]).resolve() for target in links(index.read_text())
    }
    pages = {page.resolve() for page in (ROOT / "docs").glob("*.md")} - {index.resolve()}
    unlinked = sorted(str(page.relative_to(ROOT)) for page in pages - linked)
    assert unlinked == [], f"docs pages missing from the index docs/README.md: {unlinked}"
    readme = {
        (ROOT / target.partition("#")[0]).resolve()
        for target in links((ROOT / "README.md").read_text())
    }
    assert index.resolve() in readme, "README.md does not link docs/README.md"


def test_every_run_config_key_is_in_the_reference():
    documented = set(reference_keys(REFERENCE.read_text()))
    missing = sorted(pyproject_keys() - documented)
    assert missing == [], (
        f"run-config keys in pyproject.toml without a row in docs/configuration.md: {missing}; "
        "add a row (key, default, meaning) to its table"
    )


def test_the_reference_names_only_existing_keys():
    unknown = sorted(set(reference_keys(REFERENCE.read_text())) - pyproject_keys())
    assert unknown == [], (
        f"docs/configuration.md names keys that pyproject.toml [tool.flwr.app.config] does not "
        f"have: {unknown}; remove the row or add the key's default to pyproject.toml"
    )


def test_the_reference_names_each_key_once():
    keys = reference_keys(REFERENCE.read_text())
    assert sorted({k for k in keys if keys.count(k) > 1}) == []
