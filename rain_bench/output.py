"""Writing reports: atomic file writes (a temporary file beside the target, then a rename, so a
reader never sees half a report), records as plain JSON, Markdown formatting helpers, and charts."""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def default_folder() -> Path:
    """Where ``rain bench`` writes its reports when ``--out`` is not given: ``$RAIN_RESULTS_DIR``, else
    ``$XDG_DATA_HOME/rain/results`` (``~/.local/share/rain/results``): a folder of the user's, never the
    working directory (it may be any checkout) or an installed package. The reports committed to
    rain's repository are written only when asked: ``--out benchmarks/results``. Each command prints
    where it wrote."""
    chosen = os.environ.get("RAIN_RESULTS_DIR", "").strip()
    if chosen:
        return Path(chosen).expanduser()
    data = os.environ.get("XDG_DATA_HOME", "").strip()
    return (Path(data).expanduser() if data else Path.home() / ".local" / "share") / "rain" / "results"


DEFAULT_FOLDER = default_folder()
"""``default_folder()`` when this module was imported (the commands call ``default_folder()`` as they run)."""


def _write_atomic(path: Path, write: Callable[[Any], None], binary: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        handle = os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8")
        with handle as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it into place."""
    _write_atomic(Path(path), lambda f: f.write(text), binary=False)


def save_figure(fig: Any, path: Path, dpi: int = 120) -> None:
    """Save a matplotlib figure as a PNG, atomically."""
    _write_atomic(Path(path), lambda f: fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight"), binary=True)


def jsonable(obj: Any) -> Any:
    """Plain JSON data: dataclasses as dicts, enums as values, non-finite floats as null."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return jsonable(obj.value)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_report(folder: Path, name: str, markdown: str, data: Any) -> tuple[Path, Path]:
    """``<folder>/<name>.json`` (``data`` as plain JSON) and ``<folder>/<name>.md``, both atomic."""
    folder = Path(folder)
    md_path, json_path = folder / f"{name}.md", folder / f"{name}.json"
    write_atomic(json_path, json.dumps(jsonable(data), indent=2) + "\n")
    write_atomic(md_path, markdown.rstrip("\n") + "\n")
    return md_path, json_path


# --- Markdown formatting ------------------------------------------------------------------------
def fmt_x(value: Any, digits: int = 2) -> str:
    """A ratio such as ``3.14x``; ``n/a`` for a missing or non-finite one."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}x"


def fmt_pct(value: float | None, digits: int = 0) -> str:
    """A share in [0, 1] as a percentage; ``n/a`` when missing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{100 * value:.{digits}f}%"


def fmt_num(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def fmt_mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def md_cell(text: str) -> str:
    """``text`` safe inside a Markdown table cell (one line, pipes escaped)."""
    return " ".join(str(text).split()).replace("|", "\\|")


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (the ``plot`` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover
        raise ImportError("the benchmark charts need matplotlib: pip install -e '.[plot]'") from exc
    return plt
