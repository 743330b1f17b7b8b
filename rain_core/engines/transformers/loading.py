"""Loading a transformers causal LM the way users do: any folder or cached hub id, on CPU, one GPU,
or dispatched across GPUs (``device_map``), quantised or not, as a ``TransformersLM``. Users call it
as ``rain_core.load_model`` (``rain_core.loaders``).

Every option is checked before any weights load: the dtype's name, the device (and that the dtype
runs on it), device versus device_map, the path (or that the hub id is in the local cache), GGUF
files, and that the configuration is a causal language model's. Each failure names the problem and
the fix: ``ModelNotFoundError`` (a ``FileNotFoundError``) for a folder or cached hub id that is not
there, ``UnsupportedModelError`` (a ``ValueError``) for a model rain cannot run, ``ValueError`` for a
bad option.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from .lm import TransformersLM

logger = logging.getLogger(__name__)

_DTYPES = ("float32", "bfloat16", "float16", "auto")
# device_map values that let accelerate spread the weights over every visible GPU (then CPU)
_SPREADING_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
# architecture names that carry a next-token head (transformers' causal LM classes end so)
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


class ModelNotFoundError(FileNotFoundError):
    """The model folder does not exist, or a hub id is not in the local cache."""


class UnsupportedModelError(ValueError):
    """The folder or file is not a causal language model that rain can load as it was given."""


# --- options ----------------------------------------------------------------------------------------
def _torch_dtype(dtype: Any) -> Any:
    """``dtype`` as a floating ``torch.dtype``, ``"auto"``, or None (the default, chosen per device)."""
    import torch

    if dtype is None or dtype == "auto":
        return dtype
    value: Any = None
    if isinstance(dtype, torch.dtype):
        value = dtype
    elif isinstance(dtype, str):
        value = getattr(torch, dtype.strip(), None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)} or a floating torch.dtype")
    return value


def _check_device(device: Any) -> Any:
    """``device`` as a ``torch.device`` that exists on this machine."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {device!r}; use cpu, cuda, cuda:1, mps, ...") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {device!r} asks for a GPU, but PyTorch sees no CUDA device here; use device='cpu', or "
                "install a CUDA build of PyTorch on a machine with an NVIDIA GPU"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device {device!r} does not exist: this machine has {count} CUDA device(s), cuda:0 on")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} is not available here; use device='cpu'")
    return dev


def _map_devices(device_map: Any) -> list[Any]:
    """The devices a ``device_map`` puts weights on (for the dtype default and the dtype check)."""
    import torch

    if isinstance(device_map, str) and device_map in _SPREADING_MAPS:
        if torch.cuda.is_available():
            return [torch.device("cuda", 0)]
        if torch.backends.mps.is_available():
            return [torch.device("mps")]
        return [torch.device("cpu")]
    if isinstance(device_map, (str, int, torch.device)):
        return [_check_device(device_map)]
    if isinstance(device_map, dict):
        if not device_map:
            raise ValueError("device_map is an empty dict; map module names to devices, or use device_map='auto'")
        places = {v for v in device_map.values() if v != "disk"}
        return [_check_device(v) for v in sorted(places, key=str)] or [torch.device("cpu")]
    raise ValueError(
        f"device_map must be 'auto', a device name such as 'cuda:0', or a dict of module names to devices, "
        f"got {type(device_map).__name__}"
    )


def _default_dtype(devices: list[Any]) -> Any:
    """float32 on CPU; bfloat16 on a GPU that runs it (float16 on one that does not)."""
    import torch

    kinds = {d.type for d in devices}
    if "cuda" in kinds:
        return torch.bfloat16 if _bf16_on_cuda() else torch.float16
    if "mps" in kinds:
        return torch.float16
    return torch.float32


def _bf16_on_cuda() -> bool:
    import torch

    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch before the keyword
        return bool(torch.cuda.is_bf16_supported())


def dtype_runs_on(dtype: Any, device: Any) -> bool:
    """Whether ``device`` runs a model's arithmetic in ``dtype``: a matrix product, a softmax and a
    layer norm on a few numbers there (and, on CUDA, bfloat16 in hardware)."""
    import torch

    if dtype == torch.float32:
        return True
    dev = torch.device(device)
    if dev.type == "cuda" and dtype == torch.bfloat16 and not _bf16_on_cuda():
        return False
    try:
        x = torch.ones(4, 4, dtype=dtype, device=dev)
        y = torch.nn.functional.layer_norm(torch.softmax(x @ x, dim=-1), (4,))
        return bool(torch.isfinite(y.float()).all())
    except (RuntimeError, TypeError, NotImplementedError):
        return False


def _check_dtype_runs(dtype: Any, devices: list[Any]) -> None:
    import torch

    if not isinstance(dtype, torch.dtype):
        return
    name = str(dtype).removeprefix("torch.")
    for dev in devices:
        if not dtype_runs_on(dtype, dev):
            fix = "dtype='float32'" if dev.type == "cpu" else "dtype='float16' (or 'float32')"
            raise ValueError(f"{dev} cannot run {name} here; pass {fix}")


