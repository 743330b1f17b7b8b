"""One search at a time, before and after a change: the same decodes timed on this checkout and on an
earlier revision of it, in one run.

    python -m rain_bench.speed.before_after --before REV [--repeats 3] [--out DIR] [--quick]

The decodes are the speed benchmark's worst case of the official search at ``parallel_searches=1``
(an evaluator that accepts nothing, so every commit spends its whole budget) on the first two
prompts. Each side runs in a fresh process of its own, through the public API only
(``RainDecoder``, ``RainConfig``, ``load_default_model``), so any revision can be measured; the
processes alternate (after, before, before, after, ...), every decode starts from an emptied cache,
and the figure is the median over the repetitions of before's time per token over after's, with its
range. The earlier revision is checked out into a temporary git worktree, removed afterwards.
Writes ``one-search-<device>.md`` and ``.json`` into ``--out`` (atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..harness import median_range, now_iso, ratio
from ..output import default_folder, fmt_x, write_report
from .plan import PROMPTS, TARGET_ONE_SEARCH_GAIN

# Run inside each side's own process; the public API only, so that any revision can run it.
JOB = r"""
import json, sys, time
from rain_core import RainConfig, RainDecoder, load_default_model
job = json.loads(sys.argv[1])
lm = load_default_model()
config = RainConfig(**job["config"])
dec = RainDecoder(lm, lambda prompt, reply: -1.0, config=config)
dec.generate("Hello!", max_new_tokens=1, max_searches=1, extra_searches=0)
for prompt in job["prompts"]:
    lm.clear_cache()
    t0 = time.perf_counter()
    result = dec.generate(prompt)
    seconds = time.perf_counter() - t0
    stats = result.stats
    print(json.dumps({"prompt": prompt, "seconds": seconds, "tokens": len(result.token_ids),
                      "token_ids": list(result.token_ids), "searches": stats.get("searches"),
                      "forward_calls": stats.get("forward_calls"), "model_calls": stats.get("model_calls")}))
"""


def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout.strip()


def _side(root: Path, job: dict[str, Any]) -> list[dict[str, Any]]:
    """One process of one side: every prompt once."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run(
        [sys.executable, "-c", JOB, json.dumps(job)], cwd=root, env=env, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"the decodes at {root} failed: {out.stderr.strip()[-2000:]}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def measure(before: str, repeats: int, quick: bool = False, progress: Any = None) -> dict[str, Any]:
    here = Path(__file__).resolve().parents[2]
    head = _git(here, "rev-parse", "--short", "HEAD")
    dirty = bool(_git(here, "status", "--porcelain", "--untracked-files=no"))
    base = _git(here, "rev-parse", "--short", before)
    config = {"max_new_tokens": 8 if quick else 32, "seed": 7, "parallel_searches": 1}
    if quick:
        config.update(max_searches=3, extra_searches=1, num_candidates=4)
    job = {"config": config, "prompts": [p.text for p in PROMPTS[:2]]}
    runs: dict[str, list[list[dict[str, Any]]]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="rain-before-") as tmp:
        tree = Path(tmp) / "checkout"
        _git(here, "worktree", "add", "--detach", str(tree), base)
        try:
            roots = {"before": tree, "after": here}
            for rep in range(repeats):
                order = ("after", "before") if rep % 2 == 0 else ("before", "after")
                for side in order:
                    if progress is not None:
                        progress(f"{side} (repetition {rep + 1}/{repeats})")
                    runs[side].append(_side(roots[side], job))
        finally:
            _git(here, "worktree", "remove", "--force", str(tree))

    def per_token(rows: list[dict[str, Any]]) -> float:
        return ratio(sum(r["seconds"] for r in rows), sum(r["tokens"] for r in rows))

    gains = [ratio(per_token(b), per_token(a)) for b, a in zip(runs["before"], runs["after"])]
    median, low, high = median_range(gains)
    same = all(
        [r["token_ids"] for r in b] == [r["token_ids"] for r in a] for b, a in zip(runs["before"], runs["after"])
    )
    return {
        "schema": "rain.bench.one_search",
        "version": 1,
        "date": now_iso(),
        "mode": "quick" if quick else "full",
        "after": head + ("+changes" if dirty else ""),
        "before": base,
        "config": config,
        "prompts": job["prompts"],
        "repeats": repeats,
        "gain": median,
        "gain_range": [low, high],
        "target": TARGET_ONE_SEARCH_GAIN,
        "met": bool(median >= TARGET_ONE_SEARCH_GAIN),
        "same_tokens": same,
        "runs": runs,
    }


def render(report: dict[str, Any]) -> str:
    low, high = report["gain_range"]
    lines = [
        "# One search at a time: before and after",
        "",
        f"{report['date']}; after: {report['after']}, before: {report['before']}; {report['mode']} mode; "
        f"`python -m rain_bench.speed.before_after --before {report['before']}`.",
        "",
        f"The worst case of the official search (an evaluator that accepts nothing) at parallel_searches=1, "
        f"{report['config']['max_new_tokens']} new tokens, on {len(report['prompts'])} prompts; each side in a "
        f"fresh process, the sides alternating, every decode from an emptied cache; {report['repeats']} repetitions.",
        "",
        "| repetition | before: s/token | after: s/token | before / after |",
        "|---|---|---|---|",
    ]
    for i, (b, a) in enumerate(zip(report["runs"]["before"], report["runs"]["after"]), 1):
        pb = ratio(sum(r["seconds"] for r in b), sum(r["tokens"] for r in b))
        pa = ratio(sum(r["seconds"] for r in a), sum(r["tokens"] for r in a))
        lines.append(f"| {i} | {pb:.3f} | {pa:.3f} | {fmt_x(ratio(pb, pa))} |")
    verdict = "met" if report["met"] else "NOT met"
    lines += [
        "",
        f"**Time per token before / after: {fmt_x(report['gain'])}** (median; range {fmt_x(low)}-{fmt_x(high)}); "
        f"target at least {report['target']:g}x: {verdict}. Same committed tokens on both sides: "
        f"{'yes' if report['same_tokens'] else 'no'}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rain_bench.speed.before_after", description=__doc__.split("\n")[0])
    parser.add_argument("--before", required=True, help="the earlier git revision to measure against")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions (each side once per repetition)")
    parser.add_argument(
        "--out", default=None, help="folder of the report (default: ~/.local/share/rain/results or $RAIN_RESULTS_DIR)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny budgets, to check that it runs")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    report = measure(args.before, args.repeats, args.quick, lambda label: sys.stderr.write(f"{label}\n"))
    name = "one-search-quick" if args.quick else "one-search-cpu"
    md, js = write_report(Path(args.out) if args.out else default_folder(), name, render(report), report)
    sys.stdout.write(render(report) + f"\nreport: {md} and {js}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
