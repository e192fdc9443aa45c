"""The front door: a short README whose map reaches every page of docs/, and links that resolve."""

from __future__ import annotations

import re

from tests.conftest import ROOT

LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200
    for heading in ("## Two commands", "## What you will type", "## Results on the embedded default", "## Documentation"):
        assert heading in lines


def test_every_docs_page_is_reachable_from_the_readme():
    linked = {m.group(1) for m in LINK.finditer((ROOT / "README.md").read_text())}
    pages = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    assert pages <= linked, f"not in the README's map: {sorted(pages - linked)}"


def test_links_resolve():
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for m in LINK.finditer(page.read_text()):
            target = m.group(1)
            if target.startswith(("http://", "https://")):
                continue
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to {target}, which does not exist"
