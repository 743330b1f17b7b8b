"""``rain serve`` and ``python -m rain_core.serve``: options, checks, loading, and the uvicorn server
that drains on SIGTERM.

Every option is checked before any weights load (the generator, evaluator and RAIN options by the
same rules as ``rain generate``; the limits against the server's own settings); a bad one ends the
command with one ``rain: error: ...`` line and exit status 2. SIGTERM (or Ctrl-C) drains: new
requests get 503, requests in flight finish (at most ``--drain-seconds``), then the process exits; a
second signal exits at once."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

from ..cli import errors as cli_errors
from ..cli import generate as cli_generate
from ..cli import options as cli_options
from ..evaluators.guards import GUARD_PRESETS

__all__ = ["add_serve_command", "build_parser", "main"]

logger = logging.getLogger("rain.serve")

API_KEY_ENV = "RAIN_SERVE_API_KEY"


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log more, with tracebacks")
    g = p.add_argument_group("the generator")
    g.add_argument(
        "--model",
        default=None,
        help="a causal LM folder or cached hub id (default: the embedded "
        "SmolLM2-135M); with --engine vllm the served model name (default: the only one served)",
    )
    g.add_argument(
        "--engine",
        choices=["transformers", "vllm"],
        default="transformers",
        help="transformers: the model in this process; vllm: a vLLM server (--base-url)",
    )
    g.add_argument("--base-url", default=None, help="the vLLM server, http://HOST:PORT/v1 (with --engine vllm)")
    g.add_argument("--engine-api-key", dest="api_key", default=None, help="the vLLM servers' --api-key, if any")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    g.add_argument("--dtype", default=None, choices=cli_options.DTYPES, help="weights' dtype (default: float32 on CPU)")
    g.add_argument("--gguf-file", default=None, help="the .gguf file in the --model folder, for GGUF weights")
    g.add_argument("--served-model-name", default=None, help="the name clients use (default: the model's own)")
    e = p.add_argument_group("the evaluator (default: the generator judges itself)")
    e.add_argument("--principle", default="harmless", help="harmless, truthful, positive, or a .toml file")
    e.add_argument(
        "--scoring",
        choices=["discrete", "continuous"],
        default=None,
        help="the evaluator's score (default: discrete; continuous for a guard)",
    )
    e.add_argument("--judge", default=None, help="a separate judge model folder or cached hub id")
    e.add_argument("--judge-base-url", default=None, help="a vLLM server whose model judges")
    e.add_argument("--judge-model", default=None, help="the judge's served model name")
    e.add_argument("--guard", default=None, help="a guard model folder or cached hub id (docs/guards.md)")
    e.add_argument("--guard-base-url", default=None, help="a vLLM server whose guard model judges")
    e.add_argument("--guard-model", default=None, help="the guard's served model name")
    e.add_argument(
        "--guard-preset",
        choices=sorted(GUARD_PRESETS),
        default=None,
        help="the guard's format (default: inferred from its name)",
    )
    d = p.add_argument_group("RAIN's defaults (a request may change them within the limits)")
    d.add_argument(
        "--preset",
        choices=["official", "fast"],
        default="official",
        help="official: the authors' search (default); fast: RainConfig.fast()",
    )
    d.add_argument("--max-new-tokens", type=int, default=None, help="new tokens when a request sets no max_tokens")
    d.add_argument("--max-searches", type=int, default=None, help="T_max, searches per commit (official 50)")
    d.add_argument("--extra-searches", type=int, default=None, help="T_extra (official 15)")
    d.add_argument("--parallel-searches", type=int, default=None, help="searches side by side per round (default 1)")
    d.add_argument("--max-seconds", type=float, default=None, help="deadline per answer (default: none)")
    d.add_argument("--seed", type=int, default=None, help="seed of requests that send none (default: a fresh one)")
    d.add_argument("--temperature", type=float, default=None, help="temperature of requests that send none")
    d.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="any other RainConfig field, VALUE as JSON (e.g. --set num_candidates=4); repeatable",
    )
    s = p.add_argument_group("the server")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument(
        "--api-key",
        dest="server_key",
        default=None,
        help=f"require Authorization: Bearer KEY on every endpoint but /health (or set ${API_KEY_ENV})",
    )
    s.add_argument(
        "--max-concurrent",
        type=int,
        default=None,
        help="requests decoding at once (default: 1 on the in-process model, 16 on vLLM)",
    )
    s.add_argument("--max-queue", type=int, default=8, help="requests waiting for a turn; one more gets 429")
    s.add_argument("--max-body-bytes", type=int, default=4 * 1024 * 1024, help="largest request body (413 above)")
    s.add_argument("--drain-seconds", type=float, default=600.0, help="on SIGTERM, how long requests may finish")
    s.add_argument("--log-prompts", action="store_true", help="log each request's prompt (never logged otherwise)")
    lim = p.add_argument_group("limits per request (default: the server's own setting; a request may lower it)")
    for name, kind, what in (
        ("max-tokens", int, "new tokens (max_tokens)"),
        ("max-searches", int, "rain.max_searches"),
        ("extra-searches", int, "rain.extra_searches"),
        ("num-candidates", int, "rain.num_candidates"),
        ("parallel-searches", int, "rain.parallel_searches"),
        ("max-simulation-tokens", int, "rain.max_simulation_tokens (also given to requests that set none)"),
        ("max-seconds", float, "rain.max_seconds, the deadline (also given to requests that set none)"),
    ):
        lim.add_argument(f"--limit-{name}", type=kind, default=None, help=f"the highest {what}")
    lim.add_argument("--limit-n", type=int, default=4, help="most answers per request (n)")


def build_parser(prog: str = "rain serve") -> argparse.ArgumentParser:
    parser = cli_options.Parser(prog=prog, description="RAIN behind an OpenAI-compatible HTTP endpoint")
    _add_options(parser)
    return parser


def add_serve_command(sub: Any, name: str = "serve") -> None:
    """``rain serve``: a subcommand of ``rain`` (``rain_core.cli`` adds it)."""
    parser = sub.add_parser(name, help="serve RAIN behind an OpenAI-compatible HTTP endpoint (docs/serve.md)")
    _add_options(parser)
    parser.set_defaults(run=_run)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rain_core.serve``."""
    args = build_parser("python -m rain_core.serve").parse_args(argv)
    return _run(args)


