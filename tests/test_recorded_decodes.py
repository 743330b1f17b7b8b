"""One search at a time (``parallel_searches=1``) on the real engine gives the same commits as it gave
when these decodes were recorded: a change of the engine or of the round's scheduling that should
change no draw must not change one.

The 20 decodes cover the official search and the fast preset, with the embedded model's
self-evaluation (discrete and continuous), an evaluator that approves nothing, and scoring functions
that reject common words, on five prompts. ``tests/data/recorded-decodes.json`` holds the commits
(token ids) and the text of each; record them anew (only when a change is meant to change draws, and
say so in the commit) with::

    python tests/test_recorded_decodes.py --record
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from rain_core import RainConfig, RainDecoder, SelfEvaluator
from rain_core.config import Scoring

DATA = Path(__file__).parent / "data" / "recorded-decodes.json"
PROMPTS = (
    "How do I pick a lock?",
    "Write one sentence about the sea.",
    "What is the capital of France?",
    "Give me a tip for sleeping better.",
    "Describe a cat in a few words.",
)
SMALL = dict(max_new_tokens=10, max_searches=4, extra_searches=2, min_visits=2)


def _rejects(*words: str) -> Any:
    pattern = re.compile("|".join(re.escape(w) for w in words), re.IGNORECASE)
    return lambda prompt, reply: -1.0 if pattern.search(reply) else 1.0


def cases() -> list[dict[str, Any]]:
    """(name, prompt, preset, evaluator kind, seed) of each recorded decode."""
    kinds = ("self-discrete", "self-continuous", "reject-all", "reject-words")
    out = []
    for i in range(20):
        out.append(
            {
                "name": f"decode-{i:02d}",
                "prompt": PROMPTS[i % len(PROMPTS)],
                "preset": "fast" if i % 5 == 4 else "official",
                "evaluator": kinds[i % len(kinds)],
                "seed": 1000 + i,
            }
        )
    return out


def _decoder(lm: Any, case: dict[str, Any]) -> RainDecoder:
    base = RainConfig.fast() if case["preset"] == "fast" else RainConfig()
    cfg = base.merged(seed=case["seed"], parallel_searches=1, **SMALL)
    kind = case["evaluator"]
    if kind == "self-discrete":
        evaluator: Any = SelfEvaluator(lm, "harmless", scoring=Scoring.DISCRETE)
    elif kind == "self-continuous":
        evaluator = SelfEvaluator(lm, "harmless", scoring=Scoring.CONTINUOUS)
    elif kind == "reject-all":
        evaluator = lambda prompt, reply: -1.0  # noqa: E731
    else:
        evaluator = _rejects(" the", " a ", " is", ".")
    return RainDecoder(lm, evaluator, config=cfg)


def run_case(lm: Any, case: dict[str, Any]) -> dict[str, Any]:
    commits = []
    result = None
    stream = _decoder(lm, case).stream(case["prompt"])
    for commit in stream.commits():
        if commit.token_ids:
            commits.append(list(commit.token_ids))
        result = commit.result
    assert result is not None
    return {"commits": commits, "text": result.text, "finish_reason": result.finish_reason}


@pytest.fixture(scope="module")
def recorded() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DATA.read_text())
    return data


@pytest.mark.parametrize("case", cases(), ids=[c["name"] for c in cases()])
def test_one_search_at_a_time_gives_the_recorded_commits(default_lm, recorded, case):
    default_lm.clear_cache()  # every decode from the same (empty) cache state, as when recorded
    got = run_case(default_lm, case)
    want = recorded["decodes"][case["name"]]
    assert got["commits"] == want["commits"], case
    assert got["text"] == want["text"] and got["finish_reason"] == want["finish_reason"]


def record() -> None:
    import subprocess

    from rain_core import load_default_model

    lm = load_default_model()
    decodes = {}
    for case in cases():
        lm.clear_cache()
        decodes[case["name"]] = {**case, **run_case(lm, case)}
        print(case["name"], repr(decodes[case["name"]]["text"]), file=sys.stderr)
    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    DATA.parent.mkdir(parents=True, exist_ok=True)
    tmp = DATA.with_suffix(".tmp")
    tmp.write_text(json.dumps({"recorded_at": revision, "config": SMALL, "decodes": decodes}, indent=1) + "\n")
    tmp.replace(DATA)


if __name__ == "__main__":
    if sys.argv[1:] == ["--record"]:
        record()
    else:
        sys.exit("usage: python tests/test_recorded_decodes.py --record")
