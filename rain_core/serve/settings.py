"""RAIN's settings per request, and the limits the server's owner puts on them.

A request chooses its settings in the ``rain`` field of its body (``extra_body={"rain": {...}}`` in
the ``openai`` client) or, for clients that cannot send one, through the model name:
``rain-fast/<model>``, ``rain-truthful/<model>``, ``rain-fast-truthful/<model>``. The settings are
merged into the server's own ``RainConfig`` and validated by ``RainConfig``'s rules, then checked
against the owner's ``Limits``. Nothing here loads a model or reads a file: a request's principle
is one of the built-in ones."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..config import ConfigError, RainConfig, Scoring
from ..principles import BUILTIN_PRINCIPLES
from .errors import APIError, field_path

__all__ = ["REQUEST_FIELDS", "Limits", "ModelChoice", "RequestSettings", "parse_model", "request_settings"]

PRESETS = ("official", "fast")

# RainConfig fields a request may set in its `rain` object (besides "preset" and "principle"). The
# sampling fields come from OpenAI's own fields (max_tokens, temperature, seed, stop); the rest of
# RainConfig (max_length, the official constants of the paper) is the owner's.
REQUEST_FIELDS = (
    "max_searches",
    "extra_searches",
    "min_visits",
    "value_threshold",
    "c_puct",
    "num_candidates",
    "parallel_searches",
    "max_seconds",
    "max_simulation_tokens",
    "similarity_update",
    "dynamic_node_addition",
    "lazy_expansion",
    "simulate_from_candidate",
    "scoring",
)
_OPENAI_NAMES = {"max_new_tokens": "max_tokens", "temperature": "temperature", "seed": "seed", "stop": "stop"}


class Limits(BaseModel):
    """How far one request may go. ``None`` for a budget means the server's own setting is the
    ceiling (a request may lower it, not raise it); ``max_seconds`` None: no deadline limit."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_tokens: int | None = Field(None, ge=1, description="Most new tokens per answer.")
    max_searches: int | None = Field(None, ge=1, description="Highest max_searches (T_max).")
    extra_searches: int | None = Field(None, ge=0, description="Highest extra_searches (T_extra).")
    num_candidates: int | None = Field(None, ge=1, description="Highest num_candidates (K).")
    parallel_searches: int | None = Field(None, ge=1, description="Highest parallel_searches.")
    max_simulation_tokens: int | None = Field(
        None, ge=1, description="Highest max_simulation_tokens, also given to requests that set none."
    )
    max_seconds: float | None = Field(
        None, gt=0, description="Longest deadline per answer, also given to requests that set none."
    )
    n: int = Field(4, ge=1, description="Most answers per request.")

    def resolved(self, base: RainConfig) -> Limits:
        """The limits with each budget's None replaced by the server's own value; an error when the
        server's own settings are above a limit given (the owner's mistake, found at start)."""
        fill = {
            "max_tokens": base.max_new_tokens,
            "max_searches": base.max_searches,
            "extra_searches": base.extra_searches,
            "num_candidates": base.num_candidates,
            "parallel_searches": base.parallel_searches,
        }
        values = self.model_dump()
        for key, value in fill.items():
            if values[key] is None:
                values[key] = value
        out = Limits(**values)
        for key, field in _LIMITED.items():
            mine, limit = getattr(base, field), getattr(out, key)
            if limit is not None and mine is not None and mine > limit:
                raise ValueError(f"the server's own {field}={mine} is above its limit {key}={limit}; raise the limit")
        return out


_LIMITED = {
    "max_tokens": "max_new_tokens",
    "max_searches": "max_searches",
    "extra_searches": "extra_searches",
    "num_candidates": "num_candidates",
    "parallel_searches": "parallel_searches",
    "max_simulation_tokens": "max_simulation_tokens",
    "max_seconds": "max_seconds",
}
_FILLED = ("max_simulation_tokens", "max_seconds")  # None there means "no limit": the limit fills it


@dataclass(frozen=True)
class ModelChoice:
    """What a model name asks for: the served model, and a preset and principle from its prefix."""

    name: str
    preset: str | None = None
    principle: str | None = None


def parse_model(requested: str, served: tuple[str, ...]) -> ModelChoice:
    """``<model>``, ``rain/<model>`` or ``rain-<word>[-<word>]/<model>`` where each word is a preset
    (official, fast) or a built-in principle; a 404 for a model this server does not serve."""
    preset = principle = None
    head, sep, rest = requested.partition("/")
    if sep and (head == "rain" or head.startswith("rain-")) and requested not in served:
        for word in head.split("-")[1:]:
            if word in PRESETS and preset is None:
                preset = word
            elif word in BUILTIN_PRINCIPLES and principle is None:
                principle = word
            else:
                raise APIError(
                    400,
                    f"model {requested!r}: {word!r} in the prefix is neither a preset ({', '.join(PRESETS)}) nor a "
                    f"principle ({', '.join(BUILTIN_PRINCIPLES)}), or it repeats one; e.g. rain-fast/{rest}",
                    param="model",
                    code="invalid_model_prefix",
                )
        requested = rest
    if requested not in served:
        raise APIError(
            404,
            f"the model {requested!r} is not served here; this server serves {', '.join(served)} "
            f"(GET /v1/models lists every name, with the rain-fast/... forms)",
            param="model",
            code="model_not_found",
        )
    return ModelChoice(requested, preset, principle)