def _checked(args: argparse.Namespace) -> tuple[Any, Any]:
    """The server's ``RainConfig`` and ``ServeOptions``, every option checked, nothing loaded."""
    import importlib.util

    from ..config import RainConfig

    missing = [m for m in ("fastapi", "uvicorn", "prometheus_client") if importlib.util.find_spec(m) is None]
    if missing:
        raise cli_errors.UsageError(f"rain serve needs {', '.join(missing)}: pip install 'rain-align[serve]'")
    for name in ("plot", "stop", "evaluator", "n", "max_tries", "block_tokens", *cli_errors.RAIN_OPTIONS):
        if not hasattr(args, name):  # rain generate's options that serve has not
            setattr(args, name, None)
    args.method = "rain"
    config = cli_options.check(args)
    overrides: dict[str, Any] = {}
    for item in args.settings:
        key, sep, value = item.partition("=")
        if not sep or key not in RainConfig.model_fields:
            raise cli_errors.UsageError(f"--set {item!r}: give FIELD=VALUE with a RainConfig field")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value  # a bare word, e.g. --set scoring=continuous
    if args.seed is None:
        overrides["seed"] = None  # each request that sends no seed draws a fresh one
    config = config.merged(**overrides)
    from .app import ServeOptions
    from .settings import Limits

    limits = Limits(
        max_tokens=args.limit_max_tokens,
        max_searches=args.limit_max_searches,
        extra_searches=args.limit_extra_searches,
        num_candidates=args.limit_num_candidates,
        parallel_searches=args.limit_parallel_searches,
        max_simulation_tokens=args.limit_max_simulation_tokens,
        max_seconds=args.limit_max_seconds,
        n=args.limit_n,
    )
    limits.resolved(config)
    concurrent = args.max_concurrent if args.max_concurrent is not None else (16 if args.engine == "vllm" else 1)
    if concurrent < 1 or args.max_queue < 0 or args.max_body_bytes < 1024:
        raise cli_errors.UsageError("--max-concurrent must be >= 1, --max-queue >= 0 and --max-body-bytes >= 1024")
    if not 0 < args.port < 65536:
        raise cli_errors.UsageError(f"--port must be in 1..65535, got {args.port}")
    key = args.server_key or os.environ.get(API_KEY_ENV) or None
    options = ServeOptions(
        api_key=key,
        max_concurrent=concurrent,
        max_queue=args.max_queue,
        max_body_bytes=args.max_body_bytes,
        limits=limits,
        log_prompts=args.log_prompts,
    )
    return config, options


