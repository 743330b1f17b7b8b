"""Loading models the way users do: any causal LM folder or cached hub id, on CPU, one GPU, or
dispatched across GPUs (``device_map``), quantised or not; and the embedded default model."""

from __future__ import annotations

import logging
import threading
from typing import Any

from .transformers_lm import TransformersLM

logger = logging.getLogger(__name__)

_DTYPES = ("float32", "bfloat16", "float16", "auto")


def _torch_dtype(dtype: Any, device: str | None) -> Any:
    import torch

    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if dtype is None:
        on_cpu = device is None or str(device).startswith("cpu")
        return torch.float32 if on_cpu else torch.bfloat16
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)} or a torch.dtype")
    return value


def _is_placed(model: Any) -> bool:
    """Whether transformers already placed the model's weights itself (dispatched across devices with
    ``device_map``, or quantised, e.g. bitsandbytes): such a model must not be moved."""
    return bool(
        getattr(model, "hf_device_map", None)
        or getattr(model, "is_quantized", False)
        or getattr(model, "is_loaded_in_8bit", False)
        or getattr(model, "is_loaded_in_4bit", False)
        or getattr(model, "quantization_method", None)
    )


def load_model(
    name_or_path: str,
    *,
    device: str | None = None,
    device_map: Any = None,
    dtype: Any = None,
    quantization_config: Any = None,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    gguf_file: str | None = None,
    tokenizer: Any = None,
    reuse_cache: bool = True,
    batch: bool = True,
    cache_bytes: int | None = None,
    small_batch_matmul: bool = True,
    **model_kwargs: Any,
) -> TransformersLM:
    """Load a causal LM and its tokenizer (a local folder, or a hub id already in the local cache)
    as a ``TransformersLM``. Model options pass through to ``AutoModelForCausalLM.from_pretrained``.

    ``device``: "cpu", "cuda", "cuda:1", ... for a model on one device (default: cuda when available).
    ``device_map``: e.g. "auto" or "cuda" to let transformers/accelerate place the weights (across
    GPUs for a big model); ``quantization_config``: e.g. ``BitsAndBytesConfig(load_in_4bit=True)``.
    A model placed by either is never moved afterwards. ``dtype``: "float32", "bfloat16",
    "float16", "auto" or a ``torch.dtype`` (default: float32 on CPU, bfloat16 on a GPU).
    ``tokenizer``: a ready tokenizer (default: the folder's). The remaining options are the engine's
    (see ``TransformersLM``).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ValueError("load_model needs a model folder or hub id as a non-empty string")
    if device is not None and device_map is not None:
        raise ValueError("pass either device (one device) or device_map (let transformers place the model), not both")
    if device is None and device_map is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    placed_by_transformers = device_map is not None or quantization_config is not None
    target = device if device is not None else (device_map if isinstance(device_map, str) else "cuda")
    kwargs: dict[str, Any] = dict(model_kwargs)
    kwargs["dtype"] = _torch_dtype(dtype, None if target == "auto" else target)
    if device_map is not None:
        kwargs["device_map"] = device_map
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
        if device_map is None and device is not None:
            kwargs["device_map"] = device  # quantised weights are created in place
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if trust_remote_code:
        kwargs["trust_remote_code"] = True
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **extra)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, **extra, **kwargs)
    if not placed_by_transformers and not _is_placed(model):
        model.to(str(device))  # type: ignore[arg-type]  # transformers' stub types .to() narrowly
    else:
        logger.info(
            "%s was placed by transformers (%s); not moving it",
            name_or_path,
            getattr(model, "hf_device_map", None) or "quantised",
        )
    return TransformersLM(
        model,
        tokenizer,
        name=name_or_path,
        reuse_cache=reuse_cache,
        batch=batch,
        cache_bytes=cache_bytes,
        small_batch_matmul=small_batch_matmul,
    )


def load_default_model(**kwargs: Any) -> TransformersLM:
    """The embedded SmolLM2-135M-Instruct, offline (materialised once into the user cache).
    ``kwargs`` are ``load_model``'s (default ``device="cpu"``)."""
    from .embedded import DEFAULT_MODEL_NAME, materialize_default_model

    folder = materialize_default_model()
    if "device_map" not in kwargs:
        kwargs.setdefault("device", "cpu")
    lm = load_model(str(folder), **kwargs)
    lm.name = DEFAULT_MODEL_NAME
    return lm


_SHARED_DEFAULT: TransformersLM | None = None
_SHARED_LOCK = threading.Lock()


def shared_default_model() -> TransformersLM:
    """The embedded model, loaded once per process and shared by every caller (the adapters'
    ``from_default()`` constructors use it, so LangChain and LlamaIndex share one copy)."""
    global _SHARED_DEFAULT
    with _SHARED_LOCK:
        if _SHARED_DEFAULT is None:
            _SHARED_DEFAULT = load_default_model()
        return _SHARED_DEFAULT
