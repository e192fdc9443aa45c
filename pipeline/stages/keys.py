"""`agd keys [SECTION]`: every key of params.yaml with its type, default, range and meaning."""

from __future__ import annotations

from pipeline.config import SECTIONS, reference
from pipeline.run.errors import AGDError


def run(section: str | None, as_markdown: bool) -> None:
    if section and section not in SECTIONS:
        raise AGDError(f"keys {section}", "unknown section", f"use one of {', '.join(SECTIONS)}")
    if as_markdown:
        print(reference.markdown(), end="")
        return
    for key, kind, default, bounds, meaning in reference.rows(section):
        print(f"{key:34} {kind:28} {default:34} {bounds:12} {meaning}")