@dataclass(frozen=True)
class RequestSettings:
    """One request's decode settings: the config every answer uses, and the evaluator's principle
    and scoring when the request chose them (None: the server's)."""

    config: RainConfig
    principle: str | None
    scoring: Scoring | None


def _rain_object(rain: dict[str, Any] | None) -> dict[str, Any]:
    rain = dict(rain or {})
    for key in rain:
        if key not in (*REQUEST_FIELDS, "preset", "principle"):
            raise APIError(
                400,
                f"rain.{key} is not a per-request setting; a request may set preset, principle and "
                f"{', '.join(REQUEST_FIELDS)}",
                param=f"rain.{key}",
                code="invalid_value",
            )
    return rain


def _choice(value: Any, allowed: tuple[str, ...], param: str, what: str) -> str:
    if value not in allowed:
        raise APIError(
            400,
            f"{param} must be one of {', '.join(allowed)} ({what}), got {value!r}",
            param=param,
            code="invalid_value",
        )
    return str(value)


def request_settings(
    base: RainConfig,
    limits: Limits,
    model: ModelChoice,
    rain: dict[str, Any] | None,
    sampling: dict[str, Any],
) -> RequestSettings:
    """The config of one request: the server's ``base`` with the preset, the ``rain`` settings and
    OpenAI's sampling fields (``max_new_tokens``, ``temperature``, ``seed``, ``stop``) applied,
    validated by ``RainConfig``, within ``limits`` (resolved). Errors are 400s naming the field."""
    fields = _rain_object(rain)
    preset = fields.pop("preset", None) or model.preset
    principle = fields.pop("principle", None) or model.principle
    if preset is not None:
        _choice(preset, PRESETS, "rain.preset", "official: the authors' search; fast: RainConfig.fast()")
    if principle is not None:
        _choice(principle, BUILTIN_PRINCIPLES, "rain.principle", "a request cannot read a principle file")
    if sampling.get("temperature") == 0:
        raise APIError(
            400,
            "temperature 0 (greedy decoding) is not possible with RAIN, which samples its candidates and "
            "simulations; send a temperature above 0 (1.0 is the paper's) or leave it out",
            param="temperature",
            code="invalid_value",
        )
    overrides: dict[str, Any] = {}
    if preset == "fast":
        overrides.update(RainConfig.FAST)
    elif preset == "official":
        overrides.update({key: RainConfig.model_fields[key].default for key in RainConfig.FAST})
    overrides.update(fields)
    overrides.update({k: v for k, v in sampling.items() if v is not None})
    try:
        config = base.merged(**overrides)
    except ConfigError as exc:
        err = exc.errors[0]
        name = str(err["loc"][0]) if err["loc"] else ""
        param = _OPENAI_NAMES.get(name) if name not in fields else None
        param = param or field_path(tuple(err["loc"]), "rain")
        got = err.get("input")
        shown = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
        raise APIError(400, f"{param}: {err['msg']}{shown}", param=param, code="invalid_value") from None
    except TypeError as exc:  # merged() names unknown fields; REQUEST_FIELDS are all RainConfig's
        raise APIError(400, str(exc), param="rain", code="invalid_value") from None
    config = _within(config, limits, set(fields))
    scoring = Scoring(config.scoring) if "scoring" in fields else None
    return RequestSettings(config, principle, scoring)


def _within(config: RainConfig, limits: Limits, asked: set[str]) -> RainConfig:
    """``config`` checked against ``limits``; where None means "no limit" (a deadline, a simulation
    cap), the limit is filled in."""
    fill: dict[str, Any] = {}
    for key, field in _LIMITED.items():
        limit, value = getattr(limits, key), getattr(config, field)
        if limit is None:
            continue
        if value is None and field in _FILLED:
            fill[field] = limit
        elif value is not None and value > limit:
            param = _OPENAI_NAMES.get(field, f"rain.{field}") if field not in asked else f"rain.{field}"
            shown = int(limit) if isinstance(limit, float) and math.isclose(limit, round(limit)) else limit
            raise APIError(
                400,
                f"{param}={value} is above this server's limit of {shown} (rain serve --limit-{key.replace('_', '-')})",
                param=param,
                code="above_limit",
            )
    return config.merged(**fill) if fill else config
