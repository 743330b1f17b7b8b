"""``rain generate``: the models loaded (only after every option was checked), then each prompt
decoded, with progress on stderr and the answer on stdout in the form asked for:

- plain text, one answer per prompt (default);
- ``--stream``: the committed token sets as they come;
- ``--json``: one JSON object per prompt (``"event": "result"``);
- ``--stream --json``: JSON lines, one per commit (``"event": "commit"``: the text it adds, its token
  ids and statistics), then the prompt's result object;
- ``--compare``: plain decoding and RAIN side by side, with the search's statistics.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from .options import method_options, served_guard, served_judge
from .progress import Progress, quiet_loading
from .steering import cannot_judge

logger = logging.getLogger("rain")

_STATS = (
    "method",
    "model_calls",
    "searches",
    "evaluations",
    "evaluation_cache_hits",
    "commits",
    "rewinds",
    "node_additions",
    "seconds",
)


def served(base_url: str, model: str | None, args: argparse.Namespace) -> Any:
    """The model a vLLM server serves, with the command's API key."""
    from ..loaders import models

    return models.served_model(base_url, model, api_key=args.api_key)


def guard(args: argparse.Namespace, load_options: dict[str, Any]) -> Any:
    """The guard as the evaluator; its score is continuous (its verdict probability) unless
    ``--scoring`` says otherwise."""
    from .. import Scoring
    from ..loaders import guards

    scoring = args.scoring or Scoring.CONTINUOUS
    if args.guard:
        return guards.load_guard(args.guard, args.guard_preset, scoring=scoring, **load_options)
    url = args.guard_base_url or args.base_url
    return guards.served_guard(url, args.guard_model, args.guard_preset, scoring=scoring, api_key=args.api_key)


def load(args: argparse.Namespace, config: Any, progress: Progress) -> Any:
    """The decoder the options describe: the generator, and the evaluator (a scoring function, a
    guard, a judge, or the generator judging itself). Served models come first (a server that cannot
    be reached is reported before any weights load), then the local ones."""
    from .. import CallableEvaluator, JudgeEvaluator, SelfEvaluator
    from ..baselines.named import make_decoder
    from ..loaders import models as loading  # looked up now, so that tests can stand in for the loaders

    kw = {k: v for k, v in {"device": args.device, "dtype": args.dtype}.items() if v}
    lm = served(args.base_url, args.model, args) if args.engine == "vllm" else None
    evaluator: Any = None
    if args.scoring_function is not None:
        evaluator = CallableEvaluator(args.scoring_function, name=args.evaluator)
    elif served_guard(args):
        evaluator = guard(args, kw)
    elif served_judge(args):
        judge = served(args.judge_base_url or args.base_url, args.judge_model, args)
        evaluator = JudgeEvaluator(judge, args.principle, scoring=config.scoring)
    if lm is None:
        progress.stage(f"loading {args.model or 'the embedded model'}")
        if args.model:
            lm = loading.load_model(args.model, **kw, **({"gguf_file": args.gguf_file} if args.gguf_file else {}))
        else:
            lm = loading.load_default_model(**kw)
    if evaluator is None and args.guard:
        progress.stage(f"loading the guard {args.guard}")
        evaluator = guard(args, kw)
    elif evaluator is None and args.judge:
        progress.stage(f"loading the judge {args.judge}")
        evaluator = JudgeEvaluator(loading.load_model(args.judge, **kw), args.principle, scoring=config.scoring)
    elif evaluator is None:
        evaluator = SelfEvaluator(lm, args.principle, scoring=config.scoring)
    return make_decoder(args.method, lm, evaluator, config, **method_options(args))


def _note_if_it_cannot_judge(dec: Any, progress: Progress) -> None:
    evaluator = dec.evaluator
    if not hasattr(evaluator, "option_logprobs"):
        return
    judge = evaluator.lm
    what = f"self-evaluation by {judge.name}" if judge is dec.lm else f"the judge {judge.name}"
    progress.stage(f"checking whether {what} can judge")
    note = cannot_judge(evaluator, what)
    progress.done()
    if note:
        sys.stderr.write(f"rain: note: {note}\n")
        sys.stderr.flush()


