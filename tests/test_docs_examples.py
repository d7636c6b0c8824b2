"""Every Python example in the docs and the README runs, and the site builds.

Each fenced ```python block is written to a file and run by a fresh
interpreter with an empty temporary folder as its working directory, so a
block cannot lean on another block's state or on the repository's files.

Markers, on a comment line inside a block:

* ``# docs: skip <reason>`` - the block needs something that cannot exist
  here (a SLURM cluster, a GitHub runner); the page must say so too.
* ``# docs: needs mrtrix3`` - the block runs MRtrix3 through NiWrap; it is
  skipped locally when those are missing, and fails in CI.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import require
from styxcache.demo.mrtrix import missing_requirements

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+|~~~+)\s*(?P<lang>[\w+-]*)")
_SKIP = re.compile(r"#\s*docs:\s*skip\b(?P<reason>.*)")
_NEEDS_MRTRIX = re.compile(r"#\s*docs:\s*needs mrtrix3\b")


@dataclasses.dataclass(frozen=True)
class Block:
    path: Path
    line: int
    lang: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def parse_blocks(path: Path) -> list[Block]:
    """Return the fenced code blocks of a Markdown file, dedented."""
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        match = _FENCE.match(lines[index])
        if match is None:
            index += 1
            continue
        indent, fence, lang = match["indent"], match["fence"], match["lang"].lower()
        start = index + 1
        body: list[str] = []
        index += 1
        while index < len(lines) and not lines[index].strip().startswith(fence):
            line = lines[index]
            body.append(line[len(indent) :] if line.startswith(indent) else line)
            index += 1
        if index >= len(lines):
            raise AssertionError(f"{path}:{start}: unclosed code fence")
        blocks.append(Block(path, start, lang, "\n".join(body) + "\n"))
        index += 1
    return blocks


def markdown_files() -> list[Path]:
    files = sorted(DOCS.rglob("*.md"))
    readme = ROOT / "README.md"
    return [*files, readme] if readme.exists() else files


def blocks_of(*langs: str) -> list[Block]:
    return [
        block
        for path in markdown_files()
        for block in parse_blocks(path)
        if block.lang in langs
    ]


ALL_PYTHON_BLOCKS = blocks_of("python", "py", "pycon")
# Blocks that need what no test machine has (a SLURM cluster, a lab's Unix
# group) are not test cases at all, so CI, which skips nothing, has none to
# skip: they are only compiled, by the test below.
OPTED_OUT = [b for b in ALL_PYTHON_BLOCKS if _SKIP.search(b.code)]
PYTHON_BLOCKS = [b for b in ALL_PYTHON_BLOCKS if not _SKIP.search(b.code)]
YAML_BLOCKS = blocks_of("yaml", "yml")


def test_parser_reads_indented_blocks_and_languages(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "Text\n\n```python\nx = 1\n```\n\n!!! note\n\n    ```python\n"
        "    if True:\n        y = 2\n    ```\n\n```bash\nls\n```\n",
        encoding="utf-8",
    )
    blocks = parse_blocks(page)
    assert [(b.lang, b.line) for b in blocks] == [
        ("python", 3),
        ("python", 9),
        ("bash", 14),
    ]
    assert blocks[1].code == "if True:\n    y = 2\n"


def test_parser_rejects_an_unclosed_fence(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("```python\nx = 1\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="unclosed code fence"):
        parse_blocks(page)


def test_the_docs_have_python_examples() -> None:
    pages = {block.path for block in PYTHON_BLOCKS}
    assert DOCS / "getting-started.md" in pages
    assert len(PYTHON_BLOCKS) >= 10


def test_opted_out_examples_say_why_and_compile() -> None:
    for block in OPTED_OUT:
        found = _SKIP.search(block.code)
        assert found is not None
        reason = found["reason"].strip().lstrip(":-").strip()
        assert reason, f"{block.id}: '# docs: skip' must say why"
        compile(block.code, block.id, "exec")  # a typo still fails the suite


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda b: b.id)
def test_python_example_runs(block: Block, tmp_path: Path) -> None:
    if _NEEDS_MRTRIX.search(block.code):
        missing = missing_requirements()
        require(not missing, "MRtrix3 example needs: " + "; ".join(missing))
    assert block.lang != "pycon", f"{block.id}: write examples as python, not pycon"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    script = tmp_path / "example.py"
    script.write_text(block.code, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, (
        f"{block.id} failed with exit code {result.returncode}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=lambda b: b.id)
def test_yaml_example_parses(block: Block) -> None:
    documents = list(yaml.safe_load_all(block.code))
    assert documents, f"{block.id}: empty YAML block"


def test_site_builds_without_warnings(tmp_path: Path) -> None:
    require(
        all(
            importlib.util.find_spec(name) is not None
            for name in ("mkdocs", "material", "mkdocstrings_handlers")
        ),
        "mkdocs, mkdocs-material and mkdocstrings[python] (the docs extra)",
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(ROOT / "mkdocs.yml"),
            "--site-dir",
            str(tmp_path / "site"),
        ],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "site" / "reference" / "api" / "index.html").is_file()
