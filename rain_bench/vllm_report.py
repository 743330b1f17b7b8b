"""The report of ``rain bench vllm`` (``rain_bench.vllm_speed``): what one run measured, as dataclasses
that render themselves as Markdown and JSON."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

SCHEMA = "rain.bench.vllm_speed"
VERSION = 2
TARGET_SPEEDUP = 1.8
TARGET_PARALLEL = 3.0


@dataclass
class DecodeRun:
    """One timed batch of decodes: ``decodes`` of them, ``concurrency`` at a time."""

    label: str
    config: str
    evaluator: str
    decodes: int
    concurrency: int
    mode: str  # "sequential", "threads" or "asyncio"
    tokens: int
    seconds: float
    requests: int
    prompt_tokens: int
    searches: int
    cache_hit_rate: float | None

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")

    @property
    def seconds_per_token(self) -> float:
        return self.seconds / self.tokens if self.tokens else float("nan")


@dataclass
class Concurrency:
    """Tokens/s of ``n`` decodes at once against the same decodes one at a time: the best of
    ``repeats`` alternating rounds of each mode (other processes' load only slows a run down, so the
    fastest round is the least disturbed one); ``rounds`` keeps every run."""

    evaluator: str
    config: str
    n: int
    one_at_a_time: DecodeRun
    threads: DecodeRun
    asyncio: DecodeRun | None
    same_answers_threads: bool
    same_answers_asyncio: bool | None
    repeats: int = 1
    rounds: list[DecodeRun] = field(default_factory=list)

    @property
    def speedup_threads(self) -> float:
        return self.threads.tokens_per_s / self.one_at_a_time.tokens_per_s

    @property
    def speedup_asyncio(self) -> float | None:
        return None if self.asyncio is None else self.asyncio.tokens_per_s / self.one_at_a_time.tokens_per_s


@dataclass
class ParallelRun:
    """Decodes with self-evaluation at one ``parallel_searches`` width, one at a time."""

    config: str
    parallel_searches: int
    decodes: int
    tokens: int
    seconds: float
    searches: int
    rounds: int
    evaluations: int
    model_calls: int
    requests: int
    encoder_seconds: float
    texts: list[str] = field(default_factory=list)

    @property
    def seconds_per_decode(self) -> float:
        return self.seconds / self.decodes if self.decodes else float("nan")

    def per_decode(self, value: float) -> float:
        return value / self.decodes if self.decodes else float("nan")


@dataclass
class ParallelSearches:
    """Self-evaluation latency per decode at B=1 (``one``) and B=8 (``many``) on one server."""

    config: str
    one: ParallelRun
    many: ParallelRun

    @property
    def ratio(self) -> float:
        """Seconds per decode at B=1 over seconds per decode at B=8."""
        return self.one.seconds_per_decode / self.many.seconds_per_decode


@dataclass
class VLLMSpeedReport:
    """Everything one run measured (``to_markdown`` renders it)."""

    created: str
    quick: bool
    server: dict[str, Any]
    machine: dict[str, Any]
    seed_mode: str
    max_new_tokens: int
    plain: DecodeRun
    rain_official: DecodeRun
    rain_fast: DecodeRun
    concurrency: list[Concurrency]
    parallel: list[ParallelSearches]
    cache_hit_rate_overall: float | None
    load_average_after: list[float] | None
    seconds: float
    target_speedup: float = TARGET_SPEEDUP
    target_parallel: float = TARGET_PARALLEL
    schema: str = SCHEMA
    version: int = VERSION
    notes: list[str] = field(default_factory=list)

    @property
    def ratio_official(self) -> float:
        """Seconds per token of RAIN (official defaults) over plain decoding's."""
        return self.rain_official.seconds_per_token / self.plain.seconds_per_token

    @property
    def ratio_fast(self) -> float:
        return self.rain_fast.seconds_per_token / self.plain.seconds_per_token

    @property
    def target_met(self) -> bool:
        """Whether every concurrency measurement reached ``target_speedup`` (threads and asyncio)."""
        values = [c.speedup_threads for c in self.concurrency] + [
            c.speedup_asyncio for c in self.concurrency if c.speedup_asyncio is not None
        ]
        return bool(values) and all(v >= self.target_speedup for v in values)

    @property
    def parallel_target_met(self) -> bool | None:
        """Whether B=8 cut the self-evaluation latency per decode by ``target_parallel`` in every
        configuration measured (None: not measured)."""
        if not self.parallel:
            return None
        return all(p.ratio >= self.target_parallel for p in self.parallel)

    def to_json(self) -> dict[str, Any]:
        from rain_bench.output import jsonable

        data: dict[str, Any] = jsonable(self)
        data["ratio_official"] = jsonable(self.ratio_official)
        data["ratio_fast"] = jsonable(self.ratio_fast)
        data["target_met"] = self.target_met
        data["parallel_target_met"] = self.parallel_target_met
        for p, d in zip(self.parallel, data["parallel"]):
            d["ratio"] = jsonable(p.ratio)
            for width in ("one", "many"):
                d[width]["seconds_per_decode"] = jsonable(getattr(p, width).seconds_per_decode)
        for c, d in zip(self.concurrency, data["concurrency"]):
            d["speedup_threads"] = jsonable(c.speedup_threads)
            d["speedup_asyncio"] = jsonable(c.speedup_asyncio)
        for run_name in ("plain", "rain_official", "rain_fast"):
            data[run_name]["tokens_per_s"] = jsonable(getattr(self, run_name).tokens_per_s)
        return data

    def to_markdown(self, command: str = "python -m rain_bench.vllm_speed") -> str:
        from rain_bench.output import fmt_num, fmt_pct, fmt_x

        s, m = self.server, self.machine
        lines = [
            f"# RAIN on vLLM: speed ({'quick' if self.quick else 'full'} run)",
            "",
            f"`{command}` on {self.created}: vLLM {s.get('version', '?')} serving {s.get('model')} "
            f"({s.get('how', '')}); client on {m.get('cpu', '?')}, {m.get('cpus_usable', '?')} CPUs usable, "
            f"load average {_load(m.get('load_average_at_start'))} at the start and "
            f"{_load(self.load_average_after)} at the end (other processes share this machine). "
            f"Seeds: {self.seed_mode}. {self.max_new_tokens} new tokens per decode. Sentence encoder (similarity "
            f"update): {s.get('encoder', 'the client CPU')}. {self.seconds:.0f} s in all.",
            "",
            "| measurement | value |",
            "|---|---|",
            f"| plain decoding on the server | {fmt_num(self.plain.tokens_per_s, 1)} tokens/s |",
            f"| RAIN official defaults, best-case evaluator | {fmt_num(self.rain_official.tokens_per_s, 2)} tokens/s: "
            f"**{fmt_x(self.ratio_official, 1)}** the time per token of plain decoding |",
            f"| RAIN fast preset, best-case evaluator | {fmt_num(self.rain_fast.tokens_per_s, 2)} tokens/s: "
            f"**{fmt_x(self.ratio_fast, 1)}** the time per token of plain decoding |",
        ]
        for c in self.concurrency:
            lines.append(
                f"| {c.n} RAIN decodes at once vs one at a time, {c.evaluator}, {c.config} (threads) | "
                f"{fmt_num(c.threads.tokens_per_s, 2)} vs {fmt_num(c.one_at_a_time.tokens_per_s, 2)} tokens/s: "
                f"**{fmt_x(c.speedup_threads, 2)}** |"
            )
            if c.asyncio is not None:
                lines.append(
                    f"| {c.n} RAIN decodes at once vs one at a time, {c.evaluator}, {c.config} "
                    "(asyncio, one event loop) | "
                    f"{fmt_num(c.asyncio.tokens_per_s, 2)} vs {fmt_num(c.one_at_a_time.tokens_per_s, 2)} tokens/s: "
                    f"**{fmt_x(c.speedup_asyncio, 2)}** |"
                )
        lines += [
            f"| server prefix-cache hit rate, whole run | {fmt_pct(self.cache_hit_rate_overall)} of prompt tokens |",
            "",
            f"Target: {self.concurrency[0].n if self.concurrency else 8} concurrent decodes reach at least "
            f"{self.target_speedup:.1f}x the tokens/s of one: **{'met' if self.target_met else 'not met'}**.",
            "",
            "| run | config | evaluator | decodes | at once | tokens | seconds | tokens/s | requests | "
            "prompt tokens | searches | prefix-cache hits |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        runs = [self.plain, self.rain_official, self.rain_fast]
        for c in self.concurrency:
            runs += c.rounds or [r for r in (c.one_at_a_time, c.threads, c.asyncio) if r is not None]
        for r in runs:
            lines.append(
                f"| {r.label} | {r.config} | {r.evaluator} | {r.decodes} | {r.concurrency} | {r.tokens} | "
                f"{r.seconds:.1f} | {fmt_num(r.tokens_per_s, 2)} | {r.requests} | {r.prompt_tokens} | "
                f"{r.searches} | {fmt_pct(r.cache_hit_rate)} |"
            )
        for c in self.concurrency:
            same = [f"threads {'identical' if c.same_answers_threads else 'NOT identical'}"]
            if c.same_answers_asyncio is not None:
                same.append(f"asyncio {'identical' if c.same_answers_asyncio else 'NOT identical'}")
            lines.append("")
            lines.append(
                f"{c.evaluator}: the answers of the decodes at once were {', '.join(same)} to the ones "
                "decoded one at a time (same seeds)."
            )
        lines += self._parallel_markdown()
        lines += ["", *self.notes]
        return "\n".join(lines).rstrip() + "\n"

    def _parallel_markdown(self) -> list[str]:
        from rain_bench.output import fmt_num, fmt_x

        if not self.parallel:
            return []
        lines = [
            "",
            "## Parallel searches: self-evaluation latency per decode, B=1 vs B=8",
            "",
            "| config | B | seconds per decode | searches | rounds | evaluations | model calls | server requests "
            "| sentence-encoder seconds | B=1 over B=8 |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for p in self.parallel:
            for run in (p.one, p.many):
                ratio = f"**{fmt_x(p.ratio, 2)}**" if run is p.many else ""
                lines.append(
                    f"| {p.config} | {run.parallel_searches} | {fmt_num(run.seconds_per_decode, 1)} | "
                    f"{fmt_num(run.per_decode(run.searches), 1)} | {fmt_num(run.per_decode(run.rounds), 1)} | "
                    f"{fmt_num(run.per_decode(run.evaluations), 1)} | {fmt_num(run.per_decode(run.model_calls), 1)} | "
                    f"{fmt_num(run.per_decode(run.requests), 1)} | {fmt_num(run.per_decode(run.encoder_seconds), 1)} "
                    f"| {ratio} |"
                )
        met = self.parallel_target_met
        ratios = ", ".join(f"{p.config.split('(')[0]} {fmt_x(p.ratio, 2)}" for p in self.parallel)
        lines += [
            "",
            f"Columns other than the ratio are per decode. Target: self-evaluation latency per decode at least "
            f"{self.target_parallel:.0f}x lower at B=8 than at B=1: **{'met' if met else 'NOT met'}** ({ratios}).",
        ]
        return lines


def _load(values: Sequence[float] | None) -> str:
    return "n/a" if not values else " / ".join(f"{v:.1f}" for v in values)
