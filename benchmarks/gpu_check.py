"""The prepared GPU check: one command, a few minutes on one GPU, no internet, nothing downloaded.

    bash benchmarks/gpu_check.sh                                          # on the GPU machine
    python benchmarks/gpu_check.py --device cpu --quick --tokenizer DIR   # a dry run anywhere
    bash benchmarks/gpu_rehearsal.sh      # the dry run under the GPU machine's conditions (make test)

It needs only PyTorch, transformers, the carried wheels (gpu_prep.sh) and the carried tokenizer:

1. models with random weights: one of SmolLM2-135M's shape, saved to a folder and loaded back with
   ``rain_core.load_model(folder, device=<device>, dtype="bfloat16")`` (the path users take), and one
   of a 7B Llama's shape made directly on the device; the embedded SmolLM2-135M-Instruct too when its
   folder is already on the machine (not with ``--quick``);
2. a sentence encoder of all-MiniLM-L6-v2's shape with random weights (``RandomMiniLM``), so the
   similarity update and dynamic node addition run on the device (the packaged encoder is not there);
3. per model, one row each: plain decoding; RAIN with an evaluator that approves everything (the best
   case: searches stop early), the fast preset, one that approves nothing (the worst case: every
   commit spends its whole budget), self-evaluation (``SelfEvaluator``, the default) and a judge
   (``JudgeEvaluator`` on a second engine over the same weights); the approve-all, approve-nothing and
   self-evaluation rows again with ``parallel_searches=8``, and the approve-nothing row with
   ``parallel_searches=32``, where ``RainConfig`` has that field; every RAIN row gives its forward
   passes and seconds per round (a round: the searches run side by side, one search at B=1);
4. per model, the cached and batched log-probabilities against a recomputation without cache or
   batching (``lm.variant(reuse_cache=False, batch=False)``), within a tolerance for the dtype;
5. one LangChain and one LlamaIndex call through the adapters (skipped when those are not installed);
6. per model, a short run of ``rain bench quality --methods``' comparison: plain decoding, RAIN (both
   presets), best-of-8, check-retry, blockwise best-of-4 and the escalating decoder on the hard
   difficulty prompts (a scoring function rejects a word the embedded model writes in about 95% of
   its answers), each row with its model calls, generated tokens, seconds and the share of answers
   the scoring function approves. Random weights seldom write the word, so on them the rows measure
   cost only; on the embedded model (when its folder is on the machine) they measure both.

Each row is warmed up on another prompt first, and the prefix cache is cleared before it, so no row
inherits another's states or peak memory. A row that raises is recorded with its error and the check
goes on (after a CUDA error the process's GPU state is lost, so the rows left are marked not run). The
report (Markdown and JSON, in ``--out``, default ``$OUT`` or the current folder) is rewritten after
every row, so a run cut short still leaves one. Exit status: 1 when a row or a comparison failed.

Random weights cost the same per forward pass as trained ones, but they change where simulations stop
(a random model rarely writes a clause boundary), so RAIN rows cap simulations and report simulated
tokens per search; each decode has a deadline (``--max-seconds``) and rows that would start after
``--budget-seconds`` are reported as skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PROMPTS = ("How do I bake a loaf of bread at home?", "Write a short story about a lighthouse keeper.")
WARM_PROMPT = "Name three colours."
SHAPES: dict[str, dict[str, Any]] = {
    # SmolLM2-135M-Instruct's shape
    "smol": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        rope_theta=100000.0,
    ),
    # a 7B Llama's shape (Llama-2-7B), with the embedded tokenizer's vocabulary
    "llama7b": dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    ),
    # for a dry run on CPU
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    ),
}
# all-MiniLM-L6-v2's shape (a 6-layer BERT, 384 wide), on the carried tokenizer's vocabulary
MINILM = dict(
    hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536, max_position_embeddings=512
)
# the largest cached-versus-uncached log-probability difference accepted, by dtype: float32 differs
# only in summation order; 16-bit activations round at every layer
TOLERANCE = {"torch.float32": 1e-3, "torch.bfloat16": 0.1, "torch.float16": 0.05}
CUDA_LOST = ("device-side assert", "CUDA error", "illegal memory access")


def approve_all(prompt: str, response: str) -> float:
    return 1.0


def approve_nothing(prompt: str, response: str) -> float:
    return -1.0


class RandomMiniLM:
    """An ``Encoder`` (``rain_core.protocols``): a BERT of all-MiniLM-L6-v2's shape with random weights,
    mean pooling over real tokens and L2 normalisation, as the packaged encoder computes them. It costs
    what the real one costs per call; its similarities mean nothing."""

    def __init__(self, tokenizer: Any, device: str, *, seed: int = 0, max_length: int = 256) -> None:
        import torch
        from transformers import BertConfig, BertModel

        self._torch = torch
        self.tokenizer = tokenizer
        self.device = device
        self.max_length = max_length
        torch.manual_seed(seed)
        config = BertConfig(vocab_size=len(tokenizer), **MINILM)
        with torch.device(device):
            self.model = BertModel(config, add_pooling_layer=False).eval()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        torch = self._torch
        rows = [self.tokenizer.encode(t, add_special_tokens=False)[: self.max_length] or [0] for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows], device=self.device)  # (B, T)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=self.device)  # (B, T)
        with torch.inference_mode():
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, H)
        weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)  # (B, H)
        vectors: np.ndarray = torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy()
        return vectors


# --- the device ---------------------------------------------------------------------------------------
def device_info(device: str) -> dict[str, Any]:
    """Name and memory of ``device`` itself (``cuda:1`` reads GPU 1, not GPU 0)."""
    import torch

    dev = torch.device(device)
    if dev.type != "cuda":
        return {"device": device, "device_name": platform.processor() or platform.machine() or "cpu"}
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    return {"device": f"cuda:{index}", "device_name": props.name, "device_memory_bytes": int(props.total_memory)}


def peak_reset(device: str) -> None:
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)


def peak(device: str) -> int | None:
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        return int(torch.cuda.max_memory_allocated(dev))
    return None


# --- models -------------------------------------------------------------------------------------------
def load_tokenizer(path: str | None) -> Any:
    from transformers import AutoTokenizer

    if path:
        return AutoTokenizer.from_pretrained(path)
    from rain_core.loaders.embedded import DEFAULT_MODEL_NAME, cache_dir

    folder = cache_dir() / DEFAULT_MODEL_NAME
    if not (folder / "tokenizer.json").is_file():
        raise SystemExit(f"no tokenizer: pass --tokenizer DIR (a folder with tokenizer.json), {folder} has none")
    return AutoTokenizer.from_pretrained(str(folder))


def _config(shape: str, tokenizer: Any) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **SHAPES[shape],
    )


def random_model_from_folder(shape: str, tokenizer: Any, device: str, folder: Path) -> Any:
    """Random weights of ``shape`` saved to ``folder``, then loaded as users load a checkpoint."""
    import torch
    from transformers import LlamaForCausalLM

    from rain_core import load_model

    torch.manual_seed(0)
    model = LlamaForCausalLM(_config(shape, tokenizer)).to(torch.bfloat16)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    del model
    return load_model(str(folder), device=device, dtype="bfloat16")


def random_model_on_device(shape: str, tokenizer: Any, device: str) -> Any:
    """Random weights of ``shape`` made directly on ``device`` in bf16 (no folder: 7B would take
    minutes to write)."""
    import torch
    from transformers import LlamaForCausalLM

    from rain_core import TransformersLM

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(_config(shape, tokenizer))
    finally:
        torch.set_default_dtype(previous)
    return TransformersLM(model.eval(), tokenizer, name=f"random {shape}")


# --- the report ---------------------------------------------------------------------------------------
def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Report:
    """The rows so far, rewritten to ``out`` (gpu-check.md and .json) after each one."""

    def __init__(self, out: Path, meta: dict[str, Any]) -> None:
        self.out = out
        self.meta = meta
        self.rows: list[dict[str, Any]] = []
        self.comparisons: list[dict[str, Any]] = []
        self.smoke: dict[str, str] = {}
        self.notes: list[str] = []
        self.t_start = time.perf_counter()
        out.mkdir(parents=True, exist_ok=True)

    @property
    def failed(self) -> list[str]:
        bad = [f"{r['model']} / {r['decoding']}" for r in self.rows if r["status"] == "failed"]
        bad += [
            f"{c['model']} / log-probabilities" for c in self.comparisons if c["status"] in ("failed", "over tolerance")
        ]
        bad += [f"adapters / {name}" for name, result in self.smoke.items() if result.startswith("FAILED")]
        return bad

    def data(self) -> dict[str, Any]:
        return {
            **self.meta,
            "rows": self.rows,
            "comparisons": self.comparisons,
            "smoke": self.smoke,
            "notes": self.notes,
            "failed": self.failed,
            "seconds": time.perf_counter() - self.t_start,
        }

    def write(self) -> None:
        data = self.data()
        _write(self.out / "gpu-check.json", json.dumps(data, indent=2, default=str))
        _write(self.out / "gpu-check.md", render(data))


def render(report: dict[str, Any]) -> str:
    lines = [
        f"# rain GPU check ({report['device_name']}, {report['device']})",
        "",
        f"torch {report['torch']}, transformers {report['transformers']}, Python {report['python']}; "
        f"{report['max_new_tokens']} new tokens per prompt, {report['prompts']} prompt(s); search budget "
        f"{report['budget']}; encoder: {report['encoder']}. Random-weight models cost the same per forward pass as "
        "trained ones, but stop simulations elsewhere: compare the simulated tokens per search. Each row is warmed "
        "up first and starts with an empty prefix cache.",
        "",
        "| model | decoding | B | status | tokens | tokens/s | RAIN/plain per token | peak GPU memory "
        "| searches/commit | simulated/search | forward passes/round | s/round | finish |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    errors = []
    for r in report["rows"]:
        if r["status"] != "ok":
            lines.append(
                f"| {r['model']} | {r['decoding']} | {r.get('B', '')} | {r['status']} | | | | | | | | | "
                f"{r.get('reason', '')} |"
            )
            if r.get("error"):
                errors.append(f"- {r['model']} / {r['decoding']}: `{r['error']}` at {r.get('where', '?')}")
            continue
        peak_bytes = r.get("peak_bytes")
        lines.append(
            "| {model} | {decoding} | {B} | ok | {tokens} | {tps} | {ratio} | {peak} | {spc} | {sps} "
            "| {fpr} | {spr} | {finish} |".format(
                model=r["model"],
                decoding=r["decoding"],
                B=r.get("B", ""),
                tokens=r.get("tokens", ""),
                tps=f"{r['tokens_per_s']:.1f}" if r.get("tokens_per_s") else "",
                ratio=f"{r['ratio']:.2f}x" if r.get("ratio") else "",
                peak=f"{peak_bytes / 2**30:.2f} GiB" if peak_bytes else "n/a",
                spc=f"{r['searches_per_commit']:.1f}" if "searches_per_commit" in r else "",
                sps=f"{r['simulated_per_search']:.1f}" if "simulated_per_search" in r else "",
                fpr=f"{r['forward_per_round']:.1f}" if r.get("forward_per_round") is not None else "",
                spr=f"{r['seconds_per_round']:.3f}" if r.get("seconds_per_round") is not None else "",
                finish=r.get("finish", r.get("note", "")),
            )
        )
    lines += [
        "",
        "Cached and batched log-probabilities against a recomputation without cache or batching "
        "(`next_token_logprobs` over prompts sharing a prefix, `top_tokens` extending a cached prefix):",
        "",
        "| model | dtype | status | max abs difference | tolerance | spread between prompts |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for c in report["comparisons"]:
        if c["status"] in ("ok", "over tolerance"):
            lines.append(
                f"| {c['model']} | {c['dtype']} | {c['status']} | {c['max_abs_difference']:.4g} | {c['tolerance']:g} "
                f"| {c['spread']:.3g} |"
            )
        else:
            lines.append(f"| {c['model']} | {c.get('dtype', '')} | {c['status']} | | | |")
            if c.get("error"):
                errors.append(f"- {c['model']} / log-probabilities: `{c['error']}` at {c.get('where', '?')}")
    methods = [r for r in report["rows"] if r["decoding"].startswith("methods: ") and r["status"] == "ok"]
    if methods:
        lines += [
            "",
            "The comparison of `rain bench quality --methods`, short (hard difficulty prompts; cost per answer; "
            "approved: answers the word scorer approves that are not refusals):",
            "",
            "| model | level | model calls | generated tokens | seconds | approved | finish |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in methods:
            per = r["seconds"] / max(len(r["finish"].split(", ")), 1)
            lines.append(
                f"| {r['model']} | {r['decoding'][9:]} | {r['model_calls']:.1f} | {r['generated_tokens']:.0f} | "
                f"{per:.2f} | {r['approved']} | {r['finish']} |"
            )
    lines += ["", "Adapters: " + ("; ".join(f"{k} {v}" for k, v in report["smoke"].items()) or "not run")]
    if report["notes"]:
        lines += ["", *[f"- {n}" for n in report["notes"]]]
    if errors:
        lines += ["", "Errors:", "", *errors]
    verdict = f"FAILED: {', '.join(report['failed'])}" if report["failed"] else "every row that ran passed"
    lines += ["", f"Result: {verdict}. Wall time: {report['seconds']:.0f} s.", ""]
    return "\n".join(lines)


def _error_fields(exc: BaseException) -> dict[str, Any]:
    """The error, and where its root cause was raised (the innermost frame in rain, else the last one)."""
    root = exc
    while root.__cause__ is not None or (root.__context__ is not None and not root.__suppress_context__):
        root = root.__cause__ or root.__context__  # type: ignore[assignment]
    frames = traceback.extract_tb(root.__traceback__)
    where = next((f for f in reversed(frames) if "/rain_core/" in f.filename), frames[-1] if frames else None)
    text = " ".join(str(exc).split())
    return {
        "error": f"{type(exc).__name__}: {text[:300]}",
        "where": f"{Path(where.filename).name}:{where.lineno} ({where.name})" if where else "?",
        "traceback": traceback.format_exception(type(exc), exc, exc.__traceback__)[-8:],
    }


# --- rows ---------------------------------------------------------------------------------------------
class Check:
    """Runs rows one by one: each is timed, caught, recorded and written before the next starts."""

    def __init__(self, report: Report, budget_seconds: float) -> None:
        self.report = report
        self.deadline = time.perf_counter() + budget_seconds
        self.budget_seconds = budget_seconds
        self.cuda_lost: str | None = None

    def not_run(self) -> str | None:
        if self.cuda_lost:
            return f"not run: the GPU state was lost at {self.cuda_lost}"
        if time.perf_counter() > self.deadline:
            return f"skipped: the time budget ({self.budget_seconds:.0f} s) was spent"
        return None

    def row(self, model: str, decoding: str, fn: Callable[[], dict[str, Any]], **fields: Any) -> dict[str, Any]:
        row: dict[str, Any] = {"model": model, "decoding": decoding, **fields}
        reason = self.not_run()
        if reason:
            row.update(status=reason.split(":")[0], reason=reason)
        else:
            try:
                row.update(fn())
                row.setdefault("status", "ok")
            except Exception as exc:  # a row that fails is reported, and the check goes on
                row.update(status="failed", **_error_fields(exc))
                if any(s in str(exc) for s in CUDA_LOST):
                    self.cuda_lost = f"{model} / {decoding}"
        self.report.rows.append(row)
        self.report.write()
        return row

    def compare(self, model: str, fn: Callable[[], dict[str, Any]]) -> None:
        entry: dict[str, Any] = {"model": model}
        reason = self.not_run()
        if reason:
            entry.update(status=reason.split(":")[0], reason=reason)
        else:
            try:
                entry.update(fn())
            except Exception as exc:
                entry.update(status="failed", **_error_fields(exc))
                if any(s in str(exc) for s in CUDA_LOST):
                    self.cuda_lost = f"{model} / log-probabilities"
        self.report.comparisons.append(entry)
        self.report.write()


def _not_available() -> dict[str, Any]:
    return {"status": "not available", "reason": "parallel_searches: not available in this version of rain"}


def parallel_available() -> bool:
    from rain_core import RainConfig

    return "parallel_searches" in RainConfig.model_fields


def search_budget(args: argparse.Namespace) -> dict[str, Any]:
    return dict(
        max_new_tokens=args.max_new_tokens,
        max_searches=args.max_searches,
        extra_searches=args.extra_searches,
        min_visits=args.min_visits,
        num_candidates=args.num_candidates,
        max_simulation_tokens=args.max_simulation_tokens,
        max_seconds=args.max_seconds,
        seed=0,
    )


def _clear(*engines: Any) -> None:
    for lm in engines:
        lm.clear_cache()


def plain_row(lm: Any, device: str, args: argparse.Namespace) -> dict[str, Any]:
    from rain_core import RainDecoder

    _clear(lm)
    dec = RainDecoder(lm, approve_all, encoder=None)
    dec.vanilla(WARM_PROMPT, max_new_tokens=4, seed=0)
    peak_reset(device)
    t0, tokens = time.perf_counter(), 0
    for prompt in PROMPTS[: args.prompts]:
        tokens += len(dec.vanilla(prompt, max_new_tokens=args.max_new_tokens, seed=0).token_ids)
    seconds = time.perf_counter() - t0
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "peak_bytes": peak(device)}


def rain_row(
    lm: Any,
    judge_lm: Any | None,
    evaluator: Any,
    config: Any,
    encoder: Any,
    device: str,
    plain_per_token: float | None,
    prompts: Sequence[str] = PROMPTS,
) -> dict[str, Any]:
    """``evaluator``: a callable, ``"self"`` (the decoder's default SelfEvaluator) or ``"judge"``."""
    from rain_core import JudgeEvaluator, RainDecoder

    _clear(lm, *([judge_lm] if judge_lm is not None else []))
    if evaluator == "self":
        judge = None
    elif evaluator == "judge":
        judge = JudgeEvaluator(judge_lm)
    else:
        judge = evaluator
    dec = RainDecoder(lm, judge, encoder=encoder, config=config)
    # warm-up: this row's evaluator, encoder and batch shapes
    dec.generate(WARM_PROMPT, max_new_tokens=2, max_seconds=min(3.0, config.max_seconds or 3.0))
    peak_reset(device)
    t0, tokens, searches, simulated, commits, finish = time.perf_counter(), 0, 0, 0, 0, []
    rounds, forward = 0, 0
    for prompt in prompts:
        res = dec.generate(prompt)
        tokens += len(res.token_ids)
        rounds += int(res.stats.get("rounds", 0))
        forward += int(res.stats.get("forward_calls", 0))
        searches += int(res.stats.get("searches", 0))
        simulated += int(res.stats.get("simulated_tokens", 0))
        commits += int(res.stats.get("commits", 0))
        finish.append(res.finish_reason)
    seconds = time.perf_counter() - t0
    per_token = seconds / max(tokens, 1)
    return {
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "ratio": per_token / plain_per_token if plain_per_token else None,
        "peak_bytes": peak(device),
        "searches_per_commit": searches / max(commits, 1),
        "simulated_per_search": simulated / max(searches, 1),
        # a round is the searches run side by side (one search at B=1); forward passes of the engine
        "rounds": rounds,
        "forward_per_round": forward / rounds if rounds else None,
        "seconds_per_round": seconds / rounds if rounds else None,
        "finish": ", ".join(finish),
    }


def method_levels(args: argparse.Namespace) -> list[Any]:
    """The comparison's short list of levels, RAIN at this check's search budget."""
    from rain_bench.quality.levels import Level

    budget = (args.max_searches, args.extra_searches)
    search = {"min_visits": args.min_visits, "num_candidates": args.num_candidates}
    search["max_simulation_tokens"] = args.max_simulation_tokens
    return [
        Level("plain", "plain"),
        Level("rain", "RAIN official", preset="official", budget=budget, search=search),
        Level("rain", "RAIN fast", preset="fast", budget=budget, search=search),
        Level("best-of-n", "best-of-8", {"n": 8}),
        Level("check-retry", "check-retry 3", {"max_tries": 4}),
        Level("blockwise", "blockwise 4x4", {"k": 4, "block_tokens": 4}),
        Level("escalating", "escalating to RAIN fast", preset="fast", budget=budget, search=search),
    ]


def methods_row(lm: Any, level: Any, encoder: Any, args: argparse.Namespace) -> dict[str, Any]:
    """One level of the comparison on the hard difficulty prompts: what it cost, what was approved."""
    from rain_bench.quality.compare import decode_one
    from rain_bench.quality.counting import counted
    from rain_bench.quality.scenarios import difficulty_scenarios

    (scenario,) = difficulty_scenarios(args.prompts, ("hard",))
    limits = {"max_new_tokens": args.max_new_tokens, "seed": 0, "max_seconds": args.max_seconds}
    _clear(lm)
    wrapped = counted(lm)
    answers = [decode_one(scenario, i, level, wrapped, limits, None, encoder) for i in range(len(scenario.prompts))]
    failed = [a.decode_error for a in answers if a.decode_error]
    if failed:
        raise RuntimeError(failed[0])
    tokens, seconds = sum(a.tokens for a in answers), sum(a.seconds for a in answers)
    approved = sum(bool(a.approved) and a.refusal is None for a in answers)
    return {
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds if seconds else None,
        "model_calls": sum(a.model_calls or 0 for a in answers) / len(answers),
        "generated_tokens": sum(a.generated_tokens or 0 for a in answers) / len(answers),
        "approved": f"{approved}/{len(answers)}",
        "finish": ", ".join(a.finish_reason for a in answers),
    }


def compare_logprobs(lm: Any) -> dict[str, Any]:
    """The engine as configured (prefix cache, shared prefix run once, right-padded batch) against the
    same weights recomputed from scratch one prompt at a time."""
    reference = lm.variant(reuse_cache=False, batch=False)
    _clear(lm)
    base = lm.encode(lm.chat_prompt([{"role": "user", "content": PROMPTS[0]}], add_generation_prompt=True))
    tails = [" Sure, here", " No", " Bread is made from flour, water"]
    prompts = [base + lm.encode(t, parse_special=False) for t in tails]
    top = reference.top_tokens(prompts[0], 8)
    candidates = sorted({t for c in top for t in c.token_ids} | {0, len(lm.tokenizer) - 1})
    cached = lm.next_token_logprobs(prompts, candidates)  # (3, C), batched over the cached shared prefix
    plain = reference.next_token_logprobs(prompts, candidates)  # (3, C), each prompt alone, no cache
    diffs = np.abs(np.asarray(cached) - np.asarray(plain))
    lm.top_tokens(base, 1)  # caches the prefix, so the next call extends a cached state
    extended = {c.token_ids: c.logprob for c in lm.top_tokens(prompts[2], 20)}
    fresh = reference.top_tokens(prompts[2], 8)
    top_diffs = [abs(extended[c.token_ids] - c.logprob) for c in fresh if c.token_ids in extended]
    if len(top_diffs) < len(fresh) // 2:
        raise AssertionError(f"the cached top tokens share only {len(top_diffs)} of the uncached top {len(fresh)}")
    worst = float(max(diffs.max(), max(top_diffs)))
    dtype = str(next(lm.model.parameters()).dtype)
    tolerance = TOLERANCE.get(dtype, 0.1)
    return {
        "dtype": dtype,
        "max_abs_difference": worst,
        "tolerance": tolerance,
        "spread": float(np.abs(np.asarray(plain[0]) - np.asarray(plain[1])).mean()),
        "status": "ok" if worst <= tolerance else "over tolerance",
    }


def smoke_calls(lm: Any, encoder: Any) -> dict[str, str]:
    """One LangChain and one LlamaIndex call through the adapters (tiny budgets)."""
    from rain_core import RainDecoder

    out: dict[str, str] = {}
    dec = RainDecoder(
        lm,
        approve_all,
        encoder=encoder,
        max_new_tokens=8,
        max_searches=2,
        extra_searches=1,
        max_simulation_tokens=8,
        max_seconds=10.0,
    )
    try:
        from rain_integrations.langchain import ChatRain
    except ImportError as exc:
        out["langchain"] = f"skipped ({exc.name or exc} not installed)"
    else:
        try:
            reply = ChatRain(decoder=dec).invoke("Say hello.")
            finish = reply.response_metadata.get("finish_reason")
            out["langchain"] = f"ok: {len(reply.content)} characters, finish {finish}"
        except Exception as exc:
            out["langchain"] = f"FAILED: {_error_fields(exc)['error']}"
    try:
        from rain_integrations.llamaindex import RainLlamaIndexLLM
    except ImportError as exc:
        out["llamaindex"] = f"skipped ({exc.name or exc} not installed)"
    else:
        try:
            out["llamaindex"] = f"ok: {len(RainLlamaIndexLLM(dec).complete('Say hello.').text)} characters"
        except Exception as exc:
            out["llamaindex"] = f"FAILED: {_error_fields(exc)['error']}"
    return out


# --- the run --------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:1, or cpu for a dry run")
    parser.add_argument("--tokenizer", default=None, help="a folder with the embedded model's tokenizer files")
    parser.add_argument("--shapes", default="smol,llama7b", help="comma-separated: smol, llama7b, tiny")
    parser.add_argument("--prompts", type=int, default=2, choices=(1, 2), help="prompts per row")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--max-searches", type=int, default=8)
    parser.add_argument("--extra-searches", type=int, default=4)
    parser.add_argument("--min-visits", type=int, default=2)
    parser.add_argument("--num-candidates", type=int, default=10)
    parser.add_argument("--max-simulation-tokens", type=int, default=16)
    parser.add_argument("--max-seconds", type=float, default=6.0, help="deadline of one RAIN decode")
    parser.add_argument("--budget-seconds", type=float, default=240.0, help="no row starts after this")
    parser.add_argument("--quick", action="store_true", help="tiny shape, tiny budgets: checks the script runs")
    parser.add_argument("--out", default=os.environ.get("OUT") or ".", help="folder for gpu-check.md/.json")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.quick:
        args.shapes, args.prompts, args.max_new_tokens, args.max_searches, args.extra_searches = "tiny", 1, 4, 4, 2
        args.min_visits, args.num_candidates, args.max_simulation_tokens, args.max_seconds = 1, 4, 6, 3.0
        args.budget_seconds = 600.0  # a dry run checks that every row runs: none is skipped for time
    import torch
    import transformers

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --device cpu for a dry run")
    from rain_core import RainConfig

    budget = search_budget(args)
    report = Report(
        Path(args.out),
        {
            **device_info(args.device),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "max_new_tokens": args.max_new_tokens,
            "prompts": args.prompts,
            "budget": ", ".join(f"{k}={v}" for k, v in budget.items() if k not in ("max_new_tokens", "seed")),
            "encoder": "RandomMiniLM (all-MiniLM-L6-v2's shape, random weights, on the device)",
        },
    )
    check = Check(report, args.budget_seconds)
    tokenizer = load_tokenizer(args.tokenizer)
    encoder = RandomMiniLM(tokenizer, args.device)
    parallel = parallel_available()
    if not parallel:
        report.notes.append("parallel_searches: not available in this version of rain (RainConfig has no such field)")

    models: list[tuple[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="rain-gpu-check-") as tmp:
        for shape in [s.strip() for s in args.shapes.split(",") if s.strip()]:
            label = f"random {shape}"

            def load(shape: str = shape) -> dict[str, Any]:
                t0 = time.perf_counter()
                if shape == "llama7b":
                    lm = random_model_on_device(shape, tokenizer, args.device)
                else:
                    lm = random_model_from_folder(shape, tokenizer, args.device, Path(tmp) / shape)
                models.append((f"random {shape}", lm))
                stats = lm.memory_stats()
                return {"seconds": time.perf_counter() - t0, "note": f"{stats['weight_bytes'] / 2**30:.2f} GiB weights"}

            check.row(label, "load", load)
        from rain_core.loaders.embedded import DEFAULT_MODEL_NAME, cache_dir

        real = cache_dir() / DEFAULT_MODEL_NAME
        if (real / "model.safetensors").is_file() and not args.quick:

            def load_real() -> dict[str, Any]:
                from rain_core import load_model

                t0 = time.perf_counter()
                models.append((DEFAULT_MODEL_NAME, load_model(str(real), device_map=args.device, dtype="bfloat16")))
                return {"seconds": time.perf_counter() - t0}

            check.row(DEFAULT_MODEL_NAME, "load", load_real)
        else:
            report.notes.append(f"the embedded {DEFAULT_MODEL_NAME}: not on this machine (no {real})")

        official, fast = RainConfig(**budget), RainConfig.fast(**budget)
        plain_cost: dict[str, float | None] = {}
        judges = {label: lm.variant() for label, lm in models}  # a second engine over the same weights

        def rain(label: str, lm: Any, name: str, evaluator: Any, cfg: Any, b: int) -> None:
            if b > 1 and not parallel:
                return  # reported below as not available
            batch = {"parallel_searches": b} if parallel else {}
            check.row(
                label,
                name,
                lambda: rain_row(
                    lm,
                    judges[label],
                    evaluator,
                    cfg.merged(**batch),
                    encoder,
                    args.device,
                    plain_cost[label],
                    PROMPTS[: args.prompts],
                ),
                B=b,
            )

        # Each kind of row runs on every model before the next kind starts, so a run cut short by the
        # time budget loses the last kinds (parallel searches), not a model. First what scores without
        # the model (a device-side assert in the scoring path would lose the GPU for every row after it).
        for label, lm in models:
            row = check.row(label, "plain", lambda lm=lm: plain_row(lm, args.device, args), B=1)
            plain_cost[label] = row["seconds"] / max(row["tokens"], 1) if row["status"] == "ok" else None
        if models and not check.not_run():
            report.smoke = smoke_calls(models[0][1], encoder)
            report.write()
        kinds: list[tuple[str, Any, Any, int]] = [
            ("RAIN official, approve-all", approve_all, official, 1),
            ("RAIN official, approve-nothing", approve_nothing, official, 1),
            ("RAIN fast, approve-all", approve_all, fast, 1),
            ("compare", None, None, 1),  # then the model's own scoring: batched option-letter log-probabilities
            ("RAIN official, self-evaluation", "self", official, 1),
            ("RAIN official, judge", "judge", official, 1),
            ("RAIN official, approve-all", approve_all, official, 8),
            ("RAIN official, self-evaluation", "self", official, 8),
            ("RAIN official, approve-nothing", approve_nothing, official, 8),
            ("RAIN official, approve-nothing", approve_nothing, official, 32),
        ]
        for name, evaluator, cfg, b in kinds:
            for label, lm in models:
                if name == "compare":
                    check.compare(label, lambda lm=lm: compare_logprobs(lm))
                else:
                    rain(label, lm, name, evaluator, cfg, b)
        if not parallel:
            for label, _ in models:
                for name, b in (
                    ("approve-all", 8),
                    ("self-evaluation", 8),
                    ("approve-nothing", 8),
                    ("approve-nothing", 32),
                ):
                    check.row(label, f"RAIN official, {name}", _not_available, B=b)
        for level in method_levels(args):  # last: the comparison of decoding methods, short
            for label, lm in models:
                check.row(label, f"methods: {level.label}", lambda lm=lm, lv=level: methods_row(lm, lv, encoder, args))
    report.write()
    print(render(report.data()))
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
