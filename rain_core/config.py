"""RainConfig: every knob of RAIN in one frozen, validated pydantic model.

``RainConfig()`` is the authors' algorithm: every default is the official code's value or behaviour
(``docs/algorithm.md`` lists each point, official next to rain). Where rain does something the
official code does not (a speed trick, a length cap), the field says so and its default keeps the
official behaviour; ``RainConfig.fast()`` collects the speed deviations, each one a field that can
be switched back on its own.
"""

from __future__ import annotations

import enum
import math
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class Scoring(str, enum.Enum):
    """How a self/judge evaluation turns option probabilities into a value in [-1, 1]."""

    DISCRETE = "discrete"
    """The paper's score: each option order votes 1 if the desirable letter is more probable, else 0;
    ``v = 2 * mean - 1`` so ``v`` is in {-1, 0, 1}."""
    CONTINUOUS = "continuous"
    """The probability margin ``p(good) - p(bad)`` (renormalised over the two letters), averaged over
    both option orders: in [-1, 1], and informative even when a small model always picks one letter."""


class ConfigError(ValueError):
    """Options a model of settings (``RainConfig``) does not accept, as one line that names each field,
    the value given and what the field allows: ``RainConfig: max_new_tokens must be an integer >= 1,
    got 0``. A ``ValueError``; pydantic's details stay available: ``errors`` (``ValidationError.errors()``:
    location, type, message and input of each problem) and ``validation_error`` (the original)."""

    def __init__(
        self, message: str, errors: list[dict[str, Any]] | None = None, validation_error: ValidationError | None = None
    ) -> None:
        super().__init__(message)
        self.errors: list[dict[str, Any]] = list(errors or [])
        self.validation_error = validation_error

    @classmethod
    def from_validation(cls, exc: ValidationError, model: type[BaseModel]) -> ConfigError:
        """``exc`` (raised validating ``model``) as one line."""
        errors = [dict(e) for e in exc.errors()]
        problems = list(dict.fromkeys(_problem(model, e) for e in errors))
        return cls(f"{model.__name__}: {'; '.join(problems)}", errors, exc)


def allowed(model: type[BaseModel], name: str) -> str:
    """What the field ``name`` of ``model`` accepts, in words ("an integer in [1, 256]", "a number > 0")."""
    info = model.model_fields[name]
    annotation = str(info.annotation)
    nullable = "None" in annotation or "Optional" in annotation
    kinds = {"bool": "True or False", "int": "an integer", "float": "a number", "str": "a string"}
    base = annotation.replace(" | None", "").removeprefix("<class '").removesuffix("'>")
    kind = kinds.get(
        base, "a list of strings" if "tuple[str" in base else "a list of integers" if "tuple[int" in base else ""
    )
    if info.annotation is Scoring or "Scoring" in base:
        kind = " or ".join(repr(s.value) for s in Scoring)
    low = high = None
    for item in info.metadata:
        for attr, sign in (("ge", "["), ("gt", "(")):
            if getattr(item, attr, None) is not None:
                low = (sign, getattr(item, attr))
        for attr, sign in (("le", "]"), ("lt", ")")):
            if getattr(item, attr, None) is not None:
                high = (sign, getattr(item, attr))
    if low and high:
        bound = f" in {low[0]}{low[1]:g}, {high[1]:g}{high[0]}"
    elif low:
        bound = f" {'>=' if low[0] == '[' else '>'} {low[1]:g}"
    elif high:
        bound = f" {'<=' if high[0] == ']' else '<'} {high[1]:g}"
    else:
        bound = ""
    text = (kind or "a valid value") + bound
    return f"{text} or None" if nullable else text


def _problem(model: type[BaseModel], error: dict[str, Any]) -> str:
    """One problem of a pydantic error as words: ``field must be ..., got value``."""
    loc = error.get("loc") or ()
    field = str(loc[0]) if loc else ""
    ctx = error.get("ctx") or {}
    if isinstance(ctx.get("error"), Exception):  # a validator's own message says it all
        return str(ctx["error"])
    if error.get("type") == "extra_forbidden":
        return f"unknown option {field}={error.get('input')!r}; the options are {model.__name__}'s fields"
    if field in model.model_fields:
        return f"{field} must be {allowed(model, field)}, got {error.get('input')!r}"
    return f"{field + ': ' if field else ''}{error.get('msg', 'invalid')}"


