"""Every relative link in the repository's markdown points at a file that exists, and every #anchor at a
heading of that file (GitHub's slugs), so moving a guide or renaming a section cannot leave a dead link."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKDOWN = sorted(p for pattern in ("*.md", "docs/*.md", "bench/*.md", "experiments/*/*.md", "web/docs/*.md")
                  for p in ROOT.glob(pattern))
LINK = re.compile(r"\]\(([^)\s]*)\)")


def github_slug(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {github_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}


def test_slug_rule():
    assert github_slug("One-step decomposition adapters (`--objective one-step`)") == \
        "one-step-decomposition-adapters---objective-one-step"


@pytest.mark.parametrize("page", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path):
    dead = []
    for target in LINK.findall(page.read_text()):
        if not target or re.match(r"[a-z]+:", target):
            continue
        file_part, _, anchor = target.partition("#")
        file = (page.parent / file_part).resolve() if file_part else page
        if not file.exists():
            dead.append(target)
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            dead.append(target)
    assert not dead, f"{page.relative_to(ROOT)}: dead links {dead}"
