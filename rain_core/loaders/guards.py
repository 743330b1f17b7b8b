"""Guard evaluators built from a model folder, a cached hub id or a vLLM server: ``load_guard`` and
``served_guard`` (also ``rain_core.load_guard`` and ``rain_core.served_guard``)."""

from __future__ import annotations

from typing import Any

from ..config import Scoring
from ..evaluators.guards import GuardEvaluator, GuardPreset, infer_preset, named_preset

__all__ = ["load_guard", "served_guard"]


def load_guard(
    path_or_id: str,
    preset: GuardPreset | str | None = None,
    *,
    scoring: Scoring | str = Scoring.CONTINUOUS,
    threshold: float = 0.5,
    **load_kwargs: Any,
) -> GuardEvaluator:
    """A ``GuardEvaluator`` over a guard model loaded in this process (``rain_core.engines.load_model``
    with ``load_kwargs``: ``device``, ``device_map``, ``dtype``, ``quantization_config``, ...).
    ``preset`` None: inferred from ``path_or_id`` (before anything loads)."""
    chosen = named_preset(preset) if preset is not None else infer_preset(path_or_id)
    from .models import load_model

    return GuardEvaluator(load_model(path_or_id, **load_kwargs), chosen, scoring=scoring, threshold=threshold)


def served_guard(
    base_url: str,
    model: str | None = None,
    preset: GuardPreset | str | None = None,
    *,
    scoring: Scoring | str = Scoring.CONTINUOUS,
    threshold: float = 0.5,
    **engine_kwargs: Any,
) -> GuardEvaluator:
    """A ``GuardEvaluator`` over a guard model served by vLLM at ``base_url`` (``VLLMEngine(base_url,
    model, **engine_kwargs)``; ``model`` None: the one the server serves). ``preset`` None: inferred
    from the served model's name. The guard's tokenizer must be on this machine (the served name as a
    cached hub id or folder, or ``tokenizer=FOLDER_OR_HUB_ID``): untrusted text is encoded without
    special tokens, which the server's /tokenize cannot do."""
    if preset is None and model is not None:
        preset = infer_preset(model)
    from .models import served_model

    return GuardEvaluator(served_model(base_url, model, **engine_kwargs), preset, scoring=scoring, threshold=threshold)
