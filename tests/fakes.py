"""The one fake ``LanguageModel`` of the fast tests, and scorers for them.

``FakeLM`` implements the whole protocol over characters: one token per character (id = code point,
id 0 = EOS), next-token logits from a function of the text so far, so searches are deterministic
and instantaneous. Its forms:

- ``CharLM()``: logits from a hash of the last three characters (an arbitrary but fixed model).
- ``ScriptedLM(script)``: strongly (not exclusively) continues the assistant's reply with
  ``script(prompt_text)``, then EOS; with ``vocab=PRINTABLE`` it can write JSON tool calls.
- ``TableLM(probs)``: the same next-token distribution after any prefix.

Every request is recorded in ``requests`` as ``(method, prefix length, details)``; rendered
generation prompts in ``prompts``.
"""

from __future__ import annotations

import json
import math
import re
import time
import zlib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rain_core.protocols import Continuation

EOS = 0
ALPHABET = "abcdefghijklmnopqrstuvwxyz ,.!?\n"
PRINTABLE = "\n" + "".join(chr(c) for c in range(32, 127))
VOCAB = [EOS] + [ord(c) for c in ALPHABET]  # CharLM's token ids, EOS first


@dataclass
class Counters:
    """The fake's work: one forward call (and token) per next-token distribution it computes."""

    forward_calls: int = 0
    forward_tokens: int = 0

    def snapshot(self) -> dict[str, float]:
        return dict(self.__dict__)


class FakeLM:
    """A deterministic character-level language model; ``logits_fn(text)`` scores ``vocab``."""

    eos_token_ids = frozenset({EOS})

    def __init__(
        self,
        logits_fn: Callable[[str], np.ndarray] | None = None,
        *,
        vocab: str = ALPHABET,
        name: str = "fake-lm",
        context_length: int = 8192,
        tools_in_template: bool = True,
        delay: float = 0.0,
        concurrent: bool = False,
    ) -> None:
        self.vocab = [EOS] + [ord(c) for c in dict.fromkeys(vocab)]
        self._index = {tok: i for i, tok in enumerate(self.vocab)}
        self._logits_fn = logits_fn or self._hash_logits
        self.name = name
        self.context_length = context_length
        self.tools_in_template = tools_in_template
        self.delay = delay
        self.concurrent = concurrent
        self.stats = Counters()
        self.requests: list[tuple[str, int, Any]] = []
        self.prompts: list[str] = []

    # --- text -----------------------------------------------------------------------------------
    def encode(self, text: str, *, parse_special: bool = True) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, token_ids: Sequence[int]) -> str:
        return "".join(chr(t) for t in token_ids if t != EOS)

    def chat_prompt(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True, **kwargs: Any
    ) -> str:
        lines = []
        if kwargs.get("tools") and self.tools_in_template:
            lines.append("tools: " + json.dumps([t["function"]["name"] for t in kwargs["tools"]]))
        lines += [f"{m['role']}: {m.get('content') or ''}" for m in messages]
        text = "\n".join(lines) + ("\nassistant:" if add_generation_prompt else "\n")
        if add_generation_prompt:
            self.prompts.append(text)
        return text

    def token_ids_ending_with(self, suffixes: Sequence[str]) -> frozenset[int]:
        return frozenset(t for t in self.vocab[1:] if chr(t).endswith(tuple(suffixes)))

    def engine_stats(self) -> dict[str, float]:
        return self.stats.snapshot()

    # --- the model ------------------------------------------------------------------------------
    def _hash_logits(self, text: str) -> np.ndarray:
        rng = np.random.default_rng(zlib.crc32(text[-3:].encode()))
        logits = rng.normal(0.0, 2.0, size=len(self.vocab))
        logits[0] -= 3.0  # EOS is rare
        return logits

    def logprobs(self, ids: Sequence[int], temperature: float = 1.0) -> np.ndarray:
        """Next-token log-probabilities over ``vocab`` after ``ids``."""
        self.stats.forward_calls += 1
        self.stats.forward_tokens += 1
        if self.delay:
            time.sleep(self.delay)
        z = np.asarray(self._logits_fn(self.decode(ids)), dtype=np.float64) / temperature
        z = z - z.max()
        return z - math.log(np.exp(z).sum())

    @staticmethod
    def _draw(lp: np.ndarray, top_k: int | None, rng: np.random.Generator, greedy: bool) -> tuple[int, float]:
        """(index, log-probability in the top-k renormalised distribution)."""
        order = np.argsort(-lp, kind="stable")[: top_k or len(lp)]
        logq = lp[order] - lp[order].max()
        logq = logq - math.log(np.exp(logq).sum())
        j = 0 if greedy else int(rng.choice(len(order), p=np.exp(logq) / np.exp(logq).sum()))
        return int(order[j]), float(logq[j])

    # --- protocol requests ----------------------------------------------------------------------
    def top_tokens(
        self, prefix: Sequence[int], k: int, temperature: float = 1.0, exclude: Sequence[int] = ()
    ) -> list[Continuation]:
        self.requests.append(("top_tokens", len(prefix), (k, tuple(exclude))))
        lp = self.logprobs(prefix, temperature)
        skip = set(exclude)
        order = [i for i in np.argsort(-lp, kind="stable") if self.vocab[i] not in skip][:k]
        return [Continuation((self.vocab[i],), float(lp[i])) for i in order]

    def sample(
        self,
        prefix: Sequence[int],
        n: int,
        length: int,
        *,
        top_k: int,
        temperature: float,
        seed: int,
        greedy_first: bool = True,
    ) -> list[Continuation]:
        self.requests.append(("sample", len(prefix), (n, length)))
        out = []
        for row in range(n):
            rng = np.random.default_rng(seed + 7919 * row)
            ids, toks, total = list(prefix), [], 0.0
            for _ in range(length):
                i, lq = self._draw(self.logprobs(ids, temperature), top_k, rng, greedy_first and row == 0)
                toks.append(self.vocab[i])
                ids.append(self.vocab[i])
                total += lq
                if self.vocab[i] == EOS:
                    break
            out.append(Continuation(tuple(toks), total))
        return out

    def generate(
        self,
        prefix: Sequence[int],
        max_tokens: int,
        *,
        top_k: int | None,
        temperature: float,
        seed: int,
        stop: Sequence[str] = (),
        stop_token_ids: Collection[int] = (),
    ) -> list[int]:
        self.requests.append(("generate", len(prefix), (max_tokens, top_k)))
        rng = np.random.default_rng(seed)
        ids, out = list(prefix), []
        enders = set(stop_token_ids) | {EOS}
        while len(out) < max_tokens:
            i, _ = self._draw(self.logprobs(ids, temperature), top_k, rng, False)
            out.append(self.vocab[i])
            ids.append(self.vocab[i])
            if self.vocab[i] in enders or any(s in self.decode(out) for s in stop):
                break
        return out

    def next_token_logprobs(self, prompts: Sequence[Sequence[int]], candidates: Sequence[int]) -> list[list[float]]:
        self.requests.append(("next_token_logprobs", len(prompts), tuple(candidates)))
        rows = []
        for p in prompts:
            lp = self.logprobs(p)
            rows.append([float(lp[self._index[c]]) if c in self._index else -1e9 for c in candidates])
        return rows

    def count(self, method: str) -> int:
        """How many requests of ``method`` were made."""
        return sum(1 for r in self.requests if r[0] == method)