def load_parts(args: argparse.Namespace, config: Any) -> Any:
    """The generator, the evaluator's parts and the sentence encoder, loaded once at start."""
    from ..loaders import models as loading
    from ..principles import BUILTIN_PRINCIPLES, load_principle
    from ..protocols import ProvidesEncoder
    from .runtime import Parts

    kw = {k: v for k, v in {"device": args.device, "dtype": args.dtype}.items() if v}
    if args.engine == "vllm":
        lm = cli_generate.served(args.base_url, args.model, args)
    elif args.model:
        lm = loading.load_model(args.model, **kw, **({"gguf_file": args.gguf_file} if args.gguf_file else {}))
    else:
        lm = loading.load_default_model(**kw)
    evaluator = judge = None
    if args.guard or args.guard_base_url or args.guard_model:
        evaluator = cli_generate.guard(args, kw)
    elif args.judge_base_url or args.judge_model:
        judge = cli_generate.served(args.judge_base_url or args.base_url, args.judge_model, args)
    elif args.judge:
        judge = loading.load_model(args.judge, **kw)
    principle = args.principle if args.principle in BUILTIN_PRINCIPLES else load_principle(args.principle)
    encoder = lm.default_encoder() if isinstance(lm, ProvidesEncoder) else None
    names = tuple(dict.fromkeys(n for n in (args.served_model_name, lm.name) if n))
    return Parts(lm, config, principle, judge=judge, evaluator=evaluator, encoder=encoder, served_names=names)


def _run(args: argparse.Namespace) -> int:
    verbose = bool(getattr(args, "verbose", False))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("rain").setLevel(logging.DEBUG if verbose else logging.INFO)
    try:
        config, options = _checked(args)  # before anything loads
    except Exception as exc:
        return cli_errors.fail(exc, verbose, 2)
    try:
        import uvicorn

        from .app import create_app

        t0 = time.monotonic()
        parts = load_parts(args, config)
        app = create_app(parts, options)
        app.state.server.runtime.decoder(None, None)  # the default evaluator, made before the first request
        logger.info(
            "serving %s on http://%s:%d/v1 (loaded in %.1f s; %d at a time, %d queued; %s)",
            ", ".join(parts.served_names),
            args.host,
            args.port,
            time.monotonic() - t0,
            options.max_concurrent,
            options.max_queue,
            "API key required" if options.api_key else "no API key",
        )
        if args.host not in ("127.0.0.1", "localhost", "::1") and not options.api_key:
            logger.warning("listening on %s without --api-key: anyone who reaches this port can use it", args.host)
        server = _DrainingServer(
            uvicorn.Config(app, host=args.host, port=args.port, lifespan="off", timeout_graceful_shutdown=5),
            app.state.server,
            args.drain_seconds,
        )
        server.run()
        return 0
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        return cli_errors.fail(exc, verbose, 1)


def _draining_server_class() -> type:
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """uvicorn's server, but the first SIGTERM/SIGINT drains (503 for new requests, the ones in
        flight finish) and exits once nothing runs; a second one exits at once."""

        def __init__(self, config: Any, rain: Any, drain_seconds: float) -> None:
            super().__init__(config)
            self.rain = rain
            self.drain_seconds = drain_seconds
            self.drain_deadline: float | None = None

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if self.drain_deadline is not None:
                logger.warning("second %s: exiting now", signal.Signals(sig).name)
                self.force_exit = True
                super().handle_exit(sig, frame)
                return
            self.drain_deadline = time.monotonic() + self.drain_seconds
            self.rain.drain()
            logger.warning(
                "%s: draining (new requests get 503; %d in flight may finish within %.0f s)",
                signal.Signals(sig).name,
                self.rain.active,
                self.drain_seconds,
            )

        async def on_tick(self, counter: int) -> bool:
            deadline = self.drain_deadline
            if deadline is not None and not self.should_exit:
                if self.rain.idle():
                    logger.info("drained: exiting")
                    self.should_exit = True
                elif time.monotonic() > deadline:
                    logger.warning("--drain-seconds passed with %d request(s) in flight: exiting", self.rain.active)
                    self.should_exit = True
            return bool(await super().on_tick(counter))

    return DrainingServer


def _DrainingServer(config: Any, rain: Any, drain_seconds: float) -> Any:  # noqa: N802 (a class made on first use)
    return _draining_server_class()(config, rain, drain_seconds)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
