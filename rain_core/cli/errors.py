"""Failures as the shell user sees them: one ``rain: error: ...`` line, whose hints name the command's
options (``--dtype float32``), never the Python keywords the library's messages name
(``dtype='float32'``)."""

from __future__ import annotations

import re
import sys
import traceback
from collections.abc import Callable, Mapping

from pydantic import ValidationError

from ..config import ConfigError, RainConfig, allowed

# Failures a user causes and can fix (options, paths, models, servers, memory): one line, no
# traceback. Anything else is reported the same way, with its type and a pointer to -v.
EXPECTED: tuple[type[BaseException], ...] = (ValueError, TypeError, OSError, ImportError, MemoryError)


class UsageError(ValueError):
    """A command line that cannot run (options that contradict each other, a missing value)."""


# RainConfig fields that `rain generate` options set: field -> option
RAIN_OPTIONS = {
    "max_new_tokens": "--max-new-tokens",
    "max_length": "--max-length",
    "max_searches": "--max-searches",
    "extra_searches": "--extra-searches",
    "parallel_searches": "--parallel-searches",
    "max_seconds": "--max-seconds",
    "seed": "--seed",
    "temperature": "--temperature",
    "stop": "--stop",
    "scoring": "--scoring",
}

# The library's hints in Python terms, and what they are in the shell (a clause that has no
# equivalent there is dropped).
_KEYWORD = r"{name}=(?:'([^']*)'|([\w.\-]+))"
_SHELL_HINTS: tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...] = (
    (re.compile(r"load_model\('([^']*)', gguf_file='([^']*)'\)"), r"--model \1 --gguf-file \2"),
    (re.compile(r";? ?local_files_only=False lets transformers download it as it loads"), ""),
    (re.compile(r", a Principle,"), ","),
    *(
        (re.compile(_KEYWORD.format(name=name)), lambda m, flag=flag: f"{flag} {m.group(1) or m.group(2)}")
        for name, flag in (("dtype", "--dtype"), ("device", "--device"), ("gguf_file", "--gguf-file"))
    ),
    *(
        (
            re.compile(rf"\b(?:raise|lower|set) {field}\b"),
            lambda m, flag=flag: m.group(0).rsplit(" ", 1)[0] + f" {flag}",
        )
        for field, flag in RAIN_OPTIONS.items()
    ),
)


def shell_hints(message: str) -> str:
    """``message`` with the Python options its hints name put as this command's options."""
    for pattern, replacement in _SHELL_HINTS:
        message = pattern.sub(replacement, message)
    return message


def _field_problems(errors: list[Mapping[str, object]], names: Mapping[str, str]) -> str:
    """pydantic's error details as ``--option: must be ..., got value`` per field."""
    problems = []
    for err in errors:
        loc = err.get("loc") or ()
        field = str(loc[0]) if isinstance(loc, tuple) and loc else ""
        ctx = err.get("ctx")
        raised = ctx.get("error") if isinstance(ctx, dict) else None
        where = names.get(field, field)
        if isinstance(raised, Exception):
            text = str(raised)
        elif field in RainConfig.model_fields:
            text = f"must be {allowed(RainConfig, field)}, got {err.get('input')!r}"
        else:
            text = str(err.get("msg", "invalid"))
        problems.append(f"{where}: {text}" if where else text)
    return "; ".join(dict.fromkeys(problems))


def one_line(exc: BaseException) -> str:
    """The error as one line: a configuration error as ``--option: problem`` per field, anything else
    as its message with line breaks folded and Python hints put as shell options (and its type when
    it is not an expected one)."""
    if isinstance(exc, ConfigError) and exc.errors:
        return _field_problems(exc.errors, RAIN_OPTIONS)  # type: ignore[arg-type]
    if isinstance(exc, ValidationError):
        return _field_problems(exc.errors(), RAIN_OPTIONS)  # type: ignore[arg-type]
    text = shell_hints(" ".join(str(exc).split())) or type(exc).__name__
    expected = isinstance(exc, EXPECTED) or "OutOfMemory" in type(exc).__name__
    if expected or type(exc).__module__.startswith("rain_core"):
        return text
    return f"{type(exc).__name__}: {text} (rain -v ... shows the traceback)"


def fail(exc: BaseException, verbose: bool, status: int) -> int:
    """Report ``exc`` on stderr as one ``rain: error:`` line (after its traceback with ``-v``) and
    return ``status``."""
    if verbose:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    sys.stderr.write(f"rain: error: {one_line(exc)}\n")
    return status
