"""CPU linear layers for decode steps of 1-32 rows: ``(W @ x.T).T`` instead of ``x @ W.T``.

A decode step multiplies a few rows by every weight matrix, so it is bound by reading the weights.
On CPU, ``F.linear`` with 2-32 rows takes a matrix-product path that streams them slowly, and with
one row a matrix-vector path that runs on one thread; with the weight as the left operand (one row
is duplicated into two) the product streams the weights on every thread. Measured on two cores
with SmolLM2-135M: the products alone (513 MB of weights), one row 80 -> 52 ms; whole decode steps,
one row 91 -> 74 ms and 2-5 rows 158 -> 84 ms. The same products summed in another order: results
agree to float32 rounding.

``use_small_batch_linear(model)`` swaps the class of the model's ``nn.Linear`` modules; the new
forward is active only inside ``small_batch_matmul(True)`` (a context variable the engine sets
around its own forward passes). Elsewhere (training, other code sharing the model) the modules
behave exactly as ``nn.Linear``.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

_ACTIVE: contextvars.ContextVar[bool] = contextvars.ContextVar("rain_small_batch_matmul", default=False)
ROWS = (1, 32)
_CLASS: Any = None


@contextlib.contextmanager
def small_batch_matmul(active: bool) -> Iterator[None]:
    """Turn the small-batch product on (or off) for the forward passes run inside the block."""
    token = _ACTIVE.set(active)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def small_batch_linear_class() -> Any:
    """The ``nn.Linear`` subclass with the small-batch forward (made once)."""
    global _CLASS
    if _CLASS is None:
        import torch

        class SmallBatchLinear(torch.nn.Linear):
            def forward(self, x: Any) -> Any:
                if _ACTIVE.get() and x.dim() >= 2 and x.dtype == torch.float32 and not x.is_cuda:
                    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
                    if ROWS[0] <= rows <= ROWS[1] and self.weight.dtype == torch.float32:
                        flat = x.reshape(rows, x.shape[-1])  # (R, in)
                        if rows == 1:
                            flat = torch.cat([flat, flat])  # (2, in): keeps the matrix-matrix path
                        y = torch.matmul(self.weight, flat.T).T[:rows].contiguous()  # (R, out)
                        if self.bias is not None:
                            y = y + self.bias
                        return y.reshape(*x.shape[:-1], y.shape[-1])
                return torch.nn.functional.linear(x, self.weight, self.bias)

        _CLASS = SmallBatchLinear
    return _CLASS


def use_small_batch_linear(model: Any) -> int:
    """Give every plain ``nn.Linear`` of ``model`` the small-batch forward; returns how many have it."""
    import torch

    cls = small_batch_linear_class()
    count = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.__class__ = cls
            count += 1
        elif type(module) is cls:
            count += 1
    return count
