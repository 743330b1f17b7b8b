"""A load test of ``rain serve``: ``python benchmarks/serve_load.py [--quick] [--report]``.

16 clients (``--clients``) send chat requests for 2 minutes (``--seconds``) to a ``rain serve`` on the
embedded model with small budgets (started here on a free port, or ``--url`` for one already
running). Half the clients stream; a quarter (half of the streaming ones) disconnect as soon as
their first piece of text arrives; the others read every answer to its end. A client told 429 waits
the ``Retry-After`` it was given (at most 5 s) and tries again.

It reports the requests served, 429s, disconnects, errors (any other failure: a status other than
200 and 429, an error event inside a stream, a client timeout), broken streams (a stream that ended
without its last chunk, the one with ``finish_reason``, or without ``[DONE]``), p50/p95 latency of
the served requests (queueing included) and of the first streamed piece, and the server's
``/metrics`` afterwards (decodes still in flight must fall to 0: disconnected clients freed the
model). Target: no errors other than 429s and no broken streams.

It prints the table and, with ``--report``, writes ``benchmarks/results/serve-load.md`` and ``.json``
(``serve-load-quick.*`` with ``--quick``: 4 clients for 20 s, smaller budgets), each atomically.

    python benchmarks/serve_load.py --report          # the full run (2 minutes, machine otherwise idle)
    python benchmarks/serve_load.py --quick           # a smoke run (about a minute with the start)
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = "rain.serve-load"
VERSION = 1
MODEL = "SmolLM2-135M-Instruct"
# rain serve's options for the run: the embedded model with small budgets (one answer: a few seconds)
SERVER_OPTIONS = (
    "--max-new-tokens", "16", "--max-searches", "4", "--extra-searches", "2",
    "--set", "min_visits=2", "--set", "num_candidates=4", "--set", "max_simulation_tokens=8",
)  # fmt: skip
# --quick: smaller still, so that a smoke run takes about a minute with the server's start
QUICK_OPTIONS = ("--max-new-tokens", "8", "--max-searches", "2", "--extra-searches", "1",
                 "--set", "min_visits=1", "--set", "num_candidates=3", "--set", "max_simulation_tokens=4")  # fmt: skip
PROMPTS = (
    "Name three fruits.",
    "How do I boil an egg?",
    "Write one sentence about the sea.",
    "What is the capital of Italy?",
    "Give me a tip for sleeping well.",
    "How do I pick the lock of my neighbour's door?",
)


@dataclass
class Outcome:
    """One request as a client saw it."""

    client: int
    kind: str  # "json", "stream", "stream-disconnect"
    status: int | None = None
    result: str = ""  # "served", "disconnected", "429", "error", "broken"
    seconds: float = 0.0
    first_piece: float | None = None
    detail: str = ""


@dataclass
class Run:
    clients: int
    seconds: float
    outcomes: list[Outcome] = field(default_factory=list)


async def _stream(client: httpx.AsyncClient, url: str, body: dict[str, Any], out: Outcome, leave: bool) -> None:
    t0 = time.monotonic()
    async with client.stream("POST", url, json=body) as response:
        out.status = response.status_code
        if response.status_code != 200:
            await response.aread()
            _failed(out, response)
            return
        finished = done = False
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: ") :]
            if data == "[DONE]":
                done = True
                break
            event = json.loads(data)
            if "error" in event:
                out.result, out.detail = "error", f"error event: {event['error'].get('message', '')[:200]}"
                return
            for choice in event.get("choices", []):
                if choice.get("delta", {}).get("content") and out.first_piece is None:
                    out.first_piece = time.monotonic() - t0
                    if leave:
                        out.result, out.seconds = "disconnected", out.first_piece
                        return  # leaving the block closes the connection mid-stream
                if choice.get("finish_reason"):
                    finished = True
        out.seconds = time.monotonic() - t0
        if finished and done:
            out.result = "served"
        else:
            out.result = "broken"
            out.detail = f"stream ended without {'its last chunk' if not finished else '[DONE]'}"


def _failed(out: Outcome, response: httpx.Response) -> None:
    if response.status_code == 429:
        out.result = "429"
        out.detail = response.headers.get("Retry-After", "")
        return
    out.result = "error"
    try:
        out.detail = f"HTTP {response.status_code}: {response.json()['error']['message'][:200]}"
    except (ValueError, KeyError, TypeError):
        out.detail = f"HTTP {response.status_code}: {response.text[:200]}"


async def _client(i: int, base_url: str, key: str | None, deadline: float, run: Run) -> None:
    streaming = i % 2 == 0
    leave = i % 4 == 0  # a quarter of the clients: half of the streaming ones
    kind = "stream-disconnect" if leave else ("stream" if streaming else "json")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    url = f"{base_url}/chat/completions"
    n = 0
    async with httpx.AsyncClient(timeout=300, headers=headers) as client:
        while time.monotonic() < deadline:
            prompt = PROMPTS[(i + n) % len(PROMPTS)]
            n += 1
            body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "stream": streaming}
            out = Outcome(i, kind)
            t0 = time.monotonic()
            try:
                if streaming:
                    await _stream(client, url, body, out, leave)
                else:
                    response = await client.post(url, json=body)
                    out.status, out.seconds = response.status_code, time.monotonic() - t0
                    if response.status_code == 200 and response.json()["choices"][0]["finish_reason"]:
                        out.result = "served"
                    else:
                        _failed(out, response)
            except (httpx.HTTPError, ValueError) as exc:
                out.result, out.detail = "error", f"{type(exc).__name__}: {exc}"[:200]
            run.outcomes.append(out)
            if out.result == "429":
                wait = min(5.0, float(out.detail or 1), max(0.0, deadline - time.monotonic()))
                await asyncio.sleep(wait)


async def _drive(base_url: str, key: str | None, clients: int, seconds: float) -> Run:
    run = Run(clients, seconds)
    deadline = time.monotonic() + seconds
    await asyncio.gather(*(_client(i, base_url, key, deadline, run) for i in range(clients)))
    return run


def _metrics(url: str, key: str | None) -> dict[str, float]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    out = {}
    for line in httpx.get(f"{url}/metrics", headers=headers, timeout=30).text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def summarise(run: Run, after: dict[str, float], settle_seconds: float) -> dict[str, Any]:
    by = {r: [o for o in run.outcomes if o.result == r] for r in ("served", "disconnected", "429", "error", "broken")}
    served = [o.seconds for o in by["served"]]
    firsts = [o.first_piece for o in run.outcomes if o.first_piece is not None]
    return {
        "requests": len(run.outcomes),
        "served": len(by["served"]),
        "served_streams": sum(o.kind != "json" for o in by["served"]),
        "served_json": sum(o.kind == "json" for o in by["served"]),
        "disconnected": len(by["disconnected"]),
        "rejected_429": len(by["429"]),
        "errors": len(by["error"]),
        "broken_streams": len(by["broken"]),
        "error_details": sorted({o.detail for o in by["error"] + by["broken"]})[:20],
        "latency_p50": _pct(served, 50),
        "latency_p95": _pct(served, 95),
        "first_piece_p50": _pct(firsts, 50),
        "first_piece_p95": _pct(firsts, 95),
        "served_per_minute": len(by["served"]) / (run.seconds / 60.0),
        "in_flight_after": after.get("rain_decodes_in_flight"),
        "queue_after": after.get("rain_queue_length"),
        "seconds_until_idle": settle_seconds,
        "server_cancelled_decodes": after.get("rain_decodes_cancelled_total"),
        "server_commits": after.get("rain_commits_total"),
        "target_met": not by["error"] and not by["broken"],
    }


def render_table(s: dict[str, Any]) -> str:
    def sec(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f} s"

    rows = [
        ("requests sent", s["requests"]),
        ("served (JSON / streams)", f"{s['served']} ({s['served_json']} / {s['served_streams']})"),
        ("served per minute", f"{s['served_per_minute']:.1f}"),
        ("disconnected early (on purpose)", s["disconnected"]),
        ("429 (queue full)", s["rejected_429"]),
        ("errors (other than 429)", s["errors"]),
        ("broken streams", s["broken_streams"]),
        ("latency of served requests, p50 / p95", f"{sec(s['latency_p50'])} / {sec(s['latency_p95'])}"),
        ("first streamed piece, p50 / p95", f"{sec(s['first_piece_p50'])} / {sec(s['first_piece_p95'])}"),
        ("decodes in flight after the run", f"{s['in_flight_after']} (idle after {s['seconds_until_idle']:.1f} s)"),
        ("target: no errors but 429s, no broken stream", "met" if s["target_met"] else "NOT met"),
    ]
    lines = ["| figure | value |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _machine() -> dict[str, Any]:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    except OSError:
        rev = ""
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "git": rev.strip(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 clients for 20 s (a smoke run)")
    parser.add_argument("--clients", type=int, default=None, help="clients (default 16; 4 with --quick)")
    parser.add_argument("--seconds", type=float, default=None, help="how long they send (default 120; 20 with --quick)")
    parser.add_argument("--url", default=None, help="a running rain serve, http://HOST:PORT (default: start one)")
    parser.add_argument("--api-key", default=None, help="its --api-key, if it has one")
    parser.add_argument("--max-queue", type=int, default=8, help="the started server's --max-queue")
    parser.add_argument("--report", action="store_true", help="write the report (Markdown and JSON) into --out")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="report folder")
    args = parser.parse_args(argv)
    clients = args.clients or (4 if args.quick else 16)
    seconds = args.seconds or (20.0 if args.quick else 120.0)
    machine = _machine()
    server = None
    options = [*(QUICK_OPTIONS if args.quick else SERVER_OPTIONS), "--max-queue", str(args.max_queue)]
    if args.url is None:
        sys.path.insert(0, str(ROOT))
        from rain_core.serve.launch import LocalRainServer

        print("starting rain serve on the embedded model ...", file=sys.stderr)
        server = LocalRainServer(options, env={"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
        server.start(timeout=600)
        url = server.url
    else:
        url = args.url.rstrip("/").removesuffix("/v1")
    try:
        print(f"{clients} clients for {seconds:.0f} s against {url} ...", file=sys.stderr)
        run = asyncio.run(_drive(f"{url}/v1", args.api_key, clients, seconds))
        t0 = time.monotonic()
        after = _metrics(url, args.api_key)
        while after.get("rain_decodes_in_flight", 0) and time.monotonic() - t0 < 60:
            time.sleep(0.2)
            after = _metrics(url, args.api_key)
        summary = summarise(run, after, time.monotonic() - t0)
    finally:
        if server is not None:
            server.stop()
    table = render_table(summary)
    print(table)
    for detail in summary["error_details"]:
        print(f"  {detail}")
    if args.report:
        name = "serve-load-quick" if args.quick else "serve-load"
        config = {"clients": clients, "seconds": seconds, "server": url if args.url else " ".join(options)}
        report = {"schema": SCHEMA, "version": VERSION, "machine": machine, "config": config,
                  "summary": summary, "outcomes": [asdict(o) for o in run.outcomes]}  # fmt: skip
        out = Path(args.out)
        write_atomic(out / f"{name}.json", json.dumps(report, indent=2) + "\n")
        write_atomic(out / f"{name}.md", _markdown(machine, config, table))
        print(f"wrote {out / name}.md and .json", file=sys.stderr)
    return 0 if summary["target_met"] else 1


def _markdown(machine: dict[str, Any], config: dict[str, Any], table: str) -> str:
    return (
        "# rain serve under load\n\n"
        f"`python benchmarks/serve_load.py` on {machine['date']} (git {machine['git']}, {machine['cpus']} CPUs, load "
        f"average at the start {', '.join(f'{x:.1f}' for x in machine['load_average_at_start'])}): "
        f"{config['clients']} clients for {config['seconds']:.0f} s, half streaming, a quarter disconnecting at their "
        f"first piece; the server: `rain serve {config['server']}` (the embedded SmolLM2-135M-Instruct, one decode at "
        "a time, the rest queued).\n\n" + table
    )


if __name__ == "__main__":
    sys.exit(main())
