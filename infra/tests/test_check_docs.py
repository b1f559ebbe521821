"""infra/check_docs.py, the docs check of `make test`: it passes on this repository, and it
fails, naming file and line, on a broken link, a broken anchor and an unknown make target.

Run by `make test` (`.venv/bin/python -m pytest infra/tests/test_check_docs.py`).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT / "infra" / "check_docs.py"

sys.path.insert(0, str(CHECK.parent))
import check_docs  # noqa: E402

MAKEFILE = """\
SHELL := bash
STACK ?= $(shell echo x)
.PHONY: help test
help: ## List the targets
\t@echo help
test: $(TOOLS) ## Run the tests
\tinfra/test.sh
backfill: ## One pass
\t@echo backfill
$(VENV)/bin/python:
\tpython3 -m venv .venv
"""


def run_check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CHECK), "--root", str(root)],
        capture_output=True,
        text=True,
        check=False,
    )


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def good_tree(root: Path) -> Path:
    return write(
        root,
        {
            "Makefile": MAKEFILE,
            "src/lib.rs": "",
            "README.md": (
                "# Demo\n\nRun `make test`. "
                "See [the guide](docs/guide.md#running-a-pass) and [code](src/lib.rs#L1).\n"
            ),
            "docs/guide.md": (
                "# Guide\n\nFor testers.\n\n## Running a pass\n\n"
                "```sh\nmake backfill GROUP=orders MAX_BATCHES=5   # one pass\n```\n\n"
                "## Running a pass\n\n"
                "Back to [the first](#running-a-pass), on to [the second](#running-a-pass-1), "
                "[home](../README.md), [the web](https://example.com/x#y).\n"
            ),
            "tools/sim/README.md": "# sim\n\n[Up](../../README.md#demo), [src](../../src)\n",
        },
    )


def test_the_repository_passes():
    """The docs of this repository have no broken link, anchor or make target."""
    result = run_check(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith(": ok")


def test_a_clean_tree_passes(tmp_path):
    """Links to files, directories and headings (duplicates as -1), VAR=value after a target,
    and external links all pass."""
    result = run_check(good_tree(tmp_path))
    assert result.returncode == 0, result.stdout


def test_broken_link_anchor_and_make_target_fail_with_file_and_line(tmp_path):
    """Each kind of problem fails the check and is reported as file:line."""
    root = good_tree(tmp_path)
    write(
        root,
        {
            "docs/broken.md": (
                "# Broken\n\n"
                "A [missing file](missing.md).\n"
                "A [missing heading](guide.md#no-such-heading).\n"
                "Run `make deploy STACK=x` first.\n"
                "```sh\nmake tset\n```\n"
            ),
        },
    )
    result = run_check(root)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert any(l.startswith("docs/broken.md:3: ") and "missing.md" in l for l in lines), lines
    assert any(l.startswith("docs/broken.md:4: ") and "#no-such-heading" in l for l in lines), lines
    assert any(l.startswith("docs/broken.md:5: ") and "'deploy'" in l for l in lines), lines
    assert any(l.startswith("docs/broken.md:7: ") and "'tset'" in l for l in lines), lines
    assert sum(1 for l in lines if l.startswith("docs/broken.md:")) == 4


def test_links_inside_code_are_not_followed(tmp_path):
    """A link written in a code block or inline code is an example, not a link."""
    root = good_tree(tmp_path)
    write(root, {"docs/code.md": "# Code\n\n`[x](nowhere.md)`\n\n```md\n[y](nowhere.md#z)\n```\n"})
    assert run_check(root).returncode == 0


def test_a_link_out_of_the_repository_fails(tmp_path):
    """A forge cannot follow a link above the repository's root."""
    root = good_tree(tmp_path / "repo")
    (tmp_path / "outside.md").write_text("# Outside\n", encoding="utf-8")
    write(root, {"docs/out.md": "# Out\n\n[there](../../outside.md)\n"})
    result = run_check(root)
    assert result.returncode == 1
    assert "docs/out.md:3: " in result.stdout and "outside the repository" in result.stdout


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Which local AWS serves what, and why", "which-local-aws-serves-what-and-why"),
        ("A stack to poke at: `make local-up`", "a-stack-to-poke-at-make-local-up"),
        ("ministack's gaps", "ministacks-gaps"),
        ("Throttled DynamoDB writes (issue 19)", "throttled-dynamodb-writes-issue-19"),
        ("The `biz_key` field", "the-biz_key-field"),
        ("[Linked](x.md) heading", "linked-heading"),
    ],
)
def test_slugs_follow_github(heading, anchor):
    """Anchors are GitHub's: lower case, punctuation but - and _ dropped, spaces to -."""
    assert check_docs.slug(heading) == anchor


def test_make_targets_come_from_rules_not_variables(tmp_path):
    """Rules define targets; variable assignments, special targets and $(VAR) rules do not."""
    makefile = tmp_path / "Makefile"
    makefile.write_text(MAKEFILE, encoding="utf-8")
    assert check_docs.make_targets(makefile) == {"help", "test", "backfill"}


def test_make_calls_skip_variables_and_stop_at_comments_and_operators():
    """Only the targets a `make` command names are checked."""
    assert check_docs.make_calls("make backfill GROUP=a,b CONCURRENCY=4") == ["backfill"]
    assert check_docs.make_calls("make tools && cargo build") == ["tools"]
    assert check_docs.make_calls("make bench   # QUICK=1: make it quick") == ["bench"]
    assert check_docs.make_calls("cmake build") == []
