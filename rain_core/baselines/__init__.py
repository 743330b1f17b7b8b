"""Baselines next to RAIN, as decoders users can pick: each takes the same model, evaluator, limits,
seeds, stop strings, deadline and cancel as ``RainDecoder``, reports the same statistics (model
calls, evaluations, tokens, seconds, the engine's counters) and goes wherever a ``Decoder`` goes
(``ChatRain(decoder=...)``, ``RainLlamaIndexLLM(decoder)``, ``rain generate --method ...``).

- ``PlainDecoder``: plain decoding, unchecked (one model call).
- ``BestOfNDecoder(lm, evaluator, n)``: ``n`` samples as rows of one generation, scored in one
  ``score_batch``; the best one wins.
- ``CheckRetryDecoder(lm, evaluator, max_tries, threshold, refusal)``: generate, check, regenerate up
  to ``max_tries`` answers, then the refusal.
- ``BlockwiseBestOfKDecoder(lm, evaluator, k, block_tokens)``: the best of ``k`` blocks, block by block.
- ``EscalatingDecoder(lm, evaluator, retries=0, ...)``: plain decoding checked once; RAIN only when
  the evaluator rejects it.
- ``make_decoder(method, lm, evaluator, config, **options)``: any of them (or RAIN) by name.

``rain bench quality --methods ...`` measures them beside RAIN at equal compute (docs/quality.md).
"""

from typing import TYPE_CHECKING

from .base import SHARED_FIELDS, BaselineDecoder, PlainDecoder
from .decoders import DEFAULT_REFUSAL, BestOfNDecoder, BlockwiseBestOfKDecoder, CheckRetryDecoder
from .escalating import EscalatingDecoder
from .named import METHODS, make_decoder

__all__ = [
    "DEFAULT_REFUSAL",
    "METHODS",
    "SHARED_FIELDS",
    "BaselineDecoder",
    "BestOfNDecoder",
    "BlockwiseBestOfKDecoder",
    "CheckRetryDecoder",
    "EscalatingDecoder",
    "PlainDecoder",
    "make_decoder",
]

if TYPE_CHECKING:  # every decoder is a Decoder (checked by mypy)
    from ..decoder import RainDecoder
    from ..decoding import Decoder

    _DECODERS: tuple[type[Decoder], ...] = (
        RainDecoder,
        PlainDecoder,
        BestOfNDecoder,
        CheckRetryDecoder,
        BlockwiseBestOfKDecoder,
        EscalatingDecoder,
    )
