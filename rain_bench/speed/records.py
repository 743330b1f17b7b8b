"""Typed records passed from the speed benchmark's sections to its report.

``Tally`` accumulates decodes of one kind while a section runs; every other record is frozen and
holds one section's result. The JSON report is these records as plain data (``output.jsonable``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..harness import Timed, ratio

SCHEMA_VERSION = 3  # 2: sections as named records (overhead, engine, ...); 3: section 7, parallel searches


@dataclass(frozen=True)
class DecodeRow:
    """One measured decode."""

    prompt: str
    seconds: float
    new_tokens: int
    finish_reason: str
    forward_calls: int
    forward_tokens: int
    searches: int | None = None
    commits: int | None = None
    early_stops: int | None = None
    evaluations: int | None = None
    rounds: int | None = None
    model_calls: int | None = None


@dataclass(frozen=True)
class DecodeSummary:
    """Sums over several decodes of one kind, and the per-token and per-search figures."""

    runs: int
    seconds: float
    new_tokens: int
    searches: int
    commits: int
    early_stops: int
    evaluations: int
    rounds: int
    model_calls: int
    forward_calls: int
    forward_tokens: int
    peak_memory: int
    seconds_per_token: float
    seconds_per_search: float | None
    forward_tokens_per_token: float
    forward_calls_per_token: float
    per_prompt: tuple[DecodeRow, ...]


@dataclass
class Tally:
    """Accumulates decodes of one kind while a section runs."""

    rows: list[DecodeRow] = field(default_factory=list)
    peak_memory: int = 0

    def add(self, prompt: str, measured: Timed) -> None:
        result = measured.value
        stats: Mapping[str, Any] = result.stats
        keys = ("searches", "commits", "early_stops", "evaluations", "rounds", "model_calls")
        counts = {key: int(stats[key]) for key in keys if key in stats}
        self.rows.append(
            DecodeRow(
                prompt=prompt,
                seconds=measured.seconds,
                new_tokens=len(result.token_ids),
                finish_reason=result.finish_reason,
                forward_calls=int(stats.get("forward_calls", 0)),
                forward_tokens=int(stats.get("forward_tokens", 0)),
                **counts,
            )
        )
        self.peak_memory = max(self.peak_memory, measured.peak_memory)

    def _sum(self, name: str) -> int:
        return sum(getattr(r, name) or 0 for r in self.rows)

    def summary(self) -> DecodeSummary:
        seconds = sum(r.seconds for r in self.rows)
        new_tokens, searches = self._sum("new_tokens"), self._sum("searches")
        forward_calls, forward_tokens = self._sum("forward_calls"), self._sum("forward_tokens")
        return DecodeSummary(
            runs=len(self.rows),
            seconds=seconds,
            new_tokens=new_tokens,
            searches=searches,
            commits=self._sum("commits"),
            early_stops=self._sum("early_stops"),
            evaluations=self._sum("evaluations"),
            rounds=self._sum("rounds"),
            model_calls=self._sum("model_calls"),
            forward_calls=forward_calls,
            forward_tokens=forward_tokens,
            peak_memory=self.peak_memory,
            seconds_per_token=ratio(seconds, new_tokens),
            seconds_per_search=ratio(seconds, searches) if searches else None,
            forward_tokens_per_token=ratio(forward_tokens, new_tokens),
            forward_calls_per_token=ratio(forward_calls, new_tokens),
            per_prompt=tuple(self.rows),
        )


@dataclass(frozen=True)
class RainVariant:
    """RAIN with one evaluator in the overhead section, against vanilla on the same prompts."""

    label: str
    decodes: DecodeSummary  # every repetition's decodes together
    wall_ratio: float  # the median over the repetitions
    wall_ratio_range: tuple[float, float]
    per_token_ratio: float  # the median over the repetitions
    per_token_ratio_range: tuple[float, float]
    searches_per_commit: float


@dataclass(frozen=True)
class Overhead:
    """Section 1: RAIN / vanilla wall time at the plan's budget, per evaluator."""

    max_new_tokens: int
    config: Mapping[str, Any] | str
    vanilla: DecodeSummary
    rain: Mapping[str, RainVariant]


@dataclass(frozen=True)
class Memory:
    """Section 4: peak memory of RAIN over vanilla."""

    measure: str
    vanilla_peak_bytes: int
    rain_peak_bytes: int
    ratio: float
    rain_peak_by_evaluator: Mapping[str, int]
    kv_cache_bytes_after: int


