"""Request plans: the ``/v1/completions`` payloads each protocol request sends and how its answers are
read back, as generators that do no I/O.

A plan yields ``Calls`` (the calls it waits on together), receives their JSON answers in order, and
returns the protocol's answer. A runner (``vllm_runner``) sends the calls; a test feeds canned
answers. Errors a runner meets while sending (``LogprobsLimitError``) are thrown into the plan,
which may adapt. Plans read the server's features (``ServerFeatures``) and the facts learnt so far
(``ServerFacts``) from their ``PlanContext``, and teach the facts an EOS id the server used.

How each request is answered, and why it is exact, is in the module docstring of ``vllm`` and in
docs/engines.md. A plan driven by hand, with the answer a server would send:

>>> from rain_core.engines.vllm.facts import ServedModel, ServerFacts, ServerFeatures
>>> ctx = PlanContext(ServedModel("toy", 64), "http://host:8000", False, 3, ServerFeatures(), ServerFacts({2}))
>>> plan = top_tokens(ctx, [11, 12], 2, 1.0, exclude=[])
>>> next(plan).calls[0].payload["logprobs"]
2
>>> position = {"token_id:5": -0.25, "token_id:7": -1.5}
>>> try:
...     plan.send([{"choices": [{"index": 0, "token_ids": [5], "logprobs": {"top_logprobs": [position]}}]}])
... except StopIteration as done:
...     print(done.value)
[Continuation(token_ids=(5,), logprob=-0.25), Continuation(token_ids=(7,), logprob=-1.5)]
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Generator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from ...protocols import ContextTooLongError, Continuation, EngineError
from .answers import (
    NEG_INF,
    Position,
    choices,
    ended_at_own_eos,
    finite_count,
    last_prompt_logprob,
    positions_of,
    renormalised_logprob,
    tokens_of,
)
from .facts import OptionScoring, ServedModel, ServerFacts, ServerFeatures
from .http import LogprobsLimitError, MissingFeatureError

logger = logging.getLogger(__name__)

COMPLETIONS = "/v1/completions"
R = TypeVar("R")


class Call(NamedTuple):
    """One HTTP request: ``method``, ``path`` and its JSON ``payload``."""

    method: str
    path: str
    payload: Any = None


@dataclass(frozen=True)
class Calls:
    """The calls a plan waits on together (sent at the same time). ``resend``: they repeat calls
    whose answers came back with top-k lists cut short (counted as ``resent`` in the engine's stats)."""

    calls: tuple[Call, ...]
    resend: bool = False


Plan = Generator[Calls, list[Any], R]


@dataclass(frozen=True)
class PlanContext:
    """What every plan needs: the served ``model``, the server's ``base_url`` (for messages),
    ``send_seeds`` (whether sampled requests carry a seed), ``max_resends`` (how often an answer with
    cut-short top-k lists is asked again before failing), the probed ``features`` and the learnt
    ``facts``."""

    model: ServedModel
    base_url: str
    send_seeds: bool
    max_resends: int
    features: ServerFeatures
    facts: ServerFacts


def completion(model: str, prompt: Any, max_tokens: int, **params: Any) -> Call:
    """A ``/v1/completions`` call on a token-id prompt (or a list of them) that returns token ids."""
    payload = {
        "model": model,
        "prompt": prompt,
        "max_tokens": int(max_tokens),
        "return_tokens_as_token_ids": True,
        "return_token_ids": True,
        **params,
    }
    return Call("POST", COMPLETIONS, payload)


def checked_prompt(ctx: PlanContext, prefix: Sequence[int], room: int) -> list[int]:
    """``prefix`` as a list of ints, checked to leave ``room`` new tokens in the context."""
    ids = [int(t) for t in prefix]
    if not ids:
        raise ValueError("a prompt must contain at least one token")
    limit = ctx.model.context_length
    if len(ids) + room > limit:
        raise ContextTooLongError(
            f"{len(ids)} tokens plus {room} new ones do not fit {ctx.model.name}'s context of {limit} "
            f"on {ctx.base_url} (its --max-model-len); shorten the prompt or lower max_new_tokens"
        )
    return ids


def check_logprobs(ctx: PlanContext, count: int, what: str) -> None:
    """Refuse, before sending, a request that needs more log-probabilities than the server's known limit."""
    limit = ctx.facts.logprobs_limit
    if limit is not None and 0 <= limit < count:
        raise LogprobsLimitError(
            f"{what} needs {count} log-probabilities per token but {ctx.base_url} returns at most {limit}; "
            f"restart vLLM with --max-logprobs {count} (or more), or lower top_k",
            limit=limit,
        )


def lists_complete(ctx: PlanContext, positions: Sequence[Position], want: int, attempt: int) -> bool:
    """Whether every position lists at least ``want`` finite log-probabilities. A shorter list is the
    damage a ``logprob_token_ids`` request in the same engine step does (vLLM 0.32): False asks the
    plan to send its calls again; after ``max_resends`` attempts it fails with an error saying why."""
    short = sum(1 for p in positions if finite_count(p) < want)
    if not short:
        return True
    if attempt >= ctx.max_resends:
        raise EngineError(
            f"{ctx.base_url} returned {short} top-{want} log-probability lists cut short, {attempt + 1} times; "
            "another client's requests with logprob_token_ids do this in vLLM 0.32 (they replace the top-k lists "
            "of every request in the same step). Serve RAIN from a server those requests do not share."
        )
    logger.warning(
        "%s returned %d top-%d log-probability lists cut short (another request in the same step used "
        "logprob_token_ids?); sending the request again",
        ctx.base_url,
        short,
        want,
    )
    return False


def stop_ids(ctx: PlanContext, extra: Collection[int] = ()) -> list[int]:
    return sorted(ctx.facts.eos_token_ids | {int(t) for t in extra})


def seed(ctx: PlanContext, value: int) -> dict[str, int]:
    return {"seed": int(value) % (2**31 - 1)} if ctx.send_seeds else {}


def learn_eos(ctx: PlanContext, choice: Any, tokens: Sequence[int]) -> None:
    if ended_at_own_eos(choice, tokens):
        ctx.facts.learn_eos(tokens[-1], ctx.model.name)


# --- the plans ----------------------------------------------------------------------------------
def top_tokens(
    ctx: PlanContext, prefix: Sequence[int], k: int, temperature: float, exclude: Sequence[int]
) -> Plan[list[Continuation]]:
    """One token at temperature 0 with ``logprobs=k`` (+ ``len(exclude)``, capped at the server's
    limit once known; retried at the limit a refusal names when ``k`` itself fits)."""
    ids = checked_prompt(ctx, prefix, 1)
    if k <= 0:
        return []
    excluded = {int(t) for t in exclude}
    check_logprobs(ctx, k, f"top_tokens(k={k})")
    ask = k + len(excluded)
    limit = ctx.facts.logprobs_limit
    if limit is not None and limit >= 0:
        ask = min(ask, limit)
    attempt = 0
    while True:
        call = completion(ctx.model.name, ids, 1, temperature=0.0, logprobs=ask)
        try:
            (answer,) = yield Calls((call,), resend=attempt > 0)
        except LogprobsLimitError as exc:
            if exc.limit is None or exc.limit < k or ask <= exc.limit:
                raise
            ask = exc.limit
            continue
        position = positions_of(choices(answer)[0])[0]
        if lists_complete(ctx, [position], ask, attempt):
            break
        attempt += 1
    ranked = sorted(position.items(), key=lambda kv: -kv[1])[:ask]  # drop the drawn token if outside the top
    kept = [(i, v) for i, v in ranked if i not in excluded and v > NEG_INF]
    return [Continuation((i,), v / temperature) for i, v in kept[:k]]


def sample(
    ctx: PlanContext,
    prefix: Sequence[int],
    n: int,
    length: int,
    top_k: int,
    temperature: float,
    seed_value: int,
    greedy_first: bool,
) -> Plan[list[Continuation]]:
    """The greedy row at temperature 0 (vLLM refuses ``n > 1`` there) and the other ``n - 1`` rows in
    one request with ``n``, ``top_k`` and ``temperature``, both at once; each row's log-probability
    renormalised over the top-k of each position at the temperature."""
    ids = checked_prompt(ctx, prefix, length)
    if n <= 0:
        return []
    if length <= 0:
        return [Continuation((), 0.0) for _ in range(n)]
    check_logprobs(ctx, top_k, f"sampling from the top {top_k} tokens")
    common = {"logprobs": int(top_k), "stop_token_ids": stop_ids(ctx)}
    calls = []
    if greedy_first:
        calls.append(completion(ctx.model.name, ids, length, n=1, temperature=0.0, **common))
    rest = n - int(bool(greedy_first))
    if rest > 0:
        sampled = dict(n=rest, temperature=float(temperature), top_k=int(top_k), **common, **seed(ctx, seed_value))
        calls.append(completion(ctx.model.name, ids, length, **sampled))
    attempt = 0
    while True:
        answers = yield Calls(tuple(calls), resend=attempt > 0)
        parsed = []
        for answer in answers:
            for choice in choices(answer):
                tokens = tokens_of(choice)
                positions = positions_of(choice)
                if len(positions) < len(tokens):
                    raise EngineError(
                        f"{ctx.base_url} returned {len(positions)} log-probabilities for {len(tokens)} tokens"
                    )
                parsed.append((choice, tokens, positions[: len(tokens)]))
        if lists_complete(ctx, [p for _, _, positions in parsed for p in positions], top_k, attempt):
            break
        attempt += 1
    rows = []
    for choice, tokens, positions in parsed:
        learn_eos(ctx, choice, tokens)
        total = sum(renormalised_logprob(t, p, top_k, temperature) for t, p in zip(tokens, positions))
        rows.append(Continuation(tuple(tokens), total))
    return rows


def generate(
    ctx: PlanContext,
    prefix: Sequence[int],
    max_tokens: int,
    top_k: int | None,
    temperature: float,
    seed_value: int,
    stop: Sequence[str],
    stop_token_ids: Collection[int],
) -> Plan[list[int]]:
    """One request; ``top_k=None`` is sent as -1 (no top-k); ``max_tokens`` capped by the context.
    The token ids include the EOS or stop token, and the token that completes a stop string."""
    if max_tokens <= 0:
        return []
    ids = checked_prompt(ctx, prefix, 0)
    max_tokens = min(int(max_tokens), ctx.model.context_length - len(ids))
    if max_tokens <= 0:
        return []
    params: dict[str, Any] = {
        "temperature": float(temperature),
        "top_k": -1 if top_k is None else int(top_k),
        "stop_token_ids": stop_ids(ctx, stop_token_ids),
        **seed(ctx, seed_value),
    }
    if stop:
        params["stop"] = list(stop)
    if not ctx.features.token_ids_field:
        params["logprobs"] = 0
    (answer,) = yield Calls((completion(ctx.model.name, ids, max_tokens, **params),))
    choice = choices(answer)[0]
    tokens = tokens_of(choice)
    learn_eos(ctx, choice, tokens)
    return tokens


def next_token_logprobs(
    ctx: PlanContext, prompts: Sequence[Sequence[int]], candidates: Sequence[int]
) -> Plan[list[list[float]]]:
    """A ``len(prompts) x len(candidates)`` table of exact next-token log-probabilities."""
    rows = [checked_prompt(ctx, p, 1) for p in prompts]
    cands = [int(c) for c in candidates]
    if not rows:
        return []
    if not cands:
        return [[] for _ in rows]
    if ctx.features.option_scoring is OptionScoring.ALLOWED_TOKEN_IDS:
        return (yield from _by_allowed_token_ids(ctx, rows, cands))
    return (yield from _by_prompt_logprobs(ctx, rows, cands))


def _by_allowed_token_ids(ctx: PlanContext, rows: list[list[int]], cands: list[int]) -> Plan[list[list[float]]]:
    """One request per distinct candidate, all prompts batched: the candidate is the only token
    allowed, so it is the one drawn, and its raw log-probability comes back. The first request
    fills the prefix cache with the prompts; the others follow and reuse it."""
    distinct = list(dict.fromkeys(cands))
    name = ctx.model.name
    calls = [completion(name, rows, 1, temperature=0.0, logprobs=0, allowed_token_ids=[c]) for c in distinct]
    answers = yield Calls(tuple(calls[:1]))
    if len(calls) > 1:
        answers = answers + (yield Calls(tuple(calls[1:])))
    table: dict[int, list[float]] = {}
    for c, answer in zip(distinct, answers):
        found = choices(answer)
        if len(found) != len(rows):
            raise EngineError(f"{ctx.base_url} answered {len(found)} of {len(rows)} prompts")
        column = []
        for choice in found:
            position = positions_of(choice)[0] if tokens_of(choice)[:1] == [c] else {}
            if c not in position:
                raise MissingFeatureError(
                    f"{ctx.base_url} did not keep to allowed_token_ids=[{c}]; use option_scoring="
                    "'prompt_logprobs' or a vLLM server"
                )
            column.append(position[c])
        table[c] = column
    return [[table[c][i] for c in cands] for i in range(len(rows))]


def _by_prompt_logprobs(ctx: PlanContext, rows: list[list[int]], cands: list[int]) -> Plan[list[list[float]]]:
    """Every prompt with every candidate appended, in one request with ``prompt_logprobs``."""
    flat = [r + [c] for r in rows for c in cands]
    for r in flat:
        if len(r) + 1 > ctx.model.context_length:
            raise ContextTooLongError(
                f"{len(r) - 1} tokens plus an option letter do not fit {ctx.model.name}'s "
                f"context of {ctx.model.context_length}"
            )
    (answer,) = yield Calls((completion(ctx.model.name, flat, 1, temperature=0.0, prompt_logprobs=0),))
    found = choices(answer)
    if len(found) != len(flat):
        raise EngineError(f"{ctx.base_url} answered {len(found)} of {len(flat)} prompts")
    values = []
    for r, choice in zip(flat, found):
        value = last_prompt_logprob(choice, r[-1])
        if value is None:
            raise MissingFeatureError(
                f"{ctx.base_url} returned no prompt log-probabilities; RAIN reads the option letters with them"
            )
        values.append(value)
    width = len(cands)
    return [values[i * width : (i + 1) * width] for i in range(len(rows))]
