"""What ``VLLMEngine`` knows about its server: the served model and the features probed once (frozen
values), and the facts learnt from the server's answers while it runs (one thread-safe object).

- ``ServedModel``: the name, context length and loaded folder ``/v1/models`` reports.
- ``ServerFeatures``: what the probe found (``vllm_probe``): whether answers carry a ``token_ids``
  field, and how option letters are scored. Fixed for the engine's life.
- ``ServerFacts``: what only the answers tell, learnt at most once each and never forgotten:
  the server's ``--max-logprobs`` (from a refusal that names it) and EOS ids the tokenizer does not
  name (a row the server ended at its own EOS). Every request plan reads them; only the named
  ``learn_*`` methods change them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection
from dataclasses import dataclass
from enum import Enum

logger = logging.getLogger(__name__)


class OptionScoring(str, Enum):
    """How ``next_token_logprobs`` reads given tokens' log-probabilities (docs/engines.md)."""

    ALLOWED_TOKEN_IDS = "allowed_token_ids"
    """One request per candidate with ``allowed_token_ids=[candidate]``: exact, over the prefix cache."""
    PROMPT_LOGPROBS = "prompt_logprobs"
    """The prompt with the candidate appended and ``prompt_logprobs``: exact, without the prefix cache."""


@dataclass(frozen=True)
class ServedModel:
    """One model of the server's ``/v1/models``: ``name`` (the served name), ``context_length``
    (``max_model_len``: prompt plus new tokens) and ``root`` (the folder or id it loaded, if said)."""

    name: str
    context_length: int
    root: str | None = None


@dataclass(frozen=True)
class ServerFeatures:
    """What the server supports, as probed when the engine is made (``vllm_probe.probe``).

    ``token_ids_field``: answers carry ``token_ids`` (else the ids are read from the log-probability
    entries, so ``generate`` asks for ``logprobs=0``). ``option_scoring``: how option letters are read.
    """

    token_ids_field: bool = True
    option_scoring: OptionScoring = OptionScoring.ALLOWED_TOKEN_IDS


class ServerFacts:
    """Facts about the server that only its answers tell, shared by every request of one engine.

    ``logprobs_limit``: the server's ``--max-logprobs`` once a refusal named it (None until then);
    plans then ask for at most that many and refuse requests that need more before sending them.
    ``eos_token_ids``: the EOS ids given when the engine was made, plus any id the server was seen
    to end a row with on its own (its generation config names EOS ids the tokenizer may not).
    Thread-safe: many decodes share one engine."""

    def __init__(self, eos_token_ids: Collection[int] = ()) -> None:
        self._lock = threading.Lock()
        self._logprobs_limit: int | None = None
        self._eos = frozenset(int(t) for t in eos_token_ids)

    @property
    def logprobs_limit(self) -> int | None:
        return self._logprobs_limit

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self._eos

    def learn_logprobs_limit(self, limit: int | None) -> None:
        """Remember the ``--max-logprobs`` a refusal named (None: the refusal did not say)."""
        if limit is None:
            return
        with self._lock:
            self._logprobs_limit = int(limit)

    def learn_eos(self, token: int, model: str = "") -> bool:
        """Remember ``token`` as an EOS id (the server ended a row at it on its own); True when new."""
        token = int(token)
        if token in self._eos:
            return False
        with self._lock:
            if token in self._eos:
                return False
            self._eos = self._eos | {token}
        logger.info(
            "%s ended a row at token %d, which the tokenizer does not name as EOS; treating it as one", model, token
        )
        return True
