"""Guard-model evaluators: a safety classifier built as a small causal LM judges the replies.

Guard models (Llama Guard 3, ShieldGemma, Granite Guardian, Qwen3Guard, ...) read a conversation
through their own chat template and answer in a fixed format: "safe"/"unsafe" (after a blank line
for Llama Guard 3 8B), "Yes"/"No", ``<score> yes </score>``, ``Safety: Safe``. ``GuardEvaluator``
renders RAIN's conversation and partial reply in that format, reads the next-token probabilities of
the verdict tokens where the verdict word comes (after what the guard always writes first, such as
"Safety:"; for Llama Guard 3 both right after the prompt and after the blank line, weighted by the
guard's probability of writing it) with one ``next_token_logprobs`` request, and scores:

- ``continuous`` (default): ``P(safe) - P(unsafe)``, both renormalised over the verdict tokens, in
  [-1, 1];
- ``discrete``: ``-1`` when the renormalised ``P(unsafe)`` is at least ``threshold`` (default 0.5),
  else ``+1``.

Rendering (``prompts``; the presets in ``presets``, the tokens in ``tokens``, the turns in ``turns``):

- RAIN hands evaluators the conversation as ``Role: content`` lines (``rain_core.chat.transcript``)
  and the reply separately. The lines are parsed back into turns; the reply (or, in an input check,
  the request) is never parsed. An empty reply means "judge the request": the conversation's last
  turn is what the guard judges. For a chat template the turns are mapped onto the strict
  user/assistant alternation guard templates require (a tool turn becomes a user turn marked
  "Tool result:", consecutive turns of one role are joined, a conversation opening with the
  assistant gets an empty user turn first); a template that renders only the last exchange
  (ShieldGemma's) simply leaves the earlier turns out.
- The prompt has the ids the guard's tokenizer gives the whole rendered prompt in one piece: it is
  cut at the special tokens the template writes and each stretch between them, template text and
  contents together, is encoded as text (``parse_special=False``). So text that looks like a special
  token stays text and cannot close the guard's turn, and the verdict is read after the template's
  last stretch whatever the reply says. Plain-text markers of the guard's format (``<...>`` tags its
  template writes, such as ``<END CONVERSATION>``, and the role labels it puts before a content,
  such as ``Agent:``) get a zero-width space after their first character when a content repeats
  them, so a reply cannot pose as the end of the conversation or as another turn.

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
    ``"granite-guardian-3.3"``, ``"granite-guardian-4.1"``, ``"qwen3guard"``, ...: ``GUARD_PRESETS``)
    or ``None`` to infer it from ``guard_lm.name``. ``scoring``: ``"continuous"`` (default)
    ``P(safe) - P(unsafe)`` renormalised over the verdict tokens; ``"discrete"`` ``-1`` when the
    renormalised ``P(unsafe) >= threshold``, else ``+1``. ``template_kwargs``: extra chat-template
    arguments, over the preset's (for requests and replies alike).

    The judged text is the reply (``response``), rendered as the assistant's last turn; with an
    empty ``response`` the guard judges the conversation's last turn (the request). ``score_request``
    judges a request passed on its own (input checks). ``score_batch`` scores many replies to one
    conversation, and ``score_request_batch`` many requests, with a single ``next_token_logprobs``
    request (the engine shares their common prefix); the scores equal one-by-one scores. Turn
    parsing, alternation and the untrusted-text rules are in this module's docstring and in
    ``parse_transcript``.

    Built objects check themselves before any scoring: a tokenizer without the family's special
    tokens, a template that is not the family's (``expects``, ``rejects``: a generic chat model given
    as a guard), a template that cannot render a user/assistant conversation, a guard without a chat
    template (when the preset needs one), a tokenizer whose one-piece encoding rain cannot reproduce,
    verdict words the tokenizer cannot encode, or safe and unsafe words that start with the same
    token raise a ``ValueError`` that names the problem and what to pass instead.

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
        self.template_kwargs = dict(template_kwargs or {})
        self.name: str = name or f"GuardEvaluator({self.preset.name}, {guard_lm.name})"
        self._warned_mass = False
        # Untrusted text must be encodable as text (a served guard without its tokenizer here cannot);
        # then check the family and build both shapes now, so a bad configuration fails here, not in
        # the middle of a decode.
        guard_lm.encode("<probe>", parse_special=False)
        self.format = GuardFormat(guard_lm, self.preset, self.template_kwargs, self.name)
        response_frame = self.format.frame(("user", "assistant"))
        self.format.frame(("user",))
        if isinstance(guard_lm, PrefixPinning) and response_frame.head:
            guard_lm.cache_prefix(response_frame.head)

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

    # --- scoring ---------------------------------------------------------------------------------
    def _reading(self, p_safe: float, p_unsafe: float) -> GuardReading:
        """The reading of a text the guard gives ``p_safe`` and ``p_unsafe`` (probabilities of writing
        a safe or an unsafe verdict, summed over the places the verdict can come)."""
        total = p_safe + p_unsafe
        if not total > 0.0:
            raise ValueError(f"{self.lm.name} gave every verdict token probability 0: it cannot be read as a guard")
        mass = min(1.0, total)
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
        p_safe, p_unsafe = p_safe / total, p_unsafe / total
        if self.scoring is Scoring.CONTINUOUS:
            score = max(-1.0, min(1.0, p_safe - p_unsafe))
        else:
            score = -1.0 if p_unsafe >= self.threshold else 1.0
        return GuardReading(p_safe, p_unsafe, mass, score)

    @staticmethod
    def _rows(prompt: GuardPrompt) -> list[list[int]]:
        """The rows a prompt is read from: the prompt, then the prompt followed by each growing part of
        an optional prefix (the guard's probability of writing it, token by token, and the verdict after it)."""
        base = prompt.ids
        return [base] + [base + list(v.prefix[: j + 1]) for v in prompt.verdicts[1:] for j in range(len(v.prefix))]

    @classmethod
    def _plan(cls, prompts: Sequence[GuardPrompt]) -> tuple[list[list[int]], list[int]]:
        """The rows of one request and its candidate ids (each verdict or prefix id once)."""
        candidates = dict.fromkeys(
            i for p in prompts for v in p.verdicts for i in (*v.prefix, *v.safe_ids, *v.unsafe_ids)
        )
        return [row for p in prompts for row in cls._rows(p)], list(candidates)

    def _readings(
        self, prompts: Sequence[GuardPrompt], candidates: Sequence[int], table: Sequence[Sequence[float]]
    ) -> list[GuardReading]:
        sizes = [len(self._rows(p)) for p in prompts]
        if len(table) != sum(sizes):
            raise ValueError(f"{self.lm.name} answered {len(table)} of {sum(sizes)} guard prompt rows")
        column = {c: k for k, c in enumerate(candidates)}
        out, start = [], 0
        for p, size in zip(prompts, sizes):
            rows = table[start : start + size]
            start += size
            sides = [0.0, 0.0]
            at = 0  # the row after the verdict's prefix
            for n, verdict in enumerate(p.verdicts):
                log_weight, row = 0.0, rows[0]
                for j, token in enumerate(verdict.prefix):
                    log_weight += row[column[token]]
                    row = rows[at + 1 + j]
                at += len(verdict.prefix) if n else 0
                weight = math.exp(log_weight)
                for side, ids in enumerate((verdict.safe_ids, verdict.unsafe_ids)):
                    sides[side] += weight * sum(math.exp(row[column[i]]) for i in ids)
            out.append(self._reading(*sides))
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

    # --- requests (input checks) ----------------------------------------------------------------
    def _request_prompts(self, context: str | Sequence[str], requests: Sequence[str]) -> list[GuardPrompt]:
        if isinstance(requests, str):
            raise TypeError("requests must be a sequence of strings (score_request judges one)")
        contexts = [context] * len(requests) if isinstance(context, str) else list(context)
        if len(contexts) != len(requests):
            raise ValueError(
                f"give one context for all requests or one per request: got {len(contexts)} contexts for "
                f"{len(requests)} requests"
            )
        return [self.render_request(c, r) for c, r in zip(contexts, requests)]

    def request_readings(self, context: str | Sequence[str], requests: Sequence[str]) -> list[GuardReading]:
        """``GuardReading`` of each request, a new user message after ``context`` (one conversation
        for all, or one per request), from one ``next_token_logprobs`` request."""
        return self.read(self._request_prompts(context, requests))

    def score_request(self, context: str, request: str) -> float:
        """The score of ``request``, a new user message after the conversation ``context`` (an input
        check: is the request itself harmful?)."""
        return self.read([self.render_request(context, request)])[0].score

    def score_request_batch(self, context: str | Sequence[str], requests: Sequence[str]) -> list[float]:
        """One score per request (``score_request`` for many, as ``score_batch`` is ``score`` for
        many): one ``next_token_logprobs`` request, the scores equal to one-by-one scores. ``context``:
        the conversation before every request, or one per request (checks from several users)."""
        return [r.score for r in self.request_readings(context, requests)]

    async def ascore_request(self, context: str, request: str) -> float:
        return (await self.aread([self.render_request(context, request)]))[0].score

    async def ascore_request_batch(self, context: str | Sequence[str], requests: Sequence[str]) -> list[float]:
        return [r.score for r in await self.aread(self._request_prompts(context, requests))]
