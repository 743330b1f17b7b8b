"""``load_model``'s checks without loading: where a model is (a folder, or a hub id in the local
cache), that it is a causal language model (its configuration only), and that the device exists and
runs the dtype. A command line that names several models (a generator, a judge, a guard) checks
them all with these before the first one loads, so a missing guard is reported before the
generator's weights have been read."""

from __future__ import annotations

from typing import Any

__all__ = ["check_device", "check_model_source"]


def check_model_source(name_or_path: str, *, gguf_file: str | None = None, **hub_options: Any) -> None:
    """Raise what ``load_model(name_or_path, gguf_file=...)`` would raise before loading weights:
    ``ModelNotFoundError`` for a missing folder or a hub id not in the local cache,
    ``UnsupportedModelError`` for a folder that holds no causal language model. ``hub_options``:
    ``cache_dir``, ``revision``."""
    from ..engines.transformers import loading

    where, _ = loading._resolve(str(name_or_path), gguf_file, dict(hub_options))
    loading._check_causal(where, gguf_file, False, dict(hub_options))


def check_device(device: str | None = None, dtype: str | None = None) -> None:
    """Raise the ``ValueError`` ``load_model(..., device=device, dtype=dtype)`` would: an unknown dtype,
    a device this machine does not have, a dtype the device cannot run."""
    from ..engines.transformers import threads

    threads.prepare()  # the CPU threads chosen before torch starts its pool (done once per process)
    import torch

    from ..engines.transformers import loading

    torch_dtype = loading._torch_dtype(dtype)
    dev = loading._check_device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if torch_dtype is None:
        torch_dtype = loading._default_dtype([dev])
    loading._check_dtype_runs(torch_dtype, [dev])
