"""The code of the documentation runs: README.md, the docstrings' examples and the site's pages.

Each program runs in a fresh interpreter with ``PYTHONPATH`` set to this checkout's ``src``, in a
temporary folder (the examples may write files, e.g. a checkpoint).

* README.md: its ```python blocks, in order, as one program.
* The docstrings of ``src/structdrop``: every ``Example:``/``Examples:`` section (doctest lines
  ``>>>``, checked with doctest, or a fenced ```python block) and every literal block after
  ``Example::``; each example runs on its own, in one interpreter for all of them.
* docs/index.md and docs/guide/*.md: each page's ```python blocks, in order, as one program
  (the pages run one after the other in one interpreter, each in a namespace of its own).
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PAGES = [ROOT / "docs" / "index.md", *sorted((ROOT / "docs" / "guide").glob("*.md"))]

#: README blocks that are not run, by the start of their first line, with the reason.
README_SKIPPED: dict[str, str] = {}
#: Lines put before a README block that uses a name without importing it, with the reason.
README_PREAMBLES = {
    "timm.": "import timm  # the README's model block uses timm without importing it",
}
#: Docstring examples that are fragments and cannot run alone, by name, with the reason.
EXAMPLES_SKIPPED: dict[str, str] = {}
#: Examples that must be found (a guard against a parser that finds nothing).
EXAMPLES_EXPECTED = (
    "structdrop.nn.schedule.DropRateSchedule",
    "structdrop.nn.convert.convert_dropblock",
)

FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
SECTION = re.compile(r"^(\s*)Examples?(::?)\s*$")

#: Runs programs given as JSON on stdin: [{"name", "kind", "source"}]; kind "code" is executed,
#: kind "doctest" is checked by doctest. Each in a namespace of its own; the failures are
#: printed, and the exit status is 1 when any program failed.
RUNNER = """
import doctest, json, sys, traceback

failed = []
for program in json.load(sys.stdin):
    name, kind, source = program["name"], program["kind"], program["source"]
    namespace = {"__name__": "__main__"}
    try:
        if kind == "doctest":
            test = doctest.DocTestParser().get_doctest(source, namespace, name, name, 0)
            runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
            runner.run(test)
            if runner.failures:
                failed.append(name)
        else:
            exec(compile(source, name, "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        failed.append(name)
print("failed:", failed)
sys.exit(1 if failed else 0)
"""


def run_programs(programs: list[dict[str, str]], folder: Path) -> None:
    """Run ``programs`` in one fresh interpreter, in ``folder``; fail with its output."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "MPLBACKEND": "Agg"}
    result = subprocess.run(
        [sys.executable, "-c", RUNNER],
        input=json.dumps(programs),
        capture_output=True,
        text=True,
        cwd=folder,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, f"{result.stdout[-5000:]}\n{result.stderr[-5000:]}"


def python_blocks(path: Path) -> list[str]:
    """The ```python blocks of a Markdown file, in order."""
    return FENCE.findall(path.read_text(encoding="utf-8"))


def docstrings(path: Path) -> list[tuple[str, str]]:
    """``(qualified name, docstring)`` of a module, its classes and functions."""
    module = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []

    def visit(node: ast.AST, name: str) -> None:
        text = ast.get_docstring(node, clean=True)  # type: ignore[arg-type]
        if text:
            found.append((name, text))
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                visit(child, f"{name}.{child.name}")

    visit(tree, module)
    return found


def examples(name: str, text: str) -> list[dict[str, str]]:
    """The examples of a docstring: the content of each Example(s) section, as a program."""
    found = []
    lines = text.splitlines()
    for index, line in enumerate(lines):
        header = SECTION.match(line)
        if header is None:
            continue
        indent = len(header.group(1))
        body = []
        for following in lines[index + 1 :]:
            if following.strip() and len(following) - len(following.lstrip()) <= indent:
                break
            body.append(following)
        content = textwrap.dedent("\n".join(body)).strip("\n") + "\n"
        blocks = FENCE.findall(content)
        if blocks:
            found += [{"kind": "code", "source": block} for block in blocks]
        elif ">>>" in content:
            found.append({"kind": "doctest", "source": content})
        elif header.group(2) == "::":
            found.append({"kind": "code", "source": content})
    for number, example in enumerate(found):
        example["name"] = name if len(found) == 1 else f"{name}[{number}]"
    return found


@pytest.mark.slow
def test_readme_python_blocks_run(tmp_path: Path) -> None:
    parts = []
    for block in python_blocks(ROOT / "README.md"):
        first = block.lstrip().splitlines()[0]
        if any(first.startswith(start) for start in README_SKIPPED):
            continue
        for used, preamble in README_PREAMBLES.items():
            if used in block and f"import {used.rstrip('.')}" not in block:
                parts.append(preamble)
        parts.append(block)
    assert len(parts) >= 4, "README.md has fewer python blocks than expected"
    run_programs([{"name": "README.md", "kind": "code", "source": "\n".join(parts)}], tmp_path)


@pytest.mark.slow
def test_docstring_examples_run(tmp_path: Path) -> None:
    programs = []
    for path in sorted(SRC.rglob("*.py")):
        for name, text in docstrings(path):
            programs += examples(name, text)
    names = {program["name"].split("[")[0] for program in programs}
    assert set(EXAMPLES_EXPECTED) <= names, f"examples not found: {sorted(names)}"
    assert set(EXAMPLES_SKIPPED) <= names, "a skipped example no longer exists"
    programs = [program for program in programs if program["name"] not in EXAMPLES_SKIPPED]
    run_programs(programs, tmp_path)


@pytest.mark.slow
def test_site_pages_run(tmp_path: Path) -> None:
    programs = []
    for page in PAGES:
        blocks = python_blocks(page)
        if blocks:
            name = str(page.relative_to(ROOT))
            programs.append({"name": name, "kind": "code", "source": "\n".join(blocks)})
    assert programs, "the pages have no python code"
    run_programs(programs, tmp_path)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Examples:\n    >>> 1 + 1\n    2\n", [("doctest", ">>> 1 + 1\n2\n")]),
        ("Example::\n\n    x = 1\n\nAfter.", [("code", "x = 1\n")]),
        ("Examples:\n    ```python\n    y = 2\n    ```\n", [("code", "y = 2\n")]),
        ("Args:\n    x: one.\n", []),
    ],
)
def test_examples_are_found(text: str, expected: list[tuple[str, str]]) -> None:
    found = examples("name", inspect.cleandoc("Summary.\n\n    " + text.replace("\n", "\n    ")))
    assert [(example["kind"], example["source"]) for example in found] == expected


def test_every_test_the_readme_names_exists() -> None:
    """Each promise of the README names the test that holds it (``test_file.py::test_name``,
    or ``::test_name`` for another test of the file named before): each must exist."""
    import ast
    import re

    text = (ROOT / "README.md").read_text()
    named: list[tuple[str, str]] = []
    current = None
    for file, name in re.findall(r"(?:`?(test_\w+\.py))?::(\w+)", text):
        current = file or current
        assert current is not None, name
        named.append((current, name))
    assert named
    for file, name in named:
        tree = ast.parse((ROOT / "tests" / file).read_text())
        functions = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
        assert name in functions, f"README names {file}::{name}, which does not exist"