def _check_engine_options(
    cache_bytes: Any, flags: dict[str, Any], gguf_file: Any, attn_implementation: Any, tokenizer: Any
) -> None:
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, got {value!r}")
    if cache_bytes is not None and (
        isinstance(cache_bytes, bool) or not isinstance(cache_bytes, int) or cache_bytes < 0
    ):
        raise ValueError(
            f"cache_bytes must be a whole number of bytes >= 0 (or None for the default), got {cache_bytes!r}"
        )
    if gguf_file is not None and (not isinstance(gguf_file, str) or not gguf_file.strip()):
        raise ValueError(f"gguf_file must be the name of a .gguf file, got {gguf_file!r}")
    if attn_implementation is not None and not isinstance(attn_implementation, str):
        raise ValueError(f"attn_implementation must be a string such as 'sdpa' or 'eager', got {attn_implementation!r}")
    if isinstance(tokenizer, (str, os.PathLike)):
        raise ValueError("tokenizer must be a ready tokenizer object (default: the model folder's own), not a path")


# --- where the model is -----------------------------------------------------------------------------
def _looks_like_path(name: str) -> bool:
    """A name that can only be a path (a hub id is ``name`` or ``owner/name``)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id  # type: ignore[attr-defined]

    if name.startswith((".", "~", "/")) or name.endswith("/"):
        return True
    try:
        validate_repo_id(name)
    except HFValidationError:
        return True
    return False


def _hub_hint(repo_id: str) -> str:
    return (
        f"to get it there, run `hf download {repo_id}` (here, or on a machine with internet and copy its "
        "~/.cache/huggingface/hub over), or copy the model's folder here and pass its path; "
        "local_files_only=False lets transformers download it as it loads"
    )


def _resolve(name: str, gguf_file: str | None, model_kwargs: dict[str, Any]) -> tuple[str, bool]:
    """``(where, is_folder)``: a local folder (checked), or a hub id found in the local cache."""
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            raise UnsupportedModelError(
                f"{name} is a GGUF file; pass its folder and the file's name: "
                f"load_model({str(path.parent)!r}, gguf_file={path.name!r})"
            )
        raise UnsupportedModelError(f"{name} is a file; pass the model's folder (the one holding config.json)")
    if path.is_dir():
        if gguf_file is not None:
            if not (path / gguf_file).is_file():
                found = sorted(p.name for p in path.glob("*.gguf"))
                raise ModelNotFoundError(
                    f"{path} holds no {gguf_file!r}; GGUF files there: {', '.join(found) or 'none'}"
                )
        elif not (path / "config.json").is_file():
            ggufs = sorted(p.name for p in path.glob("*.gguf"))
            if ggufs:
                raise UnsupportedModelError(
                    f"{path} holds GGUF weights ({', '.join(ggufs)}) and no config.json; pass gguf_file={ggufs[0]!r}"
                )
            raise UnsupportedModelError(
                f"{path} holds no config.json: it is not a transformers model folder (save one with "
                "model.save_pretrained(folder), or pass the folder that holds config.json)"
            )
        return str(path), True
    if _looks_like_path(name):
        raise ModelNotFoundError(f"the model folder {str(path.absolute())!r} does not exist; check the path")
    if model_kwargs.get("local_files_only", True) is False:
        return name, False
    from huggingface_hub import try_to_load_from_cache

    wanted = gguf_file or "config.json"
    hit = try_to_load_from_cache(
        name, wanted, cache_dir=model_kwargs.get("cache_dir"), revision=model_kwargs.get("revision")
    )
    if not isinstance(hit, str):
        raise ModelNotFoundError(
            f"{name!r} is not a folder here, and the hub id {name!r} is not in the local Hugging Face cache "
            f"(no {wanted} of it); {_hub_hint(name)}"
        )
    return name, False


def _check_causal(where: str, gguf_file: str | None, trust_remote_code: bool, model_kwargs: dict[str, Any]) -> None:
    """The configuration (no weights) must be a causal language model's."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    options: dict[str, Any] = {
        k: model_kwargs[k] for k in ("cache_dir", "revision", "local_files_only") if k in model_kwargs
    }
    options.setdefault("local_files_only", True)
    if gguf_file:
        options["gguf_file"] = gguf_file
    try:
        config = AutoConfig.from_pretrained(where, trust_remote_code=trust_remote_code, **options)
    except (OSError, ValueError, KeyError) as exc:
        raise UnsupportedModelError(f"cannot read the configuration of {where}: {exc}") from exc
    if "AutoModelForCausalLM" in (getattr(config, "auto_map", None) or {}):
        return
    kind = getattr(config, "model_type", type(config).__name__)
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise UnsupportedModelError(
            f"{where} is a {kind!r} model, which is not a causal (next-token) language model; rain needs one, "
            "such as a Llama, Qwen, Mistral, Gemma or SmolLM checkpoint"
        )
    causal: set[str] = set()
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        causal.update([value] if isinstance(value, str) else value)
    architectures = list(getattr(config, "architectures", None) or [])
    if architectures and not any(a in causal or a.endswith(_CAUSAL_SUFFIXES) for a in architectures):
        raise UnsupportedModelError(
            f"{where} holds a {', '.join(architectures)} (a {kind!r} model without a next-token head), not a "
            "causal language model; rain needs one, such as a Llama, Qwen, Mistral, Gemma or SmolLM checkpoint"
        )


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
    name: str | None = None,
    **model_kwargs: Any,
) -> TransformersLM:
    """Load a causal LM and its tokenizer (a local folder, or a hub id already in the local cache;
    ``local_files_only=False`` lets transformers download it) as a ``TransformersLM``. Model options
    pass through to ``AutoModelForCausalLM.from_pretrained``; all are checked before any weights load.

    ``device``: "cpu", "cuda", "cuda:1", ... for a model on one device (default: cuda when available);
    the weights load straight onto it. ``device_map``: e.g. "auto" or "cuda" to let
    transformers/accelerate place the weights (across GPUs for a big model); ``quantization_config``:
    e.g. ``BitsAndBytesConfig(load_in_4bit=True)``. A model placed by either is never moved afterwards.
    ``dtype``: "float32", "bfloat16", "float16", "auto" (the checkpoint's) or a ``torch.dtype``
    (default: float32 on CPU, bfloat16 when any weights go to a GPU, float16 on a GPU without bfloat16).
    ``gguf_file``: the name of a .gguf file in the folder (or hub repository) to load (dequantised).
    ``tokenizer``: a ready tokenizer (default: the folder's). ``name``: the model's name in results and
    logs (default: ``name_or_path``). The remaining options are the engine's (see ``TransformersLM``).

    Raises ``ModelNotFoundError`` (a missing folder, a hub id not in the local cache),
    ``UnsupportedModelError`` (not a causal LM, a GGUF file without ``gguf_file``) or ``ValueError``
    (a bad option, a dtype the device cannot run), each before any weights load.
    """
    import torch

    from . import threads

    threads.settle()  # torch is imported: the thread count chosen for this machine, pinned
    # --- every option first: nothing below loads weights until all are known good
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path).strip():
        raise ValueError("load_model needs a model folder or hub id as a non-empty string")
    source = str(name_or_path)
    if device is not None and device_map is not None:
        raise ValueError("pass either device (one device) or device_map (let transformers place the model), not both")
    _check_engine_options(
        cache_bytes,
        {
            "reuse_cache": reuse_cache,
            "batch": batch,
            "small_batch_matmul": small_batch_matmul,
            "trust_remote_code": trust_remote_code,
        },
        gguf_file,
        attn_implementation,
        tokenizer,
    )
    torch_dtype = _torch_dtype(dtype)
    if device_map is not None:
        devices = _map_devices(device_map)
        one_device = None
    else:
        one_device = _check_device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        devices = [one_device]
    if torch_dtype is None:
        torch_dtype = _default_dtype(devices)
    _check_dtype_runs(torch_dtype, devices)
    where, is_folder = _resolve(source, gguf_file, model_kwargs)
    _check_causal(where, gguf_file, trust_remote_code, model_kwargs)

    # --- then the tokenizer and the weights
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = dict(model_kwargs)
    if not is_folder:
        kwargs.setdefault("local_files_only", True)
    kwargs["dtype"] = torch_dtype
    if device_map is not None:
        kwargs["device_map"] = device_map
    elif one_device is not None and (one_device.type != "cpu" or quantization_config is not None):
        # onto the device as the weights load (no copy on the CPU first); quantised weights are made in place
        kwargs["device_map"] = str(device if device is not None else one_device)
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if trust_remote_code:
        kwargs["trust_remote_code"] = True
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    if tokenizer is None:
        hub = {k: kwargs[k] for k in ("cache_dir", "revision", "local_files_only") if k in kwargs}
        tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code, **hub, **extra)
    model = AutoModelForCausalLM.from_pretrained(where, **extra, **kwargs)
    if "device_map" not in kwargs and not _is_placed(model):
        model.to(str(one_device))  # type: ignore[arg-type]  # transformers' stub types .to() narrowly
    else:
        logger.info(
            "%s was placed by transformers as it loaded (%s); not moving it",
            source,
            getattr(model, "hf_device_map", None) or kwargs.get("device_map") or "quantised",
        )
    return TransformersLM(
        model,
        tokenizer,
        name=name or str(name_or_path),
        reuse_cache=reuse_cache,
        batch=batch,
        cache_bytes=cache_bytes,
        small_batch_matmul=small_batch_matmul,
    )