@dataclass(frozen=True)
class EngineComparison:
    """Section 2: the same fixed-budget decodes with the engine's cache reuse and batching on and off."""

    searches_per_commit: int
    max_new_tokens: int
    config: Mapping[str, Any]
    on: DecodeSummary
    off: DecodeSummary
    gain: float
    same_decisions: bool
    identical_prompts: int
    prompts: int
    token_ids: Mapping[str, list[list[int]]]


@dataclass(frozen=True)
class ForwardWork:
    """Section 3: model forward tokens (and calls) per committed token, engine on and off."""

    on_forward_tokens_per_token: float
    on_forward_calls_per_token: float
    off_forward_tokens_per_token: float
    off_forward_calls_per_token: float
    reduction: float


@dataclass(frozen=True)
class ScalingRow:
    max_new_tokens: int
    rain_seconds_per_token: float
    vanilla_seconds_per_token: float
    rain_new_tokens: int
    vanilla_new_tokens: int
    rain_seconds: float
    vanilla_seconds: float
    rain_seconds_per_search: float | None
    rain_forward_tokens_per_token: float


@dataclass(frozen=True)
class Scaling:
    """Section 5: seconds per generated token as ``max_new_tokens`` grows."""

    searches_per_commit: int
    config: Mapping[str, Any]
    rows: tuple[ScalingRow, ...]
    growth: float  # per-token cost at the largest length over the smallest: median over the repetitions
    growth_range: tuple[float, float]
    repeats: int
    vanilla_growth: float
    reached_cap: bool
    linear: bool


@dataclass(frozen=True)
class ParallelRow:
    """Section 7: one preset and evaluator at one ``parallel_searches`` width."""

    preset: str
    evaluator: str
    width: int
    decodes: DecodeSummary  # every repetition's decodes together
    per_token_ratio: float  # RAIN over plain decoding, seconds per token: median over the repetitions
    per_token_ratio_range: tuple[float, float]
    versus_one: float  # seconds per token over the same preset and evaluator at width 1: median
    versus_one_range: tuple[float, float]
    searches_per_commit: float
    searches_per_round: float
    model_calls_per_commit: float  # requests to the model, a batch counting once
    forward_calls_per_commit: float
    forward_calls_per_round: float
    round_over_one_search: float  # forward passes of a round over those of one search at width 1


@dataclass(frozen=True)
class ParallelMemory:
    """Section 7: peak memory of RAIN at one width over plain decoding, in a fresh process."""

    width: int
    measure: str
    vanilla_peak_bytes: int
    rain_peak_bytes: int
    ratio: float
    evaluators: tuple[str, ...]


@dataclass(frozen=True)
class Parallel:
    """Section 7: searches side by side (``parallel_searches``) against one at a time."""

    max_new_tokens: int
    config: Mapping[str, Any] | str
    widths: tuple[int, ...]
    repeats: int
    vanilla: DecodeSummary
    rows: tuple[ParallelRow, ...]
    memory: ParallelMemory | None

    def row(self, preset: str, evaluator: str, width: int) -> ParallelRow:
        return next(r for r in self.rows if (r.preset, r.evaluator, r.width) == (preset, evaluator, width))


@dataclass(frozen=True)
class Target:
    """One target of issue 5: what it asks, the measured figure, whether it is met."""

    target: str
    value: float
    met: bool


@dataclass(frozen=True)
class DeviceResult:
    """Every section on one device."""

    model: str
    dtype: str
    seconds: float
    overhead: Overhead
    engine: EngineComparison
    forward_work: ForwardWork
    memory: Memory
    scaling: Scaling
    targets: Mapping[str, Target]
    fidelity: Any = None  # rain_bench.fidelity.FidelityReport of the presets on this model
    parallel: Parallel | None = None


@dataclass(frozen=True)
class DeviceError:
    """A device whose sections failed (the other device's figures are kept)."""

    error: str


Device = DeviceResult | DeviceError


@dataclass(frozen=True)
class SpeedReport:
    date: str
    machine: Mapping[str, Any]
    config: Mapping[str, Any]
    devices: Mapping[str, Device]
    seconds: float
    schema: int = SCHEMA_VERSION
    benchmark: str = "speed"
