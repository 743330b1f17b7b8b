"""Building what a benchmark command names: the generator (the embedded model, a local model, or a
model served by vLLM), a judge model (local or served), a guard model (local or served), and
evaluators from them.

The Python API of the benchmarks takes ready objects (any ``LanguageModel``, any evaluator), so it
works with every engine; this module only turns command-line options into those objects.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass

from rain_core.config import Scoring
from rain_core.evaluators import CallableEvaluator, JudgeEvaluator, SelfEvaluator
from rain_core.evaluators.guards.evaluator import GuardEvaluator
from rain_core.evaluators.guards.presets import GuardPreset, infer_preset
from rain_core.protocols import Evaluator, LanguageModel

from .scorers import load_scorer

logger = logging.getLogger(__name__)

ENGINES = ("transformers", "vllm")


class SetupError(ValueError):
    """The command's options do not describe something that can be built."""


@dataclass(frozen=True)
class ModelOptions:
    """The options ``rain generate`` and the benchmarks share."""

    engine: str = "transformers"
    model: str | None = None
    base_url: str | None = None
    api_key: str | None = None
    judge: str | None = None
    judge_base_url: str | None = None
    judge_model: str | None = None
    device: str | None = None
    dtype: str | None = None
    guard: str | None = None
    guard_base_url: str | None = None
    guard_model: str | None = None
    guard_preset: str | None = None


def vllm_engine(base_url: str, model: str | None, api_key: str | None) -> LanguageModel:
    """``rain_core.engines.vllm.VLLMEngine(base_url, model, api_key=...)`` (``model`` None: the one the
    server serves), or a clear error."""
    try:
        module = importlib.import_module("rain_core.engines.vllm")
        engine_class = module.VLLMEngine
    except (ImportError, AttributeError) as exc:
        raise SetupError(
            f"the vLLM engine is not available in this installation of rain "
            f"(rain_core.engines.vllm: {exc}); use --engine transformers"
        ) from None
    try:
        return engine_class(base_url, model, api_key=api_key)  # type: ignore[no-any-return]
    except TypeError as exc:
        raise SetupError(f"could not start the vLLM engine for {model!r} at {base_url}: {exc}") from None


def build_generator(opts: ModelOptions) -> LanguageModel:
    """The model to decode with: the embedded SmolLM2-135M-Instruct by default."""
    if opts.engine not in ENGINES:
        raise SetupError(f"--engine must be one of {', '.join(ENGINES)}, got {opts.engine!r}")
    if opts.engine == "vllm":
        if not opts.base_url:
            raise SetupError("--engine vllm needs --base-url (the server, e.g. http://HOST:8000/v1)")
        return vllm_engine(opts.base_url, opts.model, opts.api_key)
    if opts.base_url:
        raise SetupError("--base-url is for a served model: add --engine vllm")
    from rain_core.loaders import load_default_model, load_model

    kw = {k: v for k, v in {"device": opts.device, "dtype": opts.dtype}.items() if v}
    lm: LanguageModel = load_model(opts.model, **kw) if opts.model else load_default_model(**kw)
    return lm


def build_judge(opts: ModelOptions) -> LanguageModel | None:
    """The judge model, as ``rain generate`` reads the options: served when ``--judge-base-url`` or
    ``--judge-model`` is given (at ``--judge-base-url``, else at ``--base-url``; its name from
    ``--judge-model``, else ``--judge``), loaded locally from ``--judge`` otherwise; None without any."""
    served_name = opts.judge_model or (opts.judge if opts.judge_base_url else None)
    if opts.judge_base_url or opts.judge_model:
        url = opts.judge_base_url or opts.base_url
        if not url:
            raise SetupError("a served judge needs --judge-base-url (or --base-url when it runs on the same server)")
        return vllm_engine(url, served_name, opts.api_key)
    if not opts.judge:
        return None
    from rain_core.loaders import load_model

    kw = {k: v for k, v in {"device": opts.device, "dtype": opts.dtype}.items() if v}
    judge: LanguageModel = load_model(opts.judge, **kw)
    return judge


