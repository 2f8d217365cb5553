"""Every Python block of README.md runs as written, in a fresh interpreter.

A README snippet that fails fails CI: each block is run alone (its own imports, its own
data), in an empty folder, so a user who copies one block gets what the README shows.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks() -> list[tuple[int, str]]:
    """(first line number, code) of every ```python block."""
    text = README.read_text()
    return [(text[: m.start()].count("\n") + 2, m.group(1)) for m in PYTHON_BLOCK.finditer(text)]


BLOCKS = python_blocks()


def test_the_readme_has_its_python_blocks():
    # A broken fence would silently drop blocks from the test below.
    assert len(BLOCKS) >= 8
    assert README.read_text().count("```python") == len(BLOCKS)


@pytest.mark.parametrize(("line", "code"), BLOCKS, ids=[f"line{line}" for line, _ in BLOCKS])
def test_block_runs_as_written(line, code, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)  # the torchrun block runs as a plain single process here
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, f"README.md block at line {line} failed:\n{done.stderr[-4000:]}"