class RainConfig(BaseModel):
    """All parameters of a RAIN decode. Frozen: derive variants with ``cfg.merged(**overrides)``.
    Values out of range raise ``ConfigError`` (a ``ValueError``), one line naming each field, its value
    and what it allows."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError.from_validation(exc, type(self)) from None

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> RainConfig:
        try:
            return super().model_validate(obj, *args, **kwargs)
        except ValidationError as exc:
            raised = [(e.get("ctx") or {}).get("error") for e in exc.errors()]
            if len(raised) == 1 and isinstance(raised[0], ConfigError):  # from __init__, which validation calls
                raise raised[0] from None
            raise ConfigError.from_validation(exc, cls) from None

    # --- search budget (official) -------------------------------------------------------------
    max_searches: int = Field(
        50,
        ge=1,
        description="T_max: search budget per commit (official 50). Setting it below extra_searches lowers "
        "both: a commit then runs max(T_max, reused visits + min(T_extra, T_max)) searches.",
    )
    min_visits: int = Field(
        6,
        ge=0,
        description="T_min: early stop once the most-visited root child has more real visits (backups, "
        "not similarity visits) than this (official 6; the paper uses 5 for adversarial prompts, 16 for truthfulness).",
    )
    extra_searches: int = Field(
        15,
        ge=0,
        description="T_extra: at least this many new searches per commit, even when a reused "
        "subtree already carries real visits (official 15); never more than max_searches.",
    )
    value_threshold: float = Field(
        0.8, ge=-1.0, le=1.0, description="V: early stop once the best root child's value exceeds this (official 0.8)."
    )
    c_puct: float = Field(2.0, ge=0.0, description="c: PUCT exploration constant (official 2).")
    # --- expansion (official) ------------------------------------------------------------------
    num_candidates: int = Field(10, ge=1, le=256, description="K: candidate token sets per expansion (official 10).")
    max_children: int = Field(
        20, ge=1, description="Dynamic node addition stops once a node has this many children (official 20)."
    )
    top_k: int = Field(
        15,
        ge=1,
        description="Candidates are sampled from the top-k tokens, renormalised; their priors are "
        "products of those renormalised probabilities (official 15).",
    )
    token_set_lengths: tuple[int, ...] = Field(
        (1, 2, 4, 10),
        description="Token-set length by a node's step, counted from the original prompt and "
        "never reset at a commit; the last one repeats (official 1, 2, 4, 10).",
    )
    root_uniform_mix: float = Field(
        0.25, ge=0.0, le=1.0, description="Root priors become (1 - mix) * P + mix / k (official 0.25)."
    )
    # --- similarity update and dynamic addition (official) --------------------------------------
    similarity_threshold: float = Field(
        0.95,
        ge=-1.0,
        le=1.0,
        description="Siblings at least this cosine-similar share a backed-up value (official 0.95).",
    )
    similarity_weight: float = Field(
        0.2,
        ge=0.0,
        le=1.0,
        description="A similar sibling gets a fractional visit of weight * similarity (official 0.2).",
    )
    variance_factor: float = Field(
        0.03,
        ge=0.0,
        description="Dynamic addition fires when the children's embedding variance norm is below "
        "factor * token-set length (official 0.03).",
    )
    similarity_update: bool = Field(True, description="Ablation switch for the embedding similarity update.")
    dynamic_node_addition: bool = Field(True, description="Ablation switch for dynamic node addition.")
    # --- simulation and evaluation -------------------------------------------------------------
    simulation_top_k: int | None = Field(
        None,
        ge=1,
        description="Simulations sample from the full distribution (official: None). A number "
        "restricts them to the top-k tokens.",
    )
    max_simulation_tokens: int | None = Field(
        None,
        ge=1,
        description="Cap on simulated tokens. Official: None, a simulation runs until the text ends "
        "a clause, EOS, a stop string or max_length. A number bounds the cost of a model that rambles.",
    )
    clause_boundaries: tuple[str, ...] = Field(
        (",", ".", "?", ":", ";", "\n"),
        description="A simulation ends as soon as the text ends with one of "
        "these; the check comes before each token, so a leaf that already ends a clause is judged as it is "
        "(official , . ? : ; newline).",
    )
    simulate_from_candidate: bool = Field(
        False,
        description="Speed deviation (fast preset): a freshly expanded leaf's simulation starts with the "
        "expansion's first sampled candidate (a top-k sample from the leaf), so the batched expansion already "
        "paid for those tokens. Official: False, the simulation is sampled on its own before the expansion.",
    )
    lazy_expansion: bool = Field(
        False,
        description="Speed deviation (fast preset): an expansion first proposes only the greedy "
        "continuation; the other candidates are drawn when a search passes the node again and the greedy child's "
        "value is not above value_threshold. When every branch is judged good, the search follows the greedy "
        "path with one-row model steps. Official: False, all candidates at once.",
    )
    scoring: Scoring = Field(
        Scoring.DISCRETE, description="'discrete' as in the paper, or 'continuous' (option-probability margin)."
    )
    # --- searches side by side (rain) -----------------------------------------------------------
    parallel_searches: int = Field(
        1,
        ge=1,
        le=64,
        description="Searches run side by side per round (rain). 1: the official search, one leaf at a time. "
        "B > 1: each round selects up to B leaves one after another (each selection sees the searches already in "
        "flight), answers their expansions, simulations, evaluations and embeddings as batches, then backs them "
        "up in the order they started. Budgets count completed searches; a round never runs past the budget.",
    )
    virtual_loss: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="With parallel_searches > 1: a search in flight counts as a visit in the exploration term "
        "(WU-UCT's unobserved samples, 0.0); a value above 0 also counts it as a visit of value -virtual_loss.",
    )
    # --- decoding limits -----------------------------------------------------------------------
    max_new_tokens: int = Field(
        128, ge=1, description="Hard cap on generated tokens; never exceeded (the official code has only max_length)."
    )
    max_length: int = Field(2048, ge=2, description="Prompt plus response token cap (official 2048).")
    temperature: float = Field(1.0, gt=0.0, le=100.0, description="Softmax temperature for sampling (>0).")
    seed: int | None = Field(0, description="Seed for all sampling; None draws a fresh one per call.")
    stop: tuple[str, ...] = Field((), description="Stop strings: generation ends before the first one.")
    max_seconds: float | None = Field(
        None,
        gt=0.0,
        description="Deadline for one decode. When it passes, the best branch found so far is "
        "committed and the decode ends with finish_reason 'time' (no exception; the text is kept).",
    )
    evaluator_timeout: float | None = Field(
        None,
        gt=0.0,
        description="Seconds one evaluator call may take; a slower call fails the decode with "
        "EvaluatorError (the partial answer attached). None: no limit (a remote judge has its own timeout).",
    )

    @field_validator("token_set_lengths")
    @classmethod
    def _check_lengths(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v:
            raise ValueError("token_set_lengths must name at least one length, e.g. (1, 2, 4, 10)")
        if any((not isinstance(x, int)) or x < 1 or x > 64 for x in v):
            raise ValueError(f"token_set_lengths must be integers in 1..64, got {v!r}")
        return tuple(v)

    @field_validator("stop", mode="before")
    @classmethod
    def _check_stop(cls, v: Any) -> tuple[str, ...]:
        if v is None:
            return ()
        if isinstance(v, str):
            v = (v,)
        stops: tuple[str, ...] = tuple(v)
        for s in stops:
            if not isinstance(s, str) or s == "":
                raise ValueError(f"stop strings must be non-empty strings, got {s!r}")
        return stops

    @field_validator("clause_boundaries", mode="before")
    @classmethod
    def _check_boundaries(cls, v: Any) -> tuple[str, ...]:
        ends: tuple[str, ...] = tuple(v)
        if not ends or any(not isinstance(s, str) or s == "" for s in ends):
            raise ValueError("clause_boundaries must be a non-empty list of non-empty strings")
        return ends

    @model_validator(mode="before")
    @classmethod
    def _reject_nan(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, value in data.items():
                if isinstance(value, float) and not math.isfinite(value):
                    raise ValueError(f"{key} must be a finite number, got {value!r}")
        return data

    def token_set_length(self, step: int) -> int:
        """``L(step)`` of the children of a node at ``step`` (counted from the original prompt, never
        reset at a commit): 1 token at step 0, 2 at step 1, 4 at step 2, 10 from step 3 on (official)."""
        lengths = self.token_set_lengths
        return lengths[min(step, len(lengths) - 1)]

    def search_target(self, reused_visits: int) -> int:
        """Searches (counted from the root's real visits) a commit runs to:
        ``max(T_max, reused + min(T_extra, T_max))``; with the official 50 and 15, the authors' rule."""
        return max(self.max_searches, reused_visits + min(self.extra_searches, self.max_searches))

    def token_budget(self, prompt_tokens: int, context_length: int) -> int:
        """New tokens a decode may produce: ``max_new_tokens``, within ``max_length`` and the model's
        context window."""
        return min(self.max_new_tokens, self.max_length - prompt_tokens, context_length - prompt_tokens)

    # The speed deviations of the fast preset, each a field of its own (see ``fast``).
    FAST: ClassVar[dict[str, Any]] = {
        "lazy_expansion": True,
        "simulate_from_candidate": True,
        "max_simulation_tokens": 32,
    }

    @classmethod
    def fast(cls, **overrides: Any) -> RainConfig:
        """The fast preset: the official search with every speed deviation of ``RainConfig.FAST`` on
        (each one documented on its field and in docs/algorithm.md); ``overrides`` switch any of them
        back, e.g. ``RainConfig.fast(simulate_from_candidate=False)``."""
        return cls(**{**cls.FAST, **overrides})

    def deviations(self) -> dict[str, tuple[Any, Any]]:
        """Fields whose value differs from the official default: ``{name: (official, this)}``."""
        official = type(self)()
        return {
            name: (getattr(official, name), getattr(self, name))
            for name in type(self).model_fields
            if getattr(self, name) != getattr(official, name)
        }

    def merged(self, config: RainConfig | None = None, **overrides: Any) -> RainConfig:
        """A validated copy with ``config``'s explicitly set fields, then ``overrides``, applied."""
        data = self.model_dump()
        if config is not None:
            if not isinstance(config, RainConfig):
                raise TypeError(f"config must be a RainConfig, got {type(config).__name__}")
            data.update(config.model_dump(exclude_unset=True))
        unknown = sorted(set(overrides) - set(type(self).model_fields))
        if unknown:
            raise TypeError(
                f"unknown RAIN option(s) {unknown}; valid options are the RainConfig fields: "
                f"{sorted(type(self).model_fields)}"
            )
        data.update(overrides)
        return type(self).model_validate(data)
