"""The speed benchmark: ``rain bench speed [--quick] [--out DIR]`` (benchmarks/README.md).

``plan`` (what is measured), ``sections`` (the measurements, returning ``records``), ``report``
(Markdown and JSON). Runs on the embedded SmolLM2-135M-Instruct on CPU and, when a GPU is present,
on the same model folder on CUDA in bfloat16 as a second column.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..output import default_folder, fmt_x
from .plan import Plan
from .records import DeviceResult, SpeedReport
from .report import met, render_markdown, render_table, report_name, write
from .sections import run

__all__ = ["Plan", "SpeedReport", "main", "render_markdown", "render_table", "report_name", "run", "write"]


def main(quick: bool = False, out: str | None = None) -> int:
    """Run the speed benchmark, print the summary table, write ``<out>/speed-*.md`` and ``.json``."""
    import torch
    from tqdm.auto import tqdm

    from rain_core.loaders.embedded import MissingModelError

    plan = Plan.quick() if quick else Plan.full()
    cuda = torch.cuda.is_available()
    folder = Path(out) if out else default_folder()
    total = plan.total_runs() * (2 if cuda else 1)
    with tqdm(total=total, desc="rain bench speed", unit=" decode", file=sys.stderr, dynamic_ncols=True) as bar:
        started = [False]

        def progress(label: str) -> None:
            """Called as each decode starts: count the one before it and name this one."""
            if started[0]:
                bar.update(1)
            started[0] = True
            bar.set_postfix_str(label, refresh=True)

        try:
            report = run(plan, progress, cuda=cuda)
        except MissingModelError as exc:
            sys.stderr.write(f"rain bench: {exc}\n")
            return 2
        bar.update(total - bar.n)
    md_path, json_path = write(report, folder)
    sys.stdout.write(render_table(report))
    for dev_name, dev in report.devices.items():
        if isinstance(dev, DeviceResult):
            for t in dev.targets.values():
                sys.stdout.write(f"{dev_name}: {t.target}: {fmt_x(t.value)} — {met(t.met)}\n")
    if quick:
        sys.stdout.write("(quick mode: tiny budgets, not the official defaults)\n")
    sys.stdout.write(f"report: {md_path} and {json_path}\n")
    return 0
