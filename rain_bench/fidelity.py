"""Fidelity of a search preset to the official search: ``rain bench fidelity [--quick] [--out DIR]``.

A scenario is a prompt and a penalised word that plain decoding tends to write, scored by a
deterministic evaluator (-1 when the answer so far contains the word, +1 otherwise). Over many
seeds, each preset decodes every scenario. The report gives, per scenario and preset:

- how often the answer avoids the word, with a 95% Wilson interval;
- how often the preset commits the same first token set as the official search with the same seed;
- searches per commit and seconds per token.

A preset is acceptable on a scenario when its avoidance rate lies inside the official search's
interval. The measurement functions return typed records; only ``main`` prints.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rain_core import RainConfig, RainDecoder

from .output import default_folder, write_atomic

SCHEMA_VERSION = 1
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Scenario:
    """A prompt and the words an answer should avoid."""

    name: str
    prompt: str
    words: tuple[str, ...]
    max_new_tokens: int

    def penalty(self) -> Callable[[str, str], float]:
        pattern = re.compile("|".join(re.escape(w) for w in self.words), re.IGNORECASE)
        return lambda prompt, response: -1.0 if pattern.search(response) else 1.0

    def avoided(self, text: str) -> bool:
        return self.penalty()("", text) > 0


# Chosen from a scan of ten prompts so that plain decoding of the embedded SmolLM2-135M-Instruct
# writes the word within 16 tokens for 3-4 of 10 seeds (the report's "plain" column measures it again).
SCENARIOS: tuple[Scenario, ...] = (
    Scenario("france-paris", "What is the capital of France?", ("paris",), 16),
    Scenario("bees-honey", "What do bees make?", ("honey",), 16),
    Scenario("sky-blue", "What colour is the sky on a clear day?", ("blue",), 16),
)


@dataclass
class PresetOutcome:
    """One preset on one scenario, over the seeds."""

    preset: str
    seeds: int
    avoided: int
    ci_low: float
    ci_high: float
    searches_per_commit: float
    seconds_per_token: float
    same_first_set: float | None  # against the official search; None for the official search itself
    first_sets: list[list[int]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.avoided / self.seeds if self.seeds else float("nan")


@dataclass
class ScenarioResult:
    scenario: Scenario
    plain_wrote_word: int
    seeds: int
    outcomes: dict[str, PresetOutcome]

    def acceptable(self, preset: str, reference: str = "official") -> bool:
        ref, out = self.outcomes[reference], self.outcomes[preset]
        return ref.ci_low <= out.rate <= ref.ci_high


@dataclass
class FidelityReport:
    model: str
    mode: str
    seeds: int
    presets: dict[str, dict[str, Any]]  # name -> the RainConfig fields that differ from the official ones
    results: list[ScenarioResult]
    seconds: float
    schema_version: int = SCHEMA_VERSION

    def acceptable(self, preset: str) -> bool:
        return all(r.acceptable(preset) for r in self.results)


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


PARALLEL_WIDTHS = (4, 8)


def default_presets(widths: Sequence[int] = PARALLEL_WIDTHS) -> dict[str, RainConfig]:
    """The official search (the reference), the fast preset, and the official search with
    ``parallel_searches`` at each of ``widths``."""
    presets = {"official": RainConfig(), "fast": RainConfig.fast()}
    presets.update({f"official B={w}": RainConfig(parallel_searches=w) for w in widths})
    return presets


def run_scenario(
    lm: Any,
    scenario: Scenario,
    seeds: Sequence[int],
    presets: Mapping[str, RainConfig],
    overrides: Mapping[str, Any],
    progress: Progress,
    encoder: Any = "default",
) -> ScenarioResult:
    """Every preset on ``scenario`` for each seed, and plain decoding with the same seeds."""
    dec = RainDecoder(lm, scenario.penalty(), encoder=encoder)
    plain = sum(
        not scenario.avoided(dec.vanilla(scenario.prompt, max_new_tokens=scenario.max_new_tokens, seed=s).text)
        for s in seeds
    )
    outcomes: dict[str, PresetOutcome] = {}
    for name, preset in presets.items():
        avoided, searches, commits, seconds, tokens = 0, 0, 0, 0.0, 0
        firsts: list[list[int]] = []
        for seed in seeds:
            progress(f"{scenario.name} / {name} / seed {seed}")
            cfg = preset.merged(max_new_tokens=scenario.max_new_tokens, seed=seed, **overrides)
            t0 = time.perf_counter()
            res = dec.generate(scenario.prompt, config=cfg)
            seconds += time.perf_counter() - t0
            avoided += scenario.avoided(res.text)
            searches += res.stats["searches"]
            commits += res.stats["commits"]
            tokens += len(res.token_ids)
            log = res.stats["commit_log"]
            firsts.append(list(log[0]["tokens"]) if log else [])
        low, high = wilson(avoided, len(seeds))
        outcomes[name] = PresetOutcome(
            name, len(seeds), avoided, low, high, searches / max(commits, 1), seconds / max(tokens, 1), None, firsts
        )
    reference = outcomes.get("official")
    if reference is not None:
        for name, out in outcomes.items():
            if name != "official":
                same = sum(a == b for a, b in zip(out.first_sets, reference.first_sets))
                out.same_first_set = same / max(len(seeds), 1)
    return ScenarioResult(scenario, plain, len(seeds), outcomes)


def run(
    lm: Any,
    *,
    scenarios: Sequence[Scenario] = SCENARIOS,
    seeds: int = 10,
    presets: Mapping[str, RainConfig] | None = None,
    overrides: Mapping[str, Any] | None = None,
    mode: str = "full",
    progress: Progress = lambda label: None,
    encoder: Any = "default",
) -> FidelityReport:
    """The fidelity report of ``presets`` (default: official and fast) on ``lm``. ``overrides`` apply
    to every preset (the quick mode's small budgets); ``encoder`` is the decoders' sentence encoder."""
    presets = dict(presets or default_presets())
    t0 = time.perf_counter()
    results = [
        run_scenario(lm, sc, range(seeds), presets, dict(overrides or {}), progress, encoder) for sc in scenarios
    ]
    described = {name: {k: v for k, (_, v) in cfg.deviations().items()} for name, cfg in presets.items()}
    return FidelityReport(str(lm.name), mode, seeds, described, results, time.perf_counter() - t0)


def render_table(report: FidelityReport) -> str:
    """The fidelity table: one row per scenario and preset."""
    lines = [
        "| scenario | plain decoding wrote the word | preset | avoided (95% interval) | same first set as official "
        "| searches/commit | s/token | within official's interval |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report.results:
        for name, out in r.outcomes.items():
            same = "" if out.same_first_set is None else f"{out.same_first_set:.0%}"
            ok = "(reference)" if name == "official" else ("yes" if r.acceptable(name) else "**no**")
            lines.append(
                f'| {r.scenario.name} ("{"/".join(r.scenario.words)}") | {r.plain_wrote_word}/{r.seeds} | {name} | '
                f"{out.avoided}/{out.seeds} ({out.ci_low:.2f}-{out.ci_high:.2f}) | {same} | "
                f"{out.searches_per_commit:.1f} | {out.seconds_per_token:.2f} | {ok} |"
            )
    return "\n".join(lines)


def render_markdown(report: FidelityReport) -> str:
    verdicts = [
        f"- **{name}**: {'acceptable' if report.acceptable(name) else 'NOT acceptable'} "
        f"(avoidance within the official interval on {sum(r.acceptable(name) for r in report.results)} of "
        f"{len(report.results)} scenarios)"
        for name in report.presets
        if name != "official"
    ]
    presets = "\n".join(f"- `{name}`: {fields or 'the official defaults'}" for name, fields in report.presets.items())
    return "\n".join(
        [
            f"# Fidelity of the search presets ({report.mode} mode)",
            "",
            f"Model: {report.model}. {report.seeds} seeds per scenario and preset. "
            "Evaluator: -1 when the answer so far contains the penalised word, +1 otherwise. "
            "A preset is acceptable on a scenario when its avoidance rate lies inside "
            "the official search's 95% Wilson interval.",
            "",
            presets,
            "",
            render_table(report),
            "",
            *verdicts,
            "",
            f"Wall time: {report.seconds:.0f} s.",
            "",
        ]
    )


def to_json(report: FidelityReport) -> str:
    data = asdict(report)
    for r, raw in zip(report.results, data["results"]):
        for name, out in r.outcomes.items():
            raw["outcomes"][name]["rate"] = out.rate
            raw["outcomes"][name]["acceptable"] = None if name == "official" else r.acceptable(name)
    return json.dumps(data, indent=2, default=str)


QUICK_OVERRIDES = {"max_searches": 3, "extra_searches": 1, "num_candidates": 3, "max_simulation_tokens": 8}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rain bench fidelity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one scenario, 2 seeds, small budgets (for CI)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per scenario and preset (default 10)")
    parser.add_argument(
        "--out", default=None, help="report folder (default: ~/.local/share/rain/results or $RAIN_RESULTS_DIR)"
    )
    args = parser.parse_args(argv)
    from tqdm.auto import tqdm

    from rain_core import load_default_model

    lm = load_default_model()
    scenarios = SCENARIOS[:1] if args.quick else SCENARIOS
    seeds = args.seeds or (2 if args.quick else 10)
    overrides = {**QUICK_OVERRIDES, "max_new_tokens": 6} if args.quick else {}
    if args.quick:
        scenarios = tuple(Scenario(s.name, s.prompt, s.words, 6) for s in scenarios)
    total = len(scenarios) * seeds * len(default_presets())
    with tqdm(total=total, desc="fidelity", unit="decode") as bar:
        report = run(
            lm,
            scenarios=scenarios,
            seeds=seeds,
            overrides=overrides,
            mode="quick" if args.quick else "full",
            progress=lambda label: bar.update(1),
        )
    out = Path(args.out) if args.out else default_folder()
    name = "fidelity-quick" if args.quick else "fidelity"
    text = render_markdown(report)
    write_atomic(out / f"{name}.md", text)
    write_atomic(out / f"{name}.json", to_json(report))
    sys.stdout.write(text)
    sys.stdout.write(f"report: {out / f'{name}.md'} and {out / f'{name}.json'}\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
