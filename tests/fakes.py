"""Fast stand-ins for tests: a character-level ``LanguageModel`` and a scripted one.

``CharLM`` implements the ``LanguageModel`` protocol over characters (one token per character,
id = code point, id 0 = EOS) with next-token scores from a fixed function of the text so far,
so searches are deterministic and instantaneous. ``ScriptedLM`` strongly prefers to continue a
reply with a given script (useful where a real 135M model cannot follow a format, e.g. tool calls).
"""

from __future__ import annotations

import math
import re
import zlib
from typing import Any, Callable, Sequence

import numpy as np

from rain_core.lm import Continuation, EngineStats

EOS = 0
ALPHABET = "abcdefghijklmnopqrstuvwxyz ,.!?\n"
VOCAB = [EOS] + [ord(c) for c in ALPHABET]


class CharLM:
    """Deterministic character-level language model; ``scores(text)`` gives logits over ``VOCAB``."""

    name = "char-lm"
    context_length = 4096
    eos_token_ids = frozenset({EOS})

    def __init__(self, scores: Callable[[str], np.ndarray] | None = None) -> None:
        self._scores = scores or self._hash_scores
        self.calls: dict[str, int] = {}
        self.stats = EngineStats()

    # --- text -----------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, token_ids: Sequence[int]) -> str:
        return "".join(chr(t) for t in token_ids if t != EOS)

    def chat_prompt(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True, **kwargs: Any) -> str:
        lines = [f"{m['role']}: {m.get('content') or ''}" for m in messages]
        if kwargs.get("tools"):
            lines.insert(0, "tools: " + ",".join(t["function"]["name"] for t in kwargs["tools"]))
        return "\n".join(lines) + ("\nassistant:" if add_generation_prompt else "\n")

    # --- scores ---------------------------------------------------------------------------------
    @staticmethod
    def _hash_scores(text: str) -> np.ndarray:
        rng = np.random.default_rng(zlib.crc32(text[-3:].encode()))
        logits = rng.normal(0.0, 2.0, size=len(VOCAB))
        logits[0] -= 3.0  # EOS is rare
        return logits

    def _logprobs(self, ids: Sequence[int], temperature: float = 1.0) -> np.ndarray:
        self._count("forward")
        self.stats.forward_calls += 1
        self.stats.forward_tokens += 1
        logits = np.asarray(self._scores(self.decode(ids)), dtype=np.float64) / temperature
        logits = logits - logits.max()
        return logits - math.log(np.exp(logits).sum())

    def _count(self, key: str) -> None:
        self.calls[key] = self.calls.get(key, 0) + 1

    # --- protocol -------------------------------------------------------------------------------
    def top_tokens(self, prefix, k, temperature=1.0, exclude=()):
        self._count("top_tokens")
        lp = self._logprobs(prefix, temperature)
        order = [i for i in np.argsort(-lp, kind="stable") if VOCAB[i] not in set(exclude)]
        return [Continuation((VOCAB[i],), float(lp[i])) for i in order[:k]]

    def _draw(self, lp: np.ndarray, top_k: int, rng: np.random.Generator, greedy: bool) -> int:
        order = np.argsort(-lp, kind="stable")[:top_k]
        if greedy:
            return int(order[0])
        p = np.exp(lp[order] - lp[order].max())
        return int(order[rng.choice(len(order), p=p / p.sum())])

    def sample(self, prefix, n, length, *, top_k, temperature, seed, greedy_first=True):
        self._count("sample")
        out = []
        for row in range(n):
            rng = np.random.default_rng(seed + 7919 * row)
            ids, total = list(prefix), 0.0
            toks: list[int] = []
            for _ in range(length):
                lp = self._logprobs(ids, temperature)
                i = self._draw(lp, top_k, rng, greedy_first and row == 0)
                toks.append(VOCAB[i])
                ids.append(VOCAB[i])
                total += float(lp[i])
                if VOCAB[i] == EOS:
                    break
            out.append(Continuation(tuple(toks), total))
        return out

    def continue_until(self, prefix, stop, max_tokens, *, top_k, temperature, seed, min_tokens=1):
        self._count("continue_until")
        rng = np.random.default_rng(seed)
        ids, out = list(prefix), []
        while len(out) < max_tokens:
            lp = self._logprobs(ids, temperature)
            tok = VOCAB[self._draw(lp, top_k, rng, False)]
            out.append(tok)
            ids.append(tok)
            if tok == EOS:
                break
            if len(out) >= min_tokens and any(s in self.decode(out) for s in stop):
                break
        return out

    def next_token_logprobs(self, prompts, candidates):
        self._count("next_token_logprobs")
        rows = []
        for p in prompts:
            lp = self._logprobs(p)
            table = {tok: lp[i] for i, tok in enumerate(VOCAB)}
            rows.append([float(table.get(c, -1e9)) for c in candidates])
        return rows

    def cache_prefix(self, prefix):
        pass

    def release_prefix(self, prefix):
        pass


class ScriptedLM(CharLM):
    """Continues the assistant's reply with ``script(prompt_text)`` (a fixed string or a function
    of the prompt), strongly but not exclusively: other characters stay possible, so a search can
    still find alternatives. Ends with EOS when the script is done."""

    name = "scripted-lm"

    def __init__(self, script: str | Callable[[str], str], strength: float = 12.0) -> None:
        super().__init__(self._scripted)
        self.script = script if callable(script) else (lambda _prompt, s=script: s)
        self.strength = strength

    def _scripted(self, text: str) -> np.ndarray:
        head, sep, reply = text.rpartition("\nassistant:")
        if not sep:
            head, reply = text, ""
        target = self.script(head)
        logits = np.zeros(len(VOCAB))
        if reply == target:
            logits[0] = self.strength
        elif target.startswith(reply):
            nxt = ord(target[len(reply)])
            if nxt in VOCAB:
                logits[VOCAB.index(nxt)] = self.strength
        else:
            logits[0] = self.strength / 2
        return logits

    def encode(self, text: str) -> list[int]:
        # Characters outside the alphabet survive round trips; they are simply never predicted.
        return [ord(c) for c in text]


def words_penalty(*words: str) -> Callable[[str, str], float]:
    """Evaluator function: -1 when the response contains any of ``words``, else 1."""
    pattern = re.compile("|".join(re.escape(w) for w in words), re.IGNORECASE)
    return lambda prompt, response: -1.0 if pattern.search(response) else 1.0
