"""The prepared GPU check: one command, a few minutes on one GPU, no internet.

    python benchmarks/gpu_check.py --tokenizer .gpu/tokenizer            # on the GPU machine
    python benchmarks/gpu_check.py --device cpu --quick --tokenizer DIR  # a dry run anywhere

What it does, with only PyTorch, transformers and rain's own light dependencies:

1. builds a model of SmolLM2-135M's shape with random weights, saves it to a local folder and loads
   it back through ``rain_core.load_model(folder, device_map=<device>, dtype="bfloat16")`` (the path
   users take for their own checkpoints); builds one of a 7B Llama's shape with random weights
   directly on the device; and loads the embedded SmolLM2-135M-Instruct itself when its
   materialised folder is already on the machine;
2. times plain decoding and RAIN (the official search and the fast preset) on each, with an
   evaluator that approves everything (the best case) and, for the real model, self-evaluation;
3. makes one LangChain and one LlamaIndex call through the adapters (reported as skipped when those
   packages are not installed);
4. prints one Markdown table (tokens/s, RAIN/plain ratio, peak GPU memory, searches and simulated
   tokens per search) and writes it with a JSON copy to ``--out`` (default ``$OUT`` or the current
   folder).

Random weights cost the same per forward pass as trained ones, but they change where simulations
stop (a random model rarely writes a clause boundary), so every RAIN run here caps simulations at
``--max-simulation-tokens`` (32) and the table reports simulated tokens per search.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PROMPTS = ("How do I bake a loaf of bread at home?", "Write a short story about a lighthouse keeper.")
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


def approve_all(prompt: str, response: str) -> float:
    return 1.0


def _tokenizer(path: str | None) -> Any:
    from transformers import AutoTokenizer

    if path:
        return AutoTokenizer.from_pretrained(path)
    from rain_core.engines.embedded import DEFAULT_MODEL_NAME, cache_dir

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
    return load_model(str(folder), device_map=device, dtype="bfloat16")


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


def _peak_reset(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak(device: str) -> int | None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated())
    return None


def measure(lm: Any, label: str, device: str, args: argparse.Namespace, self_eval: bool) -> list[dict[str, Any]]:
    """Plain decoding and RAIN (official, fast) on ``lm``: one table row each."""
    from rain_core import RainConfig, RainDecoder

    rows: list[dict[str, Any]] = []
    base = dict(max_new_tokens=args.max_new_tokens, max_simulation_tokens=args.max_simulation_tokens, seed=0)
    dec = RainDecoder(lm, approve_all)
    dec.vanilla("Hello", max_new_tokens=4)  # warm-up
    _peak_reset(device)
    t0, tokens = time.perf_counter(), 0
    for prompt in PROMPTS:
        tokens += len(dec.vanilla(prompt, **base).token_ids)
    plain = (time.perf_counter() - t0) / max(tokens, 1)
    rows.append(
        {
            "model": label,
            "decoding": "plain",
            "tokens": tokens,
            "tokens_per_s": 1 / plain,
            "ratio": 1.0,
            "peak_bytes": _peak(device),
        }
    )
    runs: list[tuple[str, Any, RainConfig]] = [
        ("RAIN official, best case", dec, RainConfig(**base)),
        ("RAIN fast, best case", dec, RainConfig.fast(**base)),
    ]
    if self_eval:
        runs.append(("RAIN official, self-evaluation", RainDecoder(lm), RainConfig(**{**base, "max_searches": 10})))
    for name, decoder, cfg in runs:
        _peak_reset(device)
        t0, tokens, searches, simulated, commits = time.perf_counter(), 0, 0, 0, 0
        for prompt in PROMPTS:
            res = decoder.generate(prompt, config=cfg)
            tokens += len(res.token_ids)
            searches += res.stats["searches"]
            simulated += res.stats["simulated_tokens"]
            commits += res.stats["commits"]
        per_token = (time.perf_counter() - t0) / max(tokens, 1)
        rows.append(
            {
                "model": label,
                "decoding": name,
                "tokens": tokens,
                "tokens_per_s": 1 / per_token,
                "ratio": per_token / plain,
                "peak_bytes": _peak(device),
                "searches_per_commit": searches / max(commits, 1),
                "simulated_per_search": simulated / max(searches, 1),
            }
        )
    return rows


def smoke_calls(lm: Any) -> dict[str, str]:
    """One LangChain and one LlamaIndex call through the adapters (tiny budgets)."""
    from rain_core import RainDecoder

    out: dict[str, str] = {}
    dec = RainDecoder(lm, approve_all, max_new_tokens=8, max_searches=2, extra_searches=1, max_simulation_tokens=8)
    try:
        from rain_integrations.langchain import ChatRain
    except ImportError as exc:
        out["langchain"] = f"skipped ({exc.name or exc} not installed)"
    else:
        reply = ChatRain(decoder=dec).invoke("Say hello.")
        out["langchain"] = f"ok: {len(reply.content)} characters, finish {reply.response_metadata.get('finish_reason')}"
    try:
        from rain_integrations import llamaindex as li
    except ImportError as exc:
        out["llamaindex"] = f"skipped ({exc.name or exc} not installed)"
    else:
        cls = getattr(li, "RainLlamaIndexLLM", None) or li.RainLLM
        out["llamaindex"] = f"ok: {len(cls(dec).complete('Say hello.').text)} characters"
    return out


def render(report: dict[str, Any]) -> str:
    lines = [
        f"# rain GPU check ({report['device_name']})",
        "",
        f"torch {report['torch']}, transformers {report['transformers']}, Python {report['python']}; "
        f"{report['max_new_tokens']} new tokens per prompt, {len(PROMPTS)} prompts; simulations capped at "
        f"{report['max_simulation_tokens']} tokens. Random-weight models cost the same per forward pass as trained "
        "ones, but stop simulations elsewhere: compare the simulated tokens per search.",
        "",
        "| model | decoding | tokens | tokens/s | RAIN/plain per token | peak GPU memory | searches/commit "
        "| simulated/search |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["rows"]:
        peak = f"{r['peak_bytes'] / 2**30:.2f} GiB" if r.get("peak_bytes") else "n/a"
        spc = f"{r['searches_per_commit']:.1f}" if "searches_per_commit" in r else ""
        sps = f"{r['simulated_per_search']:.1f}" if "simulated_per_search" in r else ""
        lines.append(
            f"| {r['model']} | {r['decoding']} | {r['tokens']} | {r['tokens_per_s']:.1f} | "
            f"{r['ratio']:.2f}x | {peak} | {spc} | {sps} |"
        )
    lines += [
        "",
        "Adapters: " + "; ".join(f"{k} {v}" for k, v in report["smoke"].items()),
        f"Skipped: {', '.join(report['skipped']) or 'nothing'}",
        f"Wall time: {report['seconds']:.0f} s",
        "",
    ]
    return "\n".join(lines)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:1, or cpu for a dry run")
    parser.add_argument("--tokenizer", default=None, help="a folder with the embedded model's tokenizer files")
    parser.add_argument("--shapes", default="smol,llama7b", help="comma-separated: smol, llama7b, tiny")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--max-simulation-tokens", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="tiny shape and 8 tokens: checks the script runs")
    parser.add_argument("--out", default=os.environ.get("OUT") or ".", help="folder for gpu-check.md/.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.shapes, args.max_new_tokens = "tiny", 8
    import torch
    import transformers

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --device cpu for a dry run")
    t_start = time.perf_counter()
    tokenizer = _tokenizer(args.tokenizer)
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    smoke: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="rain-gpu-check-") as tmp:
        for shape in [s.strip() for s in args.shapes.split(",") if s.strip()]:
            try:
                if shape == "llama7b":
                    lm = random_model_on_device(shape, tokenizer, args.device)
                else:
                    lm = random_model_from_folder(shape, tokenizer, args.device, Path(tmp) / shape)
            except torch.OutOfMemoryError:
                skipped.append(f"{shape} (out of memory)")
                continue
            rows += measure(lm, f"random {shape}", args.device, args, self_eval=False)
            if not smoke:
                smoke = smoke_calls(lm)
            del lm
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
        from rain_core.engines.embedded import DEFAULT_MODEL_NAME, cache_dir

        real = cache_dir() / DEFAULT_MODEL_NAME
        if (real / "model.safetensors").is_file() and not args.quick:
            from rain_core import load_model

            lm = load_model(str(real), device_map=args.device, dtype="bfloat16")
            rows += measure(lm, "SmolLM2-135M-Instruct", args.device, args, self_eval=True)
        else:
            skipped.append("the embedded SmolLM2-135M-Instruct (not on this machine)")
    report = {
        "device_name": torch.cuda.get_device_name(0)
        if args.device.startswith("cuda")
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "max_new_tokens": args.max_new_tokens,
        "max_simulation_tokens": args.max_simulation_tokens,
        "rows": rows,
        "smoke": smoke,
        "skipped": skipped,
        "seconds": time.perf_counter() - t_start,
    }
    text = render(report)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "gpu-check.md", text)
    _write(out / "gpu-check.json", json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
