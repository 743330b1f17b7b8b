"""LlamaIndex adapters for RAIN (``pip install "rain-align[llamaindex]"``).

- ``RainLlamaIndexLLM``: a function-calling LLM over a ``RainDecoder`` (or any
  ``Decoder``: a baseline): ``complete``, ``chat``, their
  streaming and async variants (a cancelled task or abandoned stream stops the decode), and tools
  (``chat_with_tools``, ``FunctionAgent``); usable as ``Settings.llm`` or the ``llm=`` of query and
  chat engines.
- ``RainEmbedding``: a ``BaseEmbedding`` over the packaged all-MiniLM-L6-v2, so a
  ``VectorStoreIndex`` can be built offline.
- ``RainSearchStartEvent``, ``RainCommitEvent``, ``RainSearchEndEvent``: the instrumentation events
  every decode dispatches.

The adapters translate and delegate: messages become RAIN chat messages through
``messages_from_llamaindex``, keyword arguments become ``RainConfig`` overrides, and the
``RainResult`` becomes LlamaIndex responses with the RAIN stats in ``additional_kwargs`` and ``raw``.
"""

from __future__ import annotations

from .._extras import missing

try:
    import llama_index.core  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise missing(
        "rain_integrations.llamaindex needs llama-index-core", "llamaindex", "pip install -e '.[llamaindex]'"
    ) from exc

from .embeddings import DEFAULT_EMBED_MODEL_NAME, RainEmbedding
from .events import RainCommitEvent, RainSearchEndEvent, RainSearchStartEvent
from .llm import RainLlamaIndexLLM
from .messages import messages_from_llamaindex

__all__ = [
    "DEFAULT_EMBED_MODEL_NAME",
    "RainCommitEvent",
    "RainEmbedding",
    "RainLlamaIndexLLM",
    "RainSearchEndEvent",
    "RainSearchStartEvent",
    "messages_from_llamaindex",
]
