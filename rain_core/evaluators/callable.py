"""``CallableEvaluator``: any function ``fn(prompt, response) -> float`` in [-1, 1] as an evaluator
(optionally with a batch form)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..protocols import check_score


class CallableEvaluator:
    """Wrap ``fn(prompt, response) -> float`` in [-1, 1]. ``batch_fn(prompt, responses) -> floats``
    may be given as well (or instead) for scorers that are faster in batches."""

    def __init__(
        self,
        fn: Callable[[str, str], float] | None = None,
        *,
        batch_fn: Callable[[str, Sequence[str]], Sequence[float]] | None = None,
        name: str | None = None,
    ) -> None:
        if fn is None and batch_fn is None:
            raise TypeError("CallableEvaluator needs fn(prompt, response) -> float or batch_fn")
        for f in (fn, batch_fn):
            if f is not None and not callable(f):
                raise TypeError(f"CallableEvaluator needs a callable, got {type(f).__name__}")
        self.fn = fn
        self.batch_fn = batch_fn
        self.name: str = str(name or getattr(fn or batch_fn, "__name__", "callable"))

    def score(self, prompt: str, response: str) -> float:
        if self.fn is not None:
            return check_score(self.fn(prompt, response), f"evaluator {self.name!r}")
        return self.score_batch(prompt, [response])[0]

    def score_batch(self, prompt: str, responses: Sequence[str]) -> list[float]:
        if self.batch_fn is None:
            return [self.score(prompt, r) for r in responses]
        values = list(self.batch_fn(prompt, list(responses)))
        if len(values) != len(responses):
            raise ValueError(f"evaluator {self.name!r} returned {len(values)} scores for {len(responses)} responses")
        return [check_score(v, f"evaluator {self.name!r}") for v in values]
