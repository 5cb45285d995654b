"""The project documents itself: the README's two commands, and architecture notes it carries."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _user_facing_texts() -> dict[Path, str]:
    files = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    files += sorted((REPO / "qlora_studio").rglob("*.py"))
    return {path: path.read_text(encoding="utf-8") for path in files}


def test_nothing_points_a_user_outside_the_project():
    outside = re.compile(r"\.\./shared|/work/shared")
    offenders = [
        str(p.relative_to(REPO)) for p, text in _user_facing_texts().items() if outside.search(text)
    ]
    assert offenders == []


def test_the_readme_holds_the_two_newcomer_commands_and_links_the_architecture_notes():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert 'pip install -e ".[demo]" && qlora-studio' in readme
    assert 'pip install -e ".[test]" && pytest' in readme
    assert "docs/architecture.md" in readme and (REPO / "docs" / "architecture.md").exists()
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert 'pip install -e ".[test]" && pytest' in ci


def test_the_architecture_notes_name_only_modules_that_exist():
    notes = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`((?:qlora_studio/)?(?:core|cli|gui)/[\w/]+\.py)`", notes))
    assert named, "the notes name the modules they describe"
    missing = []
    for name in named:
        path = name if name.startswith("qlora_studio/") else f"qlora_studio/{name}"
        if not (REPO / path).exists():
            missing.append(name)
    assert missing == []