def build_guard(opts: ModelOptions) -> GuardEvaluator | None:
    """The guard model as an evaluator (continuous score, so the evaluator benchmark's AUC reads its
    verdict probabilities): served when ``--guard-base-url`` or ``--guard-model`` is given (at
    ``--guard-base-url``, else at ``--base-url``; its name from ``--guard-model``, else ``--guard``),
    loaded locally from ``--guard`` otherwise; None without any. ``--guard-preset`` names the format
    (default: inferred from the model's name)."""
    served_name = opts.guard_model or (opts.guard if opts.guard_base_url else None)
    if not (opts.guard or opts.guard_base_url or opts.guard_model):
        return None
    preset: GuardPreset | str | None = opts.guard_preset
    if preset is None and (served_name or opts.guard):
        try:
            preset = infer_preset(str(served_name or opts.guard))
        except ValueError as exc:
            raise SetupError(f"{exc} (on the command line: --guard-preset NAME)") from None
    lm: LanguageModel
    if opts.guard_base_url or opts.guard_model:
        url = opts.guard_base_url or opts.base_url
        if not url:
            raise SetupError("a served guard needs --guard-base-url (or --base-url when it runs on the same server)")
        lm = vllm_engine(url, served_name, opts.api_key)
    else:
        from rain_core.loaders import load_model

        kw = {k: v for k, v in {"device": opts.device, "dtype": opts.dtype}.items() if v}
        lm = load_model(str(opts.guard), **kw)
    try:
        return GuardEvaluator(lm, preset)
    except ValueError as exc:
        raise SetupError(f"the guard model {lm.name}: {exc}") from None


@dataclass(frozen=True)
class NamedEvaluator:
    """An evaluator with the name and description a report shows."""

    name: str
    evaluator: Evaluator
    description: str


def self_evaluator(
    lm: LanguageModel, principle: str = "harmless", scoring: Scoring | str = Scoring.DISCRETE
) -> NamedEvaluator:
    ev = SelfEvaluator(lm, principle, scoring=scoring)
    return NamedEvaluator(
        f"self ({lm.name})",
        ev,
        f"self-evaluation: {lm.name} asked the {ev.principle.name!r} question about its own "
        f"replies in both option orders ({ev.scoring.value} score, as RAIN uses it)",
    )


def judge_evaluator(
    judge: LanguageModel, principle: str = "harmless", scoring: Scoring | str = Scoring.DISCRETE
) -> NamedEvaluator:
    ev = JudgeEvaluator(judge, principle, scoring=scoring)
    return NamedEvaluator(
        f"judge ({judge.name})",
        ev,
        f"the judge model {judge.name} asked the {ev.principle.name!r} question in both option "
        f"orders ({ev.scoring.value} score)",
    )


def guard_evaluator(guard: GuardEvaluator) -> NamedEvaluator:
    return NamedEvaluator(
        f"guard ({guard.lm.name})",
        guard,
        f"the guard model {guard.lm.name} in the {guard.preset.name} format: P(safe) - P(unsafe) of its first "
        f"verdict token ({' / '.join(guard.preset.safe_words)} against {' / '.join(guard.preset.unsafe_words)}), "
        f"renormalised over the verdict tokens ({guard.scoring.value} score)",
    )


def scorer_evaluator(spec: str) -> NamedEvaluator:
    name, fn, description = load_scorer(spec)
    return NamedEvaluator(f"scorer {name}", CallableEvaluator(fn, name=name), description)


def build_evaluator(
    kind: str,
    lm: LanguageModel | None,
    judge: LanguageModel | None,
    principle: str = "harmless",
    scoring: Scoring | str = Scoring.DISCRETE,
    guard: GuardEvaluator | None = None,
) -> NamedEvaluator:
    """``self``, ``judge`` (needs ``--judge``), ``guard`` (needs ``--guard``), or ``scorer:NAME`` / a
    built-in scorer name."""
    if kind == "self":
        if lm is None:
            raise SetupError("the evaluator 'self' needs the generator model")
        return self_evaluator(lm, principle, scoring)
    if kind == "judge":
        if judge is None:
            raise SetupError("the evaluator 'judge' needs --judge MODEL (and --judge-base-url for a served judge)")
        return judge_evaluator(judge, principle, scoring)
    if kind == "guard":
        if guard is None:
            raise SetupError(
                "the evaluator 'guard' needs --guard MODEL (or --guard-base-url/--guard-model for a served guard)"
            )
        return guard_evaluator(guard)
    spec = kind.split(":", 1)[1] if kind.startswith("scorer:") else kind
    return scorer_evaluator(spec)