def _stats_line(stats: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={stats[k]:.1f}" if isinstance(stats.get(k), float) else f"{k}={stats.get(k)}"
        for k in _STATS
        if k in stats
    )


def _result_object(prompt: str, result: Any, vanilla: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "event": "result",
        "prompt": prompt,
        "text": result.text,
        "finish_reason": result.finish_reason,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "stats": {k: v for k, v in result.stats.items() if k != "commit_log"},
    }
    if vanilla is not None:
        out["vanilla"] = {"text": vanilla.text, "finish_reason": vanilla.finish_reason, "stats": vanilla.stats}
    return out


def _commit_object(prompt: str, commit: Any) -> dict[str, Any]:
    stats = {k: v for k, v in (commit.stats or {}).items() if k not in ("tree", "chosen", "tokens")}
    return {
        "event": "commit",
        "prompt": prompt,
        "text": commit.text,
        "token_ids": list(commit.token_ids),
        "stats": stats,
    }


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _decode(dec: Any, prompt: str, args: argparse.Namespace, progress: Progress, label: str) -> Any:
    """One prompt's RAIN decode: commits shown (progress) and written (``--stream``) as they come."""
    stream = dec.stream(prompt, keep_trees=bool(args.plot))
    progress.stage(label, max_tokens=dec.config.max_new_tokens)
    try:
        for commit in stream.commits():
            progress.commit(commit.text, len(commit.token_ids), commit.stats)
            if args.stream and args.json:
                if commit.stats is not None or commit.text:
                    _write(json.dumps(_commit_object(prompt, commit)) + "\n")
            elif args.stream:
                _write(commit.text)
    finally:
        stream.close()
        progress.done()
    return stream.result


def generate_all(args: argparse.Namespace, config: Any, verbose: bool) -> int:
    # while --stream writes the answer to the terminal, the text itself is the progress
    writes_to_terminal = args.stream and not args.json and sys.stdout.isatty()
    # the sentence encoder loads at the first decode: bars stay off for the whole command
    with Progress(quiet=args.quiet or writes_to_terminal) as progress, quiet_loading(verbose):
        dec = load(args, config, progress)
        progress.done()
        _note_if_it_cannot_judge(dec, progress)
        for number, prompt in enumerate(args.prompts, 1):
            name = "RAIN" if dec.method == "rain" else dec.method
            label = name if len(args.prompts) == 1 else f"{name}, prompt {number} of {len(args.prompts)}"
            vanilla = None
            if args.compare:
                progress.stage("plain decoding")
                vanilla = dec.vanilla(prompt)
                progress.done()
                if args.stream and not args.json:
                    _write(f"--- plain decoding ---\n{vanilla.text}\n--- {name} ---\n")
            result = _decode(dec, prompt, args, progress, label)
            _report(dec, prompt, result, vanilla, args)
    return 0


def _report(dec: Any, prompt: str, result: Any, vanilla: Any, args: argparse.Namespace) -> None:
    if args.plot:
        from ..plotting import plot_tree

        plot_tree(result.stats["commit_log"][0], dec.lm, path=args.plot)
        logger.info("saved the first commit's search tree to %s", args.plot)
    if args.json:
        _write(json.dumps(_result_object(prompt, result, vanilla)) + "\n")
    elif args.compare:
        if args.stream:
            _write("\n")
        _write(f"=== {prompt}\n")
        if not args.stream and vanilla is not None:
            _write(f"--- plain decoding ({vanilla.stats['seconds']:.1f}s) ---\n{vanilla.text}\n")
            _write(f"--- {'RAIN' if dec.method == 'rain' else dec.method} ---\n{result.text}\n")
        _write(f"[{_stats_line(result.stats)}]\n\n")
    elif args.stream:
        _write("\n")
    else:
        _write(result.text + "\n")
