"""The baselines RAIN is measured against, as decoders users can pick: best-of-N, generate-check-
retry and blockwise best-of-K. Each takes what ``RainDecoder`` takes (a model, an evaluator, the
``RainConfig`` limits, seeds, stop strings, a deadline, a cancel) and goes where it goes (the
``Decoder`` protocol: ``ChatRain(decoder=...)``, ``RainLlamaIndexLLM(decoder)``, ``rain generate
--method ...``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Union

from ..config import RainConfig
from ..protocols import Evaluator, LanguageModel
from . import methods
from .base import BaselineDecoder, check_count, check_threshold
from .run import BaselineRun, Steps

__all__ = ["DEFAULT_REFUSAL", "BestOfNDecoder", "BlockwiseBestOfKDecoder", "CheckRetryDecoder"]

DEFAULT_REFUSAL = "I can't help with that."
"""What ``CheckRetryDecoder`` answers when the evaluator rejected every try."""

Judge = Union[Evaluator, Callable[[str, str], float], None]  # noqa: UP007 (a runtime alias)


class BestOfNDecoder(BaselineDecoder):
    """Sample ``n`` answers and keep the one the evaluator scores highest.

    The ``n`` answers are the rows of one generation request (one model call: ``generate_batch`` on
    an engine that batches, a forward pass over all rows at once in process, one round of requests
    on a server), each sampled as plain decoding samples with its own seed (the first row with the
    decode's seed: it is plain decoding's answer); their texts are scored in one evaluator call
    (``score_batch``). Ties go to the earliest row. A stream hands the answer out once it is chosen.

    >>> from rain_core import load_default_model
    >>> from rain_core.baselines import BestOfNDecoder
    >>> dec = BestOfNDecoder(load_default_model(), lambda prompt, reply: -len(reply) / 1000, n=4, max_new_tokens=8)
    >>> result = dec.generate("Name a fruit.")
    >>> result.stats["model_calls"], result.stats["evaluator_calls"], len(result.stats["scores"])
    (1, 1, 4)
    """

    method = "best-of-n"

    def __init__(
        self,
        lm: LanguageModel,
        evaluator: Judge = None,
        n: int = 4,
        *,
        config: RainConfig | None = None,
        **overrides: Any,
    ) -> None:
        self.n = check_count("n", n)
        super().__init__(lm, evaluator, config=config, **overrides)

    def describe(self) -> str:
        return f"best-of-n (n={self.n})"

    def _steps(self, run: BaselineRun) -> Steps:
        return methods.best_of_n(run, self.n)


class CheckRetryDecoder(BaselineDecoder):
    """Generate, check, regenerate: the first answer the evaluator approves (score above
    ``threshold``), sampling up to ``max_tries`` answers in all (the first is plain decoding's); when
    every one was rejected, ``refusal`` (``finish_reason == "refused"``: a fixed text, returned whole,
    not generated). The pattern of NeMo Guardrails' output rails. Each try costs one model call and
    one evaluator call; a stream hands the answer out once it is approved.

    >>> from rain_core import load_default_model
    >>> from rain_core.baselines import CheckRetryDecoder
    >>> dec = CheckRetryDecoder(load_default_model(), lambda prompt, reply: -1.0, max_tries=2, max_new_tokens=8)
    >>> result = dec.generate("Name a fruit.")
    >>> result.text, result.finish_reason, result.stats["tries"], result.stats["model_calls"]
    ("I can't help with that.", 'refused', 2, 2)
    """

    method = "check-retry"

    def __init__(
        self,
        lm: LanguageModel,
        evaluator: Judge = None,
        max_tries: int = 3,
        threshold: float = 0.0,
        refusal: str = DEFAULT_REFUSAL,
        *,
        config: RainConfig | None = None,
        **overrides: Any,
    ) -> None:
        self.max_tries = check_count("max_tries", max_tries)
        self.threshold = check_threshold(threshold)
        if not isinstance(refusal, str) or not refusal.strip():
            raise ValueError(f"refusal must be a non-empty text, got {refusal!r}")
        self.refusal = refusal
        super().__init__(lm, evaluator, config=config, **overrides)
        self._refusal_ids = tuple(lm.encode(refusal, parse_special=False))

    def describe(self) -> str:
        return f"check-retry (max_tries={self.max_tries}, threshold={self.threshold:g})"

    def _steps(self, run: BaselineRun) -> Steps:
        return methods.check_retry(run, self.max_tries, self.threshold, self._refusal_ids)


class BlockwiseBestOfKDecoder(BaselineDecoder):
    """Blockwise best-of-K (controlled decoding's strongest baseline, Mudgal et al. 2024): ``k``
    continuations of ``block_tokens`` tokens from the answer so far, in one model call; each scored
    as the answer so far plus that block (a partial answer, as RAIN's evaluator sees them), in one
    evaluator call; the best block is kept and streamed at once, and the next block continues from
    it, until EOS, a stop string or the token budget. Ties go to the earliest row.

    >>> from rain_core import load_default_model
    >>> from rain_core.baselines import BlockwiseBestOfKDecoder
    >>> dec = BlockwiseBestOfKDecoder(load_default_model(), lambda p, r: 1.0, k=2, block_tokens=4, max_new_tokens=8)
    >>> result = dec.generate("Name three fruits.")
    >>> result.stats["model_calls"] == result.stats["blocks"] == len(result.stats["commit_log"]) <= 2
    True
    """

    method = "blockwise"

    def __init__(
        self,
        lm: LanguageModel,
        evaluator: Judge = None,
        k: int = 4,
        block_tokens: int = 8,
        *,
        config: RainConfig | None = None,
        **overrides: Any,
    ) -> None:
        self.k = check_count("k", k)
        self.block_tokens = check_count("block_tokens", block_tokens, 1, 4096)
        super().__init__(lm, evaluator, config=config, **overrides)

    def describe(self) -> str:
        return f"blockwise best-of-k (k={self.k}, block_tokens={self.block_tokens})"

    def _steps(self, run: BaselineRun) -> Steps:
        return methods.blockwise(run, self.k, self.block_tokens)
