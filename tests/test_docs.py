"""The README leads and the reference pages hold the rest: every relative link in them points at a
file that exists (and, with #anchor into a .md file, at one of its headings), the README stays
short, and its learning path starts near the top. No network: web links are not followed."""

import re
from pathlib import Path

import pytest
from conftest import ROOT

README = ROOT / "README.md"
PAGES = [
    README,
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "tools/results/README.md",
    ROOT / "data/README.md",
]
README_MAX_BYTES = 16_000
LEARNING_PATH_WITHIN = 60  # lines

FENCE = re.compile(r"^\s*(```|~~~)")
# [text](target) and ![alt](target); the target ends at whitespace (a title may follow) or ")".
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"`[^`]*`")


def prose_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the lines outside fenced code blocks."""
    lines, in_code = [], False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if FENCE.match(line):
            in_code = not in_code
        elif not in_code:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)  # \w is Unicode: letters of any script, digits, "_"
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a markdown file's headings, with GitHub's -1, -2 for repeated ones."""
    found, counts = set(), {}
    for _, line in prose_lines(path):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            count = counts.get(base, 0)
            found.add(base if count == 0 else f"{base}-{count}")
            counts[base] = count + 1
    return found


def relative_links(path: Path) -> list[tuple[int, str]]:
    links = []
    for number, line in prose_lines(path):
        for target in LINK.findall(INLINE_CODE.sub("", line)):
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: are not checked
                links.append((number, target))
    return links


def test_the_pages_exist():
    missing = [str(page.relative_to(ROOT)) for page in PAGES if not page.is_file()]
    assert not missing, f"these pages are missing: {missing}"
    assert len(PAGES) > 4, "docs/ should hold the reference pages the README points to"


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """One line in words for each relative link of `page` that does not resolve."""
    broken = []
    for number, target in relative_links(page):
        file_part, _, anchor = target.partition("#")
        where = (page.parent / file_part).resolve() if file_part else page
        name = f"{page.relative_to(root)}, line {number}: the link to {target}"
        if not where.exists():
            broken.append(f"{name} points at {file_part}, which does not exist")
        elif anchor and where.suffix == ".md" and anchor not in anchors(where):
            broken.append(
                f"{name} names #{anchor}, but {where.relative_to(root)} has no heading with that anchor"
            )
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = broken_links(page)
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_readme_links_to_every_docs_page():
    linked = {(README.parent / target.partition("#")[0]).resolve() for _, target in relative_links(README)}
    unlinked = [str(page.relative_to(ROOT)) for page in PAGES[1:] if page.resolve() not in linked]
    assert not unlinked, f"README.md does not link to {unlinked}: a page nobody can find from the README"


def test_each_docs_page_says_what_it_is_and_links_back():
    for page in sorted((ROOT / "docs").glob("*.md")):
        lines = page.read_text().splitlines()
        assert lines[0].startswith("# "), f"{page.relative_to(ROOT)} should start with a title"
        opening = " ".join(lines[1:6])
        assert "(../README.md)" in opening, (
            f"{page.relative_to(ROOT)} should say what it is and link back to the README in its first lines"
        )


def test_the_readme_is_short():
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, (
        f"README.md is {size:,} bytes, more than {README_MAX_BYTES:,}: "
        "move reference material to a page in docs/"
    )


def test_the_learning_path_starts_near_the_top_of_the_readme():
    lines = README.read_text().splitlines()
    starts = [number for number, line in enumerate(lines, 1) if re.match(r"^#+ .*learning path", line, re.I)]
    assert starts, "README.md has no heading for the learning path"
    assert starts[0] <= LEARNING_PATH_WITHIN, (
        f"the learning path's heading is on line {starts[0]} of README.md; "
        f"it should be within the first {LEARNING_PATH_WITHIN} lines"
    )


def test_the_link_check_sees_a_missing_file_and_a_wrong_anchor(tmp_path):
    """The check itself can fail: a missing file and a missing heading are both found, links in
    code are not links, and repeated headings get GitHub's numbered anchors."""
    (tmp_path / "a.md").write_text("# Is my loss good?\n\n## Notes\n\n## Notes\n\n[here](#is-my-loss-good)\n")
    (tmp_path / "c.md").write_text(
        "[good](a.md#notes-1) [bad](a.md#is-my-loss-bad) and [gone](b.md)\n"
        "`[code](nowhere.md)`\n```\n[x](nowhere.md)\n```\n[web](https://example.org/x.md)\n"
    )
    assert anchors(tmp_path / "a.md") == {"is-my-loss-good", "notes", "notes-1"}
    assert broken_links(tmp_path / "a.md", tmp_path) == []
    assert broken_links(tmp_path / "c.md", tmp_path) == [
        "c.md, line 1: the link to a.md#is-my-loss-bad names #is-my-loss-bad, "
        "but a.md has no heading with that anchor",
        "c.md, line 1: the link to b.md points at b.md, which does not exist",
    ]
    assert slug("torch.compile and DDP: which wraps which") == "torchcompile-and-ddp-which-wraps-which"
    assert slug("What is kept, and bad input") == "what-is-kept-and-bad-input"
