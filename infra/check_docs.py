#!/usr/bin/env python3
"""The docs check of `make test`: README.md, docs/*.md and tools/*/README.md must not point at
what is not there.

It fails (exit 1, one `file:line: problem` per line) when
  (a) a relative link's target file or directory does not exist (or lies outside the repository,
      where a forge cannot follow it),
  (b) a link's #anchor matches no heading of the target Markdown file (GitHub's slugs), or
  (c) a `make <target>` in the docs names a target the Makefile does not define.
Links are read outside code only; `make` commands are read in inline code and fenced code
blocks, where commands are written (prose such as "make sure" is not a command, nor is a shell
comment).

Standard library only, Python 3.11: `python3 infra/check_docs.py [--root DIR]`.
"""

from __future__ import annotations

import argparse
import re
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# [text](target) and ![alt](target), with an optional "title"; <target> in angle brackets too.
INLINE_LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
# [label]: target (a reference definition), on a line of its own.
REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
ATX_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
SETEXT_UNDERLINE = re.compile(r"^\s{0,3}(=+|-{2,})\s*$")
# `make` as a command word: at the start or after whitespace or a shell operator.
MAKE_COMMAND = re.compile(r"(?:^|(?<=[\s;&|(]))make((?:[ \t]+[^\s;&|()#`]+)*)")
# A rule line of the Makefile: `name other: prerequisites`, not `VAR := value`.
MAKE_RULE = re.compile(r"^([A-Za-z0-9_.\-/ ]+?)\s*::?(?!=)")
# A shell comment: from a # at the start or after whitespace to the end of the line.
SHELL_COMMENT = re.compile(r"(?:^|(?<=\s))#.*$")
LINE_ANCHOR = re.compile(r"^L\d+(?:-L\d+)?$")


@dataclass(frozen=True)
class Problem:
    path: Path
    line: int
    message: str

    def render(self, root: Path) -> str:
        return f"{self.path.relative_to(root)}:{self.line}: {self.message}"


def doc_files(root: Path) -> list[Path]:
    """The files the check reads: the front door, the guides and each tool's README."""
    files = [root / "README.md"]
    files += sorted((root / "docs").glob("*.md"))
    files += sorted((root / "tools").glob("*/README.md"))
    return [f for f in files if f.is_file()]


def split_code(lines: list[str]) -> list[tuple[int, str, bool]]:
    """Each line with its number and whether it sits in a fenced code block (fences included)."""
    out = []
    fence: str | None = None
    for number, line in enumerate(lines, start=1):
        m = FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)
            out.append((number, line, True))
        elif fence is not None:
            out.append((number, line, True))
            closing = line.strip()
            if closing.startswith(fence[0] * len(fence)) and set(closing) == {fence[0]}:
                fence = None
        else:
            out.append((number, line, False))
    return out


def plain_text(heading: str) -> str:
    """A heading as GitHub renders it: links become their text, code and emphasis marks go."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "")
    text = re.sub(r"<[^>]+>", "", text)
    text = re.sub(r"(\*\*|\*)", "", text)
    return text


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped except - and _, spaces
    to -."""
    text = plain_text(heading).strip().lower()
    text = "".join(c for c in text if c.isalnum() or c in "-_ ")
    return text.replace(" ", "-")


def is_setext_text(previous: tuple[str, bool]) -> bool:
    """Whether a line can be the text of a setext heading (the next line being === or ---)."""
    line, in_code = previous
    stripped = line.strip()
    return (
        not in_code
        and bool(stripped)
        and not ATX_HEADING.match(line)
        and not stripped.startswith(("-", "*", "+", "|", ">"))
        and not SETEXT_UNDERLINE.match(line)
    )


def anchors(path: Path) -> set[str]:
    """Every anchor the headings of a Markdown file give, duplicates as -1, -2, ..."""
    lines = path.read_text(encoding="utf-8").splitlines()
    headings = []
    previous: tuple[str, bool] | None = None
    for _, line, in_code in split_code(lines):
        if not in_code:
            m = ATX_HEADING.match(line)
            if m:
                headings.append(m.group(2))
            elif previous is not None and is_setext_text(previous) and SETEXT_UNDERLINE.match(line):
                headings.append(previous[0].strip())
        previous = (line, in_code)
    seen: dict[str, int] = {}
    result = set()
    for heading in headings:
        base = slug(heading)
        count = seen.get(base, 0)
        result.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return result


