"""Pictures of a RAIN decode (matplotlib, imported lazily; the ``plot`` extra: ``pip install -e '.[plot]'``).

- ``plot_tree(commit, lm)``: one commit's search tree, node size by visits, colour by value, the
  committed branch outlined.
- ``plot_commits(stats)``: per committed token set, the searches spent and the chosen value.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MAX_LABEL = 14


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover
        raise ImportError("plotting needs matplotlib: pip install -e '.[plot]' in the rain checkout") from exc
    return plt


def _finish(fig: Any, path: str | os.PathLike[str] | None) -> Any:
    """Save ``fig`` as a PNG at ``path`` (written to a temporary file, then renamed: never half-written)."""
    if path is not None:
        target = Path(path)
        if not target.parent.is_dir():
            raise FileNotFoundError(f"cannot save the plot to {target}: folder {target.parent} does not exist")
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fig.savefig(fh, format=target.suffix.lstrip(".") or "png", dpi=120, bbox_inches="tight")
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return fig


def plot_tree(commit: Mapping[str, Any], lm: Any = None, *, path: str | None = None, max_nodes: int = 80) -> Any:
    """Draw the tree stored in a ``commit_log`` entry (decode with ``keep_trees=True``).

    Depth runs left to right; each node shows its token set's text (decoded with ``lm`` when given),
    visits ``N`` and value ``Q``. Returns the matplotlib figure; saves a PNG when ``path`` is given.
    """
    if "tree" not in commit:
        raise ValueError("this commit has no tree: decode with keep_trees=True")
    tree = commit["tree"]
    plt = _pyplot()
    children, visits, values, tokens = tree["children"], tree["visits"], tree["value"], tree["tokens"]
    # keep the most visited nodes, always with their ancestors
    order = sorted(range(len(visits)), key=lambda n: -visits[n])[:max_nodes]
    keep = set()
    for n in order:
        while n != -1 and n not in keep:
            keep.add(n)
            n = tree["parent"][n]
    chosen_path = set()
    n = commit.get("chosen", -1)
    while n not in (-1, None):
        chosen_path.add(n)
        n = tree["parent"][n]

    # leaf-order layout: every kept leaf gets a row, parents sit at the mean of their children
    rows: dict[int, float] = {}

    def place(node: int, next_row: list[int]) -> float:
        kids = [k for k in children[node] if k in keep]
        if not kids:
            rows[node] = next_row[0]
            next_row[0] += 1
        else:
            rows[node] = sum(place(k, next_row) for k in kids) / len(kids)
        return rows[node]

    place(0, [0])
    height = max(3.0, 0.35 * (max(rows.values()) + 1))
    fig, ax = plt.subplots(figsize=(10, height))
    cmap = plt.get_cmap("RdYlGn")
    for node in keep:
        for k in children[node]:
            if k in keep:
                on_path = node in chosen_path and k in chosen_path
                ax.plot(
                    [tree["depth"][node], tree["depth"][k]],
                    [rows[node], rows[k]],
                    color="black" if on_path else "0.75",
                    lw=2.0 if on_path else 0.8,
                    zorder=1,
                )
    xs = [tree["depth"][n] for n in keep]
    ys = [rows[n] for n in keep]
    sizes = [30 + 25 * visits[n] for n in keep]
    colours = [cmap((values[n] + 1) / 2) if visits[n] > 0 else (0.85, 0.85, 0.85, 1.0) for n in keep]
    edges = ["black" if n in chosen_path else "none" for n in keep]
    ax.scatter(xs, ys, s=sizes, c=colours, edgecolors=edges, linewidths=1.5, zorder=2)
    for n in keep:
        if n == 0:
            text = "root"
        elif "texts" in tree:
            text = tree["texts"][n]
        else:
            text = lm.decode(tokens[n]) if lm is not None else str(tokens[n])
        text = text.replace("\n", "\\n")
        if len(text) > MAX_LABEL:
            text = text[: MAX_LABEL - 1] + "\u2026"
        ax.annotate(
            f"{text!r} N={visits[n]:.1f} Q={values[n]:+.2f}",
            (tree["depth"][n], rows[n]),
            xytext=(6, 2),
            textcoords="offset points",
            fontsize=7,
        )
    ax.set_xlabel("depth (token sets from the committed context)")
    ax.set_yticks([])
    ax.set_title(f"RAIN search tree: {commit.get('searches', '?')} searches, committed branch outlined")
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(-1, 1))
    fig.colorbar(sm, ax=ax, label="value Q")
    ax.set_xlim(-0.3, max(xs) + 1.2)
    return _finish(fig, path)


def plot_commits(stats: Mapping[str, Any], lm: Any = None, *, path: str | None = None) -> Any:
    """Searches spent (bars) and the committed branch's value (line) for each committed token set."""
    log = stats.get("commit_log") or []
    if not log:
        raise ValueError("no commit_log in these stats: pass RainResult.stats from generate()")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 3.5))
    idx = list(range(len(log)))
    ax.bar(idx, [c["searches"] for c in log], color="0.7", label="searches this commit")
    ax.set_ylabel("searches")
    ax.set_xlabel("committed token set")
    if lm is not None or all("text" in c for c in log):
        labels = [(c["text"] if "text" in c else lm.decode(c["tokens"])).replace("\n", "\\n")[:10] for c in log]
        ax.set_xticks(idx, labels, rotation=60, fontsize=7)
    ax2 = ax.twinx()
    ax2.plot(idx, [c["value"] for c in log], color="tab:green", marker="o", label="value of the committed branch")
    ax2.set_ylim(-1.05, 1.05)
    ax2.set_ylabel("value Q")
    fig.legend(loc="upper right", fontsize=8)
    ax.set_title("RAIN: effort and value per committed token set")
    return _finish(fig, path)