class CharLM(FakeLM):
    """Logits from a hash of the last three characters; or from ``scores(text)`` when given."""

    def __init__(self, scores: Callable[[str], np.ndarray] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("name", "char-lm")
        super().__init__(scores, **kwargs)


class ScriptedLM(FakeLM):
    """Continues the text after the last ``marker`` with ``script(text before it)`` (a fixed string
    or a function of the head), strongly but not exclusively: other characters stay possible, so a
    search can still find alternatives. Ends with EOS when the script is done; off script, EOS is
    likely."""

    def __init__(
        self,
        script: str | Callable[[str], str],
        *,
        strength: float = 12.0,
        marker: str = "\nassistant:",
        vocab: str = ALPHABET,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("name", "scripted-lm")
        super().__init__(self._scripted, vocab=vocab, **kwargs)
        self.script = script if callable(script) else (lambda _head, s=script: s)
        self.strength = strength
        self.marker = marker

    def _scripted(self, text: str) -> np.ndarray:
        head, sep, reply = text.rpartition(self.marker)
        if not sep:
            head, reply = text, ""
        target = self.script(head)
        logits = np.zeros(len(self.vocab))
        if reply == target:
            logits[0] = self.strength
        elif target.startswith(reply) and ord(target[len(reply)]) in self._index:
            logits[self._index[ord(target[len(reply)])]] = self.strength
        else:
            logits[0] = self.strength / 2
        return logits


class TableLM(FakeLM):
    """The same next-token distribution ``probs`` (character -> probability) after any prefix."""

    def __init__(self, probs: Mapping[str, float], **kwargs: Any) -> None:
        kwargs.setdefault("name", "table-lm")
        chars = "".join(probs)
        super().__init__(self._table, vocab=chars, **kwargs)
        self._table_logits = np.array([-1e9] + [math.log(p) for p in probs.values()])

    def _table(self, text: str) -> np.ndarray:
        return self._table_logits


def words_penalty(*words: str) -> Callable[[str, str], float]:
    """Evaluator function: -1 when the response contains any of ``words``, else 1."""
    pattern = re.compile("|".join(re.escape(w) for w in words), re.IGNORECASE)
    return lambda prompt, response: -1.0 if pattern.search(response) else 1.0


def two_way() -> CharLM:
    """A chat model that prefers to answer "i like cats." (strength 12) and keeps "i like dogs." one
    token away (10): the scenario where a penalised word is avoidable."""
    targets = (("i like cats.", 12.0), ("i like dogs.", 10.0))

    def logits(text: str) -> np.ndarray:
        reply = text.rpartition("\nassistant:")[2]
        out = np.zeros(len(lm.vocab))
        for target, strength in targets:
            if reply == target:
                out[0] = max(out[0], 12.0)
            elif target.startswith(reply):
                i = lm.vocab.index(ord(target[len(reply)]))
                out[i] = max(out[i], strength)
        return out

    lm = CharLM(logits)
    return lm
