"""The options of every adapter constructor, described once: ``DecoderOptions`` (who judges the replies
and the decoder's parts) and ``LoadOptions`` (those, and how a model named by id or folder loads).

Each field's type, default and description is the one source of the ``from_model_id`` /
``from_model_name`` / ``from_engine`` / ``from_default`` signatures (``constructor``: the signature
that ``help()``, ``inspect`` and notebook call tips show, and the "Options" section of the
docstring), and of their checks, which run before any weights load.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, InstanceOf, field_validator, model_validator

from rain_core import (
    Encoder,
    Evaluator,
    GuardEvaluator,
    GuardPreset,
    LanguageModel,
    Principle,
    RainConfig,
    Scoring,
    load_principle,
)
from rain_core.evaluators.guards.presets import GUARD_PRESETS, infer_preset

__all__ = ["GUARD_EVALUATOR_OPTIONS", "DecoderOptions", "LoadOptions", "constructor"]

F = TypeVar("F", bound=Callable[..., Any])

GUARD_EVALUATOR_OPTIONS = tuple(
    name for name, p in inspect.signature(GuardEvaluator).parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY
)
"""The keywords of ``guard_kwargs`` that ``GuardEvaluator`` takes (``scoring``, ``threshold``, ...);
the others are loading options of a guard named by id."""

_EVALUATORS = ("judge", "guard", "evaluator")


class DecoderOptions(BaseModel):
    """What judges the replies, and the decoder's parts: the options of ``from_engine`` and
    ``from_default``. At most one of ``judge``, ``guard`` and ``evaluator``; none: the model judges
    itself against ``principle`` (``SelfEvaluator``)."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True, extra="forbid")

    judge: str | LanguageModel | None = Field(
        None,
        description="A model id or folder, or a ready LanguageModel, that judges replies against "
        "`principle` (a JudgeEvaluator with the config's scoring).",
    )
    guard: str | InstanceOf[GuardEvaluator] | LanguageModel | None = Field(
        None,
        description="A guard model (Llama Guard 3, ShieldGemma, Granite Guardian, Qwen3Guard) that "
        "judges replies by its own policy: a model id or folder, a ready LanguageModel (a VLLMEngine "
        "serving it), or a ready GuardEvaluator. Its score is continuous unless `guard_kwargs` or "
        "the `scoring` keyword says otherwise (docs/guards.md).",
    )
    guard_preset: InstanceOf[GuardPreset] | str | None = Field(
        None,
        description=f"The guard's prompt and verdict format: one of {', '.join(sorted(GUARD_PRESETS))}, "
        "or a GuardPreset; default: inferred from the guard's name.",
    )
    guard_kwargs: dict[str, Any] | None = Field(
        None,
        description=f"GuardEvaluator options ({', '.join(GUARD_EVALUATOR_OPTIONS)}) and, for a guard "
        "named by id, its loading options (default: the model's).",
    )
    evaluator: Evaluator | Callable[[str, str], float] | None = Field(
        None, description="Any Evaluator, or a function fn(prompt, response) -> float in [-1, 1]."
    )
    principle: InstanceOf[Principle] | str | Path = Field(
        "harmless",
        description="What the model (or `judge`) is asked about its replies: harmless, truthful, "
        "positive, a Principle, or a .toml file.",
    )
    encoder: Encoder | Literal["default"] | None = Field(
        "default",
        description="The sentence encoder of the similarity update and dynamic node addition: "
        '"default" (the engine\'s all-MiniLM-L6-v2), an Encoder, or None (both off).',
    )
    config: InstanceOf[RainConfig] | None = Field(
        None, description="The base RainConfig; RainConfig fields given as keywords override it."
    )

    @model_validator(mode="before")
    @classmethod
    def _one_judge(cls, values: Any) -> Any:
        """Relations between options, as ``TypeError``s (a wrong combination, not a bad value)."""
        if not isinstance(values, dict):
            return values
        given = [name for name in _EVALUATORS if values.get(name) is not None]
        if len(given) > 1:
            raise TypeError(
                "pass either judge (a model that judges), guard (a guard model) or evaluator, not both: "
                f"got {' and '.join(given)}"
            )
        config = values.get("config")
        if config is not None and not isinstance(config, RainConfig):
            raise TypeError(f"config must be a RainConfig, got {type(config).__name__}; or pass its fields as keywords")
        guard = values.get("guard")
        if guard is None:
            stray = [k for k in ("guard_preset", "guard_kwargs") if values.get(k) is not None]
            if stray:
                raise TypeError(f"{' and '.join(stray)} configure a guard: pass guard= as well")
            return values
        if values.get("principle", "harmless") != "harmless":
            raise TypeError(
                "principle= is what the model or a judge is asked; a guard judges by its own policy "
                "(set through guard_preset= or guard_kwargs={'template_kwargs': ...}): leave principle out"
            )
        if isinstance(guard, GuardEvaluator) and (values.get("guard_preset") or values.get("guard_kwargs")):
            raise TypeError("guard_preset and guard_kwargs build a guard; this GuardEvaluator is built already")
        loading = sorted(set(values.get("guard_kwargs") or {}) - set(GUARD_EVALUATOR_OPTIONS))
        if loading and not isinstance(guard, str):
            raise TypeError(f"guard_kwargs {loading} are loading options: they apply to a guard named by id")
        return values

    @field_validator("guard_kwargs")
    @classmethod
    def _guard_evaluator_values(cls, value: Any) -> Any:
        """The ``GuardEvaluator`` options among ``guard_kwargs``, checked as it checks them."""
        problems = []
        scoring = (value or {}).get("scoring", Scoring.CONTINUOUS)
        if scoring not in set(Scoring) | {s.value for s in Scoring}:
            problems.append(f"scoring must be 'discrete' or 'continuous', got {scoring!r}")
        threshold = (value or {}).get("threshold", 0.5)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
            problems.append(f"threshold is a probability of 'unsafe' strictly between 0 and 1, got {threshold!r}")
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @field_validator("principle")
    @classmethod
    def _known_principle(cls, value: Any) -> Any:
        load_principle(value)  # an unknown name or a missing file fails here
        return value

    @field_validator("encoder", mode="before")
    @classmethod
    def _default_or_encoder(cls, value: Any) -> Any:
        if isinstance(value, str) and value != "default":  # a str has .encode: not an Encoder
            raise ValueError(f'encoder must be an Encoder, "default" or None, got {value!r}')
        return value

    @field_validator("guard_preset")
    @classmethod
    def _known_preset(cls, value: Any) -> Any:
        if isinstance(value, str) and value not in GUARD_PRESETS:
            raise ValueError(f"unknown guard preset {value!r}; use one of {', '.join(sorted(GUARD_PRESETS))}")
        return value

    @model_validator(mode="after")
    def _guard_format(self) -> DecoderOptions:
        if isinstance(self.guard, str) and self.guard_preset is None:
            try:
                infer_preset(self.guard)  # a name that says no family fails here
            except ValueError as exc:
                raise ValueError(f"{exc} (here: guard_preset=)") from None
        return self

    def chosen_preset(self) -> GuardPreset | str | None:
        """The guard's preset: the one given, else the one its id names (None: the engine's name)."""
        if self.guard_preset is None and isinstance(self.guard, str):
            return infer_preset(self.guard)
        return self.guard_preset

    def rain_config(self, rain_fields: dict[str, Any]) -> RainConfig | None:
        """``config`` with the ``RainConfig`` fields given as keywords (validated); None when neither."""
        if self.config is None and not rain_fields:
            return None
        return (self.config or RainConfig()).merged(**rain_fields)

    def loading(self) -> dict[str, Any]:
        """Options for loading a model by id (none here: see ``LoadOptions``)."""
        return {}


