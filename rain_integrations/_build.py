"""Building an adapter from its constructor's keywords, for every ``from_*`` constructor of every
adapter: the keywords split into the adapter's fields, ``DecoderOptions``/``LoadOptions`` and
``RainConfig`` fields; all of them checked before any weights load; then the model (and a judge or a
guard model) loaded and the ``RainDecoder`` built."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import ConfigDict, create_model

from rain_core import (
    Evaluator,
    GuardEvaluator,
    JudgeEvaluator,
    LanguageModel,
    RainConfig,
    RainDecoder,
    Scoring,
    SelfEvaluator,
)

from .options import GUARD_EVALUATOR_OPTIONS, DecoderOptions, LoadOptions

__all__ = ["RainConstructors", "build_decoder", "check_fields", "default_lm", "load_lm", "split_options"]

A = TypeVar("A", bound="RainConstructors")


# --- models ------------------------------------------------------------------------------------------
def default_lm() -> LanguageModel:
    """The embedded SmolLM2-135M-Instruct, loaded once per process and shared by every adapter."""
    from rain_core.loaders import models

    return models.shared_default_model()


def load_lm(model: str | LanguageModel, load_options: Mapping[str, Any]) -> LanguageModel:
    """``model`` itself when it is a ready ``LanguageModel``; else ``load_model(model, ...)`` (the
    in-process engine: ``pip install "rain-align[local]"``)."""
    if isinstance(model, LanguageModel):
        if load_options:
            raise TypeError(
                f"{sorted(load_options)} apply when loading a model by id; "
                f"{getattr(model, 'name', 'this model')} is already loaded"
            )
        return model
    if not isinstance(model, str) or not model.strip():
        raise TypeError(f"a model must be a model id or folder (str) or a LanguageModel, got {type(model).__name__}")
    try:
        from rain_core.loaders import models
    except ImportError as exc:
        raise ImportError(
            f"loading {model!r} in this process needs the in-process engine: "
            "pip install 'rain-align[local]' (or pass a ready LanguageModel to from_engine)"
        ) from exc
    return models.load_model(model, **load_options)


def _second_model(
    spec: str | LanguageModel, own_loading: Mapping[str, Any] | None, model: Any, lm: LanguageModel, load: Any
) -> LanguageModel:
    """A judge's or guard's model: the generator itself when it names the same model with no loading
    options of its own; else ``spec`` loaded with its own options (default: the generator's)."""
    if spec is model or (isinstance(spec, str) and spec == model and own_loading is None):
        return lm
    if not isinstance(spec, str):
        return spec
    return load_lm(spec, own_loading if own_loading is not None else load)


def _guard(options: DecoderOptions, model: Any, lm: LanguageModel, load: Any, rain: Mapping[str, Any]) -> Evaluator:
    """The guard as RAIN's evaluator. Its score is continuous unless ``guard_kwargs["scoring"]`` or the
    ``scoring`` keyword of the constructor asks for another."""
    if isinstance(options.guard, GuardEvaluator):
        return options.guard
    assert options.guard is not None
    loading = dict(options.guard_kwargs or {})
    own = {k: loading.pop(k) for k in GUARD_EVALUATOR_OPTIONS if k in loading}
    own.setdefault("scoring", rain.get("scoring", Scoring.CONTINUOUS))
    guard_lm = _second_model(options.guard, loading or None, model, lm, load)
    return GuardEvaluator(guard_lm, options.chosen_preset(), **own)


def _judging(
    options: DecoderOptions, model: Any, lm: LanguageModel, load: Any, cfg: RainConfig, rain: Mapping[str, Any]
) -> Any:
    """What judges the replies: the guard, the judge, the given evaluator, or the model itself
    (``None``: the decoder's default self-evaluation on ``harmless``)."""
    if options.guard is not None:
        return _guard(options, model, lm, load, rain)
    if options.judge is not None:
        judge_lm = _second_model(options.judge, getattr(options, "judge_kwargs", None), model, lm, load)
        return JudgeEvaluator(judge_lm, options.principle, scoring=cfg.scoring)
    if options.evaluator is None and options.principle != "harmless":
        return SelfEvaluator(lm, options.principle, scoring=cfg.scoring)
    return options.evaluator


def build_decoder(model: str | LanguageModel | None, options: DecoderOptions, rain: Mapping[str, Any]) -> RainDecoder:
    """The ``RainDecoder`` of checked ``options``: ``model`` ``None`` is the embedded model, a str is
    loaded (``options.loading()``), a ``LanguageModel`` is used as it is; ``rain``: ``RainConfig``
    fields over ``options.config``."""
    cfg = options.rain_config(dict(rain))
    load = options.loading()
    lm = default_lm() if model is None else load_lm(model, load)
    evaluator = _judging(options, model, lm, load, cfg or RainConfig(), rain)
    return RainDecoder(lm, evaluator, encoder=options.encoder, config=cfg)


# --- keywords ------------------------------------------------------------------------------------------
def check_fields(owner: Any, values: Mapping[str, Any]) -> None:
    """``values`` checked against the types and constraints of ``owner``'s fields of those names,
    without building an ``owner`` (whose decoder may not be loaded yet). The error is pydantic's
    ``ValidationError`` for ``owner``, as building it would raise; unknown names are a ``TypeError``."""
    unknown = sorted(set(values) - set(owner.model_fields))
    if unknown:
        raise TypeError(f"unknown option(s) {unknown}: pass {owner.__name__} fields or RainConfig fields")
    if not values:
        return
    fields: dict[str, Any] = {name: (owner.model_fields[name].annotation, owner.model_fields[name]) for name in values}
    check = create_model(  # type: ignore[call-overload]
        owner.__name__, __config__=ConfigDict(arbitrary_types_allowed=True, populate_by_name=True), **fields
    )
    check.model_validate(dict(values))


def split_options(
    owner: Any, kind: type[DecoderOptions], kwargs: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A constructor's keywords as (the adapter's fields, ``kind`` options, ``RainConfig`` fields);
    anything else is a ``TypeError`` that says which kinds there are."""
    own = {k: v for k, v in kwargs.items() if k in owner.model_fields}
    chosen = {k: v for k, v in kwargs.items() if k in kind.model_fields and k not in own}
    rain = {k: v for k, v in kwargs.items() if k not in own and k not in chosen}
    unknown = sorted(set(rain) - set(RainConfig.model_fields))
    if unknown:
        loading = [k for k in unknown if k in LoadOptions.model_fields]
        hint = f"{loading} apply when a model is loaded by id (from_model_id/from_model_name); " if loading else ""
        raise TypeError(f"unknown option(s) {unknown}: {hint}pass {owner.__name__} fields or RainConfig fields")
    return own, chosen, rain


class RainConstructors:
    """The one body of every adapter's ``from_*`` constructors. Each adapter gives it typed entry
    points (``ChatRain.from_model_id``, ``RainLlamaIndexLLM.from_model_name``, ``from_engine``,
    ``from_default``) whose signatures and docs come from ``rain_integrations.options``, and checks
    its own fields in ``check_options``."""

    @classmethod
    def check_options(
        cls, fields: dict[str, Any], rain_fields: dict[str, Any] | None = None, *, config: RainConfig | None = None
    ) -> None:
        """This class's ``fields`` and the decoder's ``RainConfig`` (``config`` with ``rain_fields``)
        checked together without loading a model: field types and bounds, and what the fields make
        of the config (``check_config``). Raises what building the object would (``ValidationError``,
        ``TypeError``)."""
        if "decoder" in fields:
            raise TypeError(f"the constructors build the decoder; pass a ready one as {cls.__name__}(decoder=...)")
        check_fields(cls, fields)
        cls.check_config(fields, (config or RainConfig()).merged(**(rain_fields or {})))

    @classmethod
    def check_config(cls, fields: dict[str, Any], config: RainConfig) -> None:
        """What this class's ``fields`` make of the decoder's ``config`` (none here)."""

    @classmethod
    def _from_options(
        cls: type[A],
        model: str | LanguageModel | None,
        kwargs: Mapping[str, Any],
        kind: type[DecoderOptions],
        fields: Mapping[str, Any] | None = None,
    ) -> A:
        """Check every keyword (``fields``: more of this class's fields), then load and build."""
        own, chosen, rain = split_options(cls, kind, kwargs)
        own = {**(fields or {}), **own}
        options = kind(**chosen)
        options.rain_config(rain)
        cls.check_options(own, rain, config=options.config)
        return cls(decoder=build_decoder(model, options, rain), **own)  # type: ignore[call-arg]
