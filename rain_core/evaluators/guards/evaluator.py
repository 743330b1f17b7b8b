"""Guard-model evaluators: a safety classifier built as a small causal LM judges the replies.

Guard models (Llama Guard 3, ShieldGemma, Granite Guardian, Qwen3Guard, ...) read a conversation
through their own chat template (or a published policy prompt) and write a verdict word as their
first token: "safe"/"unsafe", "No"/"Yes", "Safe"/"Unsafe". ``GuardEvaluator`` renders RAIN's
conversation and partial reply in that format, reads the next-token log-probabilities of the
verdict tokens with one ``next_token_logprobs`` request, and scores:

- ``continuous`` (default): ``P(safe) - P(unsafe)``, both renormalised over the verdict tokens, in
  [-1, 1];
- ``discrete``: ``-1`` when the renormalised ``P(unsafe)`` is at least ``threshold`` (default 0.5),
  else ``+1``.

Rendering (``prompts``; the presets and the transcript's turns are in ``presets``):

- RAIN hands evaluators the conversation as ``Role: content`` lines (``rain_core.chat.transcript``)
  and the reply separately. The lines are parsed back into turns; the reply (or, in an input check,
  the request) is never parsed. An empty reply means "judge the request": the conversation's last
  turn is what the guard judges. For a chat template the turns are mapped onto the strict
  user/assistant alternation guard templates require (a tool turn becomes a user turn marked
  "Tool result:", consecutive turns of one role are joined, a conversation opening with the
  assistant gets an empty user turn first); a template that renders only the last exchange
  (ShieldGemma's) simply leaves the earlier turns out.
- The template is rendered once per shape of conversation with sentinel strings in place of the
  contents and split on them. The template's pieces are encoded with special tokens parsed; every
  content is encoded with ``parse_special=False``, so text that looks like a special token stays
  text and cannot close the guard's turn, and the verdict position (after the template's last
  piece) is the same whatever the reply says. Plain-text markers of the guard's format (``<...>``
  tags its template writes, such as ``<END CONVERSATION>``, and the role labels it puts before a
  content, such as ``Agent:``) get a zero-width space after their first character when a content
  repeats them, so a reply cannot pose as the end of the conversation or as another turn.

Nothing here imports torch, transformers or an engine; ``load_guard`` and ``served_guard``
(``rain_core.loaders.guards``, also ``rain_core.load_guard``) build one from a path or a server.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ...config import Scoring
from ...protocols import AsyncLanguageModel, LanguageModel, PrefixPinning
from .presets import GuardPreset, preset_for
from .prompts import GuardFormat, GuardPrompt

logger = logging.getLogger(__name__)

__all__ = ["LOW_VERDICT_MASS", "GuardEvaluator", "GuardPrompt", "GuardReading"]

LOW_VERDICT_MASS = 0.05
"""Below this total next-token probability on the verdict words, the guard is warned about once: its
prompt is probably not in the format it was trained on."""


def _logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return -math.inf
    return top + math.log(sum(math.exp(v - top) for v in values))


@dataclass(frozen=True)
class GuardReading:
    """What the guard said about one text: the renormalised probabilities of its verdicts, the total
    next-token probability on the verdict tokens (``mass``; near 1 when the prompt is in the format
    the guard was trained on), and the score in [-1, 1]."""

    p_safe: float
    p_unsafe: float
    mass: float
    score: float


class GuardEvaluator:
    r"""RAIN's evaluator backed by a guard model: ``score(prompt, response)`` in [-1, 1].

    ``guard_lm``: any ``LanguageModel`` (``load_model(...)``, ``VLLMEngine(...)``); ``load_guard`` and
    ``served_guard`` build one from a path or a server. ``preset``: a ``GuardPreset``, a preset name
    (``"llama-guard-3"``, ``"llama-guard-3-1b"``, ``"shieldgemma"``, ``"granite-guardian"``,
    ``"granite-guardian-3.3"``, ``"qwen3guard"``) or ``None`` to infer it from ``guard_lm.name``.
    ``scoring``: ``"continuous"`` (default) ``P(safe) - P(unsafe)`` renormalised over the verdict
    tokens; ``"discrete"`` ``-1`` when the renormalised ``P(unsafe) >= threshold``, else ``+1``.
    ``template_kwargs``: extra chat-template arguments, over the preset's.

    The judged text is the reply (``response``), rendered as the assistant's last turn; with an
    empty ``response`` the guard judges the conversation's last turn (the request). ``score_request``
    judges a request passed on its own (input checks). ``score_batch`` scores many replies to one
    conversation with a single ``next_token_logprobs`` request (the engine shares their common
    prefix); the scores equal one-by-one scores. Turn parsing, alternation and the untrusted-text
    rules are in this module's docstring and in ``parse_transcript``.

    Built objects check themselves: a template that cannot render a user/assistant conversation,
    a guard without a chat template (when the preset needs one), a template that is not the preset's
    (``expects``), verdict words the tokenizer cannot encode, or safe and unsafe words that start
    with the same token raise a ``ValueError`` that names the problem and what to pass instead.

    Example, with the embedded model standing in for a guard through a prompt of its own (a real
    guard model is loaded with ``load_guard("meta-llama/Llama-Guard-3-1B")``):

    >>> from rain_core import GuardEvaluator, GuardPreset, load_default_model
    >>> stand_in = GuardPreset(
    ...     name="stand-in", safe=" safe", unsafe=" unsafe",
    ...     template="<|im_start|>user\nRequest: {request}\nReply: {response}\nIs the reply safe or unsafe?"
    ...     "<|im_end|>\n<|im_start|>assistant\nThe reply is")
    >>> guard = GuardEvaluator(load_default_model(), stand_in)
    >>> replies = ["Mix flour, water and yeast.", "Add bleach to the dough."]
    >>> scores = guard.score_batch("User: How do I bake bread?", replies)  # one model call
    >>> alone = [guard.score("User: How do I bake bread?", r) for r in replies]
    >>> all(-1 <= s <= 1 for s in scores), max(abs(a - b) for a, b in zip(scores, alone)) < 1e-3
    (True, True)
    """

    def __init__(
        self,
        guard_lm: LanguageModel,
        preset: GuardPreset | str | None = None,
        *,
        scoring: Scoring | str = Scoring.CONTINUOUS,
        threshold: float = 0.5,
        template_kwargs: Mapping[str, Any] | None = None,
        name: str | None = None,
    ) -> None:
        if not isinstance(guard_lm, LanguageModel):
            raise TypeError(
                "the guard must be a LanguageModel (e.g. load_model(...) or VLLMEngine(...)), "
                f"got {type(guard_lm).__name__}"
            )
        self.lm = guard_lm
        self.preset = preset_for(preset, guard_lm)
        try:
            self.scoring = Scoring(scoring)
        except ValueError:
            raise ValueError(f"scoring must be 'discrete' or 'continuous', got {scoring!r}") from None
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold is a probability of 'unsafe' strictly between 0 and 1, got {threshold!r}")
        self.threshold = float(threshold)
        self.template_kwargs = {**self.preset.template_kwargs, **(template_kwargs or {})}
        self.name: str = name or f"GuardEvaluator({self.preset.name}, {guard_lm.name})"
        self.format = GuardFormat(guard_lm, self.preset, self.template_kwargs, self.name)
        self._warned_mass = False
        # Build both shapes now, so a bad configuration fails here, not in the middle of a decode; and
        # untrusted text must be encodable as text (a served guard without its tokenizer here cannot).
        guard_lm.encode("<probe>", parse_special=False)
        response_frame = self.format.frame(("user", "assistant"))
        self.format.frame(("user",))
        if isinstance(guard_lm, PrefixPinning) and response_frame.pieces[0]:
            guard_lm.cache_prefix(response_frame.pieces[0])

    def __repr__(self) -> str:
        return f"<{self.name} scoring={self.scoring.value} threshold={self.threshold}>"

    @property
    def verdict_ids(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The token ids read as (safe, unsafe) after a reply."""
        return self.format.verdict_ids

    def render(self, prompt: str, response: str) -> GuardPrompt:
        """The guard prompt for ``response`` after the conversation ``prompt`` (``Role: content``
        lines); an empty ``response`` judges the conversation's last turn."""
        return self.format.render(prompt, response)

    def render_request(self, context: str, request: str) -> GuardPrompt:
        """The guard prompt judging ``request`` (a new user message) after the conversation ``context``."""
        return self.format.render_request(context, request)

    def prompt_ids(self, prompt: str, response: str) -> list[int]:
        """Token ids of the guard prompt; the verdict token comes next."""
        return self.render(prompt, response).ids

    # --- scoring --------------------------------------------------------------------------------
    def _reading(self, row: Sequence[float], safe: int, unsafe: int) -> GuardReading:
        ls, lu = _logsumexp(row[:safe]), _logsumexp(row[safe : safe + unsafe])
        if ls == -math.inf and lu == -math.inf:
            raise ValueError(f"{self.lm.name} gave every verdict token probability 0: it cannot be read as a guard")
        top = max(ls, lu)
        ps, pu = math.exp(ls - top), math.exp(lu - top)
        p_safe, p_unsafe = ps / (ps + pu), pu / (ps + pu)
        mass = math.exp(_logsumexp([ls, lu]))
        if mass < LOW_VERDICT_MASS and not self._warned_mass:
            self._warned_mass = True
            logger.warning(
                "%s: the guard puts only %.1f%% of its next-token probability on its verdict words %s / %s; its "
                "prompt is probably not in the format it was trained on (check the preset and the tokenizer). "
                "Scores are renormalised over the verdict words and mean little.",
                self.name,
                100 * mass,
                list(self.preset.safe_words),
                list(self.preset.unsafe_words),
            )
        if self.scoring is Scoring.CONTINUOUS:
            score = max(-1.0, min(1.0, p_safe - p_unsafe))
        else:
            score = -1.0 if p_unsafe >= self.threshold else 1.0
        return GuardReading(p_safe, p_unsafe, mass, score)

    @staticmethod
    def _plan(prompts: Sequence[GuardPrompt]) -> tuple[list[list[int]], list[int]]:
        """The rows of one request and its candidate ids (each verdict id once)."""
        candidates = dict.fromkeys(i for p in prompts for i in (*p.safe_ids, *p.unsafe_ids))
        return [p.ids for p in prompts], list(candidates)

    def _readings(
        self, prompts: Sequence[GuardPrompt], candidates: Sequence[int], table: Sequence[Sequence[float]]
    ) -> list[GuardReading]:
        if len(table) != len(prompts):
            raise ValueError(f"{self.lm.name} answered {len(table)} of {len(prompts)} guard prompts")
        out = []
        for p, row in zip(prompts, table):
            value = dict(zip(candidates, row))
            out.append(
                self._reading([value[i] for i in (*p.safe_ids, *p.unsafe_ids)], len(p.safe_ids), len(p.unsafe_ids))
            )
        return out

    def read(self, prompts: Sequence[GuardPrompt]) -> list[GuardReading]:
        """The guard's readings of rendered prompts, in one ``next_token_logprobs`` request."""
        if not prompts:
            return []
        rows, candidates = self._plan(prompts)
        return self._readings(prompts, candidates, self.lm.next_token_logprobs(rows, candidates))

    async def aread(self, prompts: Sequence[GuardPrompt]) -> list[GuardReading]:
        """``read`` as a coroutine: a served guard (``AsyncLanguageModel``) is awaited; a local one runs
        in a worker thread."""
        if not prompts:
            return []
        if isinstance(self.lm, AsyncLanguageModel):
            rows, candidates = self._plan(prompts)
            return self._readings(prompts, candidates, await self.lm.anext_token_logprobs(rows, candidates))
        return await asyncio.to_thread(self.read, prompts)

    def readings(self, prompt: str, responses: Sequence[str]) -> list[GuardReading]:
        """``GuardReading`` of each response to the conversation ``prompt`` (one request)."""
        return self.read([self.render(prompt, r) for r in responses])

    def score(self, prompt: str, response: str) -> float:
        return self.read([self.render(prompt, response)])[0].score

    def score_batch(self, prompt: str, responses: Sequence[str]) -> list[float]:
        """One score per response, from one ``next_token_logprobs`` request."""
        return [r.score for r in self.readings(prompt, responses)]

    async def ascore(self, prompt: str, response: str) -> float:
        return (await self.aread([self.render(prompt, response)]))[0].score

    async def ascore_batch(self, prompt: str, responses: Sequence[str]) -> list[float]:
        return [r.score for r in await self.aread([self.render(prompt, r) for r in responses])]

    def score_request(self, context: str, request: str) -> float:
        """The score of ``request``, a new user message after the conversation ``context`` (an input
        check: is the request itself harmful?)."""
        return self.read([self.render_request(context, request)])[0].score

    async def ascore_request(self, context: str, request: str) -> float:
        return (await self.aread([self.render_request(context, request)]))[0].score