class LoadOptions(DecoderOptions):
    """``DecoderOptions`` and how a model named by id or folder loads: the options of
    ``from_model_id`` / ``from_model_name``. They pass through to ``from_pretrained``
    (``rain_core.load_model``); a dispatched or quantised model is never moved."""

    device: str | None = Field(None, description='Where the model runs: "cpu", "cuda", "cuda:1", ...')
    device_map: Any = Field(None, description='How weights are placed: "auto" spreads them across GPUs.')
    dtype: Any = Field(None, description='"float32", "bfloat16", "float16", "auto" or a torch.dtype.')
    quantization_config: Any = Field(None, description="e.g. BitsAndBytesConfig(load_in_4bit=True).")
    model_kwargs: dict[str, Any] | None = Field(
        None, description="Further load_model options (attn_implementation, trust_remote_code, gguf_file, ...)."
    )
    judge_kwargs: dict[str, Any] | None = Field(
        None, description="Loading options of a judge named by id (default: the model's)."
    )

    def loading(self) -> dict[str, Any]:
        """The options ``load_model`` receives for the model (and, by default, its judge or guard)."""
        named = {"device": self.device, "device_map": self.device_map, "dtype": self.dtype}
        named["quantization_config"] = self.quantization_config
        return {**{k: v for k, v in named.items() if v is not None}, **(self.model_kwargs or {})}


def _spelled(options: type[DecoderOptions], name: str) -> str:
    """A field's type as its source writes it, less pydantic's ``InstanceOf`` marks."""
    source = next(k.__annotations__[name] for k in options.__mro__ if name in getattr(k, "__annotations__", {}))
    return re.sub(r"InstanceOf\[(\w+)\]", r"\1", str(source))


def _section(options: type[DecoderOptions]) -> str:
    lines = ["Options (checked before any weights load):", ""]
    for name, field in options.model_fields.items():
        annotation = _spelled(options, name)
        lines.append(f"- ``{name}`` ({annotation}, default {field.default!r}): {field.description}")
    return "\n".join(lines)


def constructor(options: type[DecoderOptions]) -> Callable[[F], F]:
    """Give a constructor ``fn(cls, [model], [own keywords], **kwargs)`` the keyword options of
    ``options`` in its signature (``__signature__``, as ``help()``, ``inspect`` and notebook call tips
    show it; annotations as the source spells them, like the wrapper's own under postponed
    evaluation) and in an "Options" section of its docstring, both made from ``options``' fields.
    Parameters ``fn`` names itself (``evaluator`` of a positional form) keep their place.

    Why this shape: the options are written once, in ``DecoderOptions``/``LoadOptions``, where they
    are also checked; the constructors stay thin typed wrappers (their model argument and return
    type visible to static tools), while ``help()`` and call tips show every option."""

    def apply(fn: F) -> F:
        signature = inspect.signature(fn)
        params = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        rest = [p for p in signature.parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD]
        named = {p.name for p in params}
        params += [
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=field.default, annotation=_spelled(options, name)
            )
            for name, field in options.model_fields.items()
            if name not in named
        ]
        fn.__signature__ = signature.replace(parameters=params + rest)  # type: ignore[attr-defined]
        fn.__doc__ = f"{inspect.cleandoc(fn.__doc__ or '')}\n\n{_section(options)}"
        return fn

    return apply
