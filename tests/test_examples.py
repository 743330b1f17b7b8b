"""Every Python example in the README and in docs/ runs when pasted alone: each block is run as
written, in a fresh interpreter, with nothing defined before it (the embedded model, offline).

A block that cannot run here (it needs a GPU, the weights of a large model or a server) is marked
by the line ``<!-- no-run: REASON -->`` right above it; the reason is shown as the skip reason, and a
marker without one fails. Blocks whose language is not ``python`` (shell, text) are not run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
NO_RUN = re.compile(r"<!--\s*no-run(?::\s*(.*?))?\s*-->\s*$")


def _blocks() -> list[tuple[str, str, str | None]]:
    """(id, code, reason it cannot run here or None) of every Python block."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
            marker = NO_RUN.search(before)
            reason = None if marker is None else (marker.group(1) or "")
            found.append((f"{page.relative_to(ROOT)}:{line}", match.group(1), reason))
    return found


BLOCKS = _blocks()


def test_every_block_that_cannot_run_here_says_why():
    missing = [name for name, _, reason in BLOCKS if reason == ""]
    assert not missing, f"<!-- no-run --> without a reason (write <!-- no-run: why -->): {missing}"


@pytest.mark.model
@pytest.mark.parametrize("name,code,reason", BLOCKS, ids=[b[0] for b in BLOCKS])
def test_the_example_runs_when_pasted_alone(name, code, reason, tmp_path):
    if reason is not None:
        pytest.skip(f"{name}: {reason}")
    env = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    seconds = time.monotonic() - t0
    assert out.returncode == 0, f"{name} failed after {seconds:.0f} s:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