def make_targets(makefile: Path) -> set[str]:
    """The targets the Makefile's rules define (special targets like .PHONY and rules whose
    names need make variables are left out)."""
    targets = set()
    for line in makefile.read_text(encoding="utf-8").splitlines():
        if line.startswith(("\t", "#")) or "=" in line.split(":", 1)[0]:
            continue
        m = MAKE_RULE.match(line)
        if not m:
            continue
        for name in m.group(1).split():
            if not name.startswith(".") and "$" not in name and "%" not in name:
                targets.add(name)
    return targets


def make_calls(code: str) -> list[str]:
    """The targets each `make ...` in a piece of code names; VAR=value and -options skipped."""
    named = []
    code = SHELL_COMMENT.sub("", code)
    for m in MAKE_COMMAND.finditer(code):
        for word in m.group(1).split():
            if "=" in word or word.startswith("-") or word.startswith("<"):
                continue
            named.append(word)
    return named


def is_external(target: str) -> bool:
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target)) or target.startswith("//")


def check_link(
    doc: Path, line: int, target: str, root: Path, cache: dict[Path, set[str]]
) -> list[Problem]:
    """(a) and (b) for one link of `doc` (`root` resolved)."""
    if target.startswith("<") and target.endswith(">"):
        target = target[1:-1]
    if not target or is_external(target):
        return []
    path_part, _, anchor = target.partition("#")
    path_part = urllib.parse.unquote(path_part)
    if path_part.startswith("/"):
        return [Problem(doc, line, f"link {target!r} is absolute; a forge needs a relative path")]
    resolved = (doc.parent / path_part).resolve() if path_part else doc
    try:
        resolved.relative_to(root)
    except ValueError:
        return [Problem(doc, line, f"link {target!r} points outside the repository")]
    if not resolved.exists():
        return [Problem(doc, line, f"link {target!r}: {path_part} does not exist")]
    if not anchor:
        return []
    if resolved.is_dir():
        return [Problem(doc, line, f"link {target!r}: a directory has no #{anchor}")]
    if resolved.suffix.lower() != ".md":
        if LINE_ANCHOR.match(anchor):
            return []
        return [Problem(doc, line, f"link {target!r}: only line anchors (#L12) fit a non-Markdown file")]
    if resolved not in cache:
        cache[resolved] = anchors(resolved)
    anchor = urllib.parse.unquote(anchor)
    if anchor not in cache[resolved]:
        where = "this file" if resolved == doc else str(resolved.relative_to(root))
        return [Problem(doc, line, f"link {target!r}: no heading in {where} gives #{anchor}")]
    return []


def check_file(
    doc: Path, root: Path, targets: set[str], cache: dict[Path, set[str]]
) -> tuple[list[Problem], int, int]:
    """Every problem of one file, and how many links and make commands it holds."""
    problems: list[Problem] = []
    links = makes = 0
    lines = doc.read_text(encoding="utf-8").splitlines()
    for number, line, in_code in split_code(lines):
        code_parts = [line] if in_code else [m.group(2) for m in INLINE_CODE.finditer(line)]
        for part in code_parts:
            for name in make_calls(part):
                makes += 1
                if name not in targets:
                    message = f"`make {name}`: the Makefile has no target {name!r}"
                    problems.append(Problem(doc, number, message))
        if in_code:
            continue
        prose = INLINE_CODE.sub("", line)
        found = [m.group(1) for m in INLINE_LINK.finditer(prose)]
        ref = REFERENCE_DEF.match(prose)
        if ref:
            found.append(ref.group(1))
        for target in found:
            links += 1
            problems += check_link(doc, number, target, root, cache)
    return problems, links, makes


def run(root: Path) -> tuple[list[Problem], str]:
    root = root.resolve()
    makefile = root / "Makefile"
    if not makefile.is_file():
        return [Problem(root / "Makefile", 0, "no Makefile")], ""
    targets = make_targets(makefile)
    cache: dict[Path, set[str]] = {}
    problems: list[Problem] = []
    files = doc_files(root)
    links = makes = 0
    for doc in files:
        found, n_links, n_makes = check_file(doc, root, targets, cache)
        problems += found
        links += n_links
        makes += n_makes
    summary = f"docs: {len(files)} files, {links} links, {makes} make commands checked"
    return problems, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository (default: this one)")
    args = parser.parse_args(argv)
    problems, summary = run(args.root)
    for problem in problems:
        print(problem.render(args.root.resolve()))
    if problems:
        print(f"{summary}: {len(problems)} problem(s)")
        return 1
    print(f"{summary}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
