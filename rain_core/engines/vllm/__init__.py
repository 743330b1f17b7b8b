"""The vLLM engine: ``VLLMEngine``, the ``LanguageModel`` protocol over a vLLM server's
OpenAI-compatible API (``engine``), and its parts: ``plans`` (request payloads and the reading of
answers), ``answers``, ``http`` (the client, retries and the errors below), ``runner``, ``probe``,
``facts``, ``metrics``, ``stats``, ``tokenizer`` and ``launch`` (a local server for tests and
benchmarks). Importing it needs ``httpx`` (``pip install 'rain-align[vllm]'``), not torch.
"""

from .engine import VLLMEngine
from .http import (
    LogprobsLimitError,
    MissingFeatureError,
    ModelNotServedError,
    ServerError,
    ServerUnreachableError,
)

__all__ = [
    "LogprobsLimitError",
    "MissingFeatureError",
    "ModelNotServedError",
    "ServerError",
    "ServerUnreachableError",
    "VLLMEngine",
]
