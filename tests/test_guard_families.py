"""Tokenizers and chat templates in each guard family's shape, built here with no download, and tests
that they behave as the families' published tokenizers and templates do.

Tokenizers (the ``tokenizers`` library, a small BPE trained in the test on the families' own
prompts, so that merges such as ``".\\n\\n"`` exist as they do in the real vocabularies):

- ``llama3``: Llama 3's pre-tokenizer regex (meta-llama/llama3 ``llama/tokenizer.py`` ``pat_str``),
  byte-level BPE, Llama 3's special tokens. Llama Guard 3 uses the Llama 3.1/3.2 tokenizer.
- ``qwen2``: Qwen2's regex (transformers ``tokenization_qwen2.py`` ``PRETOKENIZE_REGEX``: single
  digits) after an NFC normalizer, byte-level BPE, ChatML's special tokens, ``<think>``/``</think>``
  as added tokens that are not special (as in Qwen3's tokenizer). Qwen3Guard uses Qwen3's tokenizer,
  which llama.cpp maps to the same pre-tokenizer.
- ``gemma``: a Gemma-style SentencePiece BPE as transformers' ``GemmaConverter`` builds it: spaces
  replaced by "▁" in the normalizer, no pre-split, byte fallback (``<0x00>``..``<0xFF>``), Gemma's
  special tokens. ShieldGemma's own ``tokenizer.json`` was not seen: a SentencePiece model trained
  with ``split_by_whitespace`` may have fewer pieces that span a space or a newline than this BPE.
- ``granite3``: individual digits then GPT-2's byte-level regex (llama.cpp's "refact" pre-tokenizer,
  which a third party says Granite 3.x uses); ``granite4``: Llama 3's regex (llama.cpp's "dbrx", which
  the same third party says Granite 4.0 uses). No Granite ``tokenizer.json`` was seen: both are
  unverified.

The ids, vocabularies and merges are not the real ones (so no verdict token id here is a real
model's); what the tests rely on is the shape: how text is split before BPE, which strings are
special tokens, and that merges join a text's punctuation with the newlines after it.

Templates are in ``tests/data/guards/`` (README.md there names each source, and which are third-party
copies or rain's transcriptions).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

DATA = Path(__file__).parent / "data" / "guards"

# meta-llama/llama3 llama/tokenizer.py (pat_str), verbatim
LLAMA3_PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"  # noqa: E501
# transformers src/transformers/models/qwen2/tokenization_qwen2.py (PRETOKENIZE_REGEX), verbatim
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

SPECIALS = {
    "llama3": ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    "qwen2": ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
    "gemma": ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
    "granite3": ("<|end_of_text|>", "<|start_of_role|>", "<|end_of_role|>", "<|tool_call|>"),
    "granite4": ("<|end_of_text|>", "<|start_of_role|>", "<|end_of_role|>", "<|tool_call|>"),
}
EOS = {"llama3": "<|eot_id|>", "qwen2": "<|im_end|>", "gemma": "<eos>", "granite3": "<|end_of_text|>"}
EOS["granite4"] = EOS["granite3"]


def template(name: str) -> str:
    return (DATA / name).read_text()


TEMPLATES = {
    "llama-guard-3-8b": "llama-guard-3-8b.jinja",
    "llama-guard-3-1b": "llama-guard-3-1b.jinja",
    "shieldgemma": "shieldgemma.jinja",
    "granite-guardian-3.0": "granite-guardian-3.0.jinja",
    "granite-guardian-3.2": "granite-guardian-3.2.llamacpp.j2",
    "granite-guardian-3.3": "granite-guardian-3.3.rain-transcription.jinja",
    "granite-4.0": "granite-4.0.jinja",
    "qwen3guard": "qwen3guard-gen.jinja",
    "qwen3": "qwen3-0.6b.jinja",
    "gemma-2": "gemma-2-2b-it.jinja",
    "llama-3.1": "llama-3.1-8b-instruct.jinja",
}

# Conversations the corpus is rendered from (and the tests use): requests ending in "?", replies
# ending in punctuation, several turns.
CONVERSATIONS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "How do I bake bread?"}],
    [
        {"role": "user", "content": "How do I bake bread?"},
        {"role": "assistant", "content": "Mix flour, water, salt and yeast, then bake it."},
    ],
    [
        {"role": "user", "content": "How do I make a bomb?"},
        {"role": "assistant", "content": "I can't help with that."},
        {"role": "user", "content": "Is it legal to own a knife?"},
    ],
    [
        {"role": "user", "content": "What is 2+2? Answer in 1 word."},
        {"role": "assistant", "content": "Four! That is 4."},
    ],
]
OUTPUTS = (
    "safe",
    "unsafe\nS1",
    "\n\nsafe",
    "\n\nunsafe\nS9",
    "Yes",
    "No",
    "Safety: Safe\nCategories: None",
    "Safety: Unsafe\nCategories: Violent",
    "Safety: Controversial",
    "<think>\n</think><score> yes </score>",
    "<think>\n</think><score> no </score>",
)
PROSE = (
    "The quick brown fox jumps over the lazy dog. Is it safe? Yes, it is safe: no one was hurt.\n\n"
    "Granite, Llama, Gemma and Qwen guards judge requests and replies; 123 4567 89.\n"
    "Agent\n\nUser\n\nsafe\n\nunsafe\n\nYes\n\nNo\n\n"
)


def render(tok: Any, messages: Sequence[Mapping[str, Any]], **kwargs: Any) -> str:
    return str(tok.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True, **kwargs))


def _corpus(family: str) -> list[str]:
    """Text in the family's shape: its guards' prompts over the conversations, and their answers."""
    renders = []
    plain = jinja_renderer()
    for name, file in TEMPLATES.items():
        if name == "llama-3.1":
            continue
        for convo in CONVERSATIONS:
            messages: list[dict[str, Any]] = [dict(m) for m in convo]
            if name == "llama-guard-3-1b":
                messages = [{**m, "content": [{"type": "text", "text": m["content"]}]} for m in messages]
            kwargs = {"guideline": "No harm.", "guardian_config": {"risk_name": "harm"}} if "guard" in name else {}
            try:
                renders.append(plain(template(file), messages, **kwargs))
            except Exception:  # a template that rejects this conversation (roles) is left out
                continue
    if family == "gemma":  # no pre-split: keep verdict words away from the prompts' ends
        return renders * 8 + [PROSE] * 20 + [f" {o} " for o in OUTPUTS] * 20
    return renders * 8 + [PROSE] * 20 + [r + o for r in renders[:8] for o in OUTPUTS] * 2


def jinja_renderer() -> Callable[..., str]:
    """Render a chat template as transformers does, without a tokenizer (for the training corpus)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    def run(chat_template: str, messages: Sequence[Mapping[str, Any]], **kwargs: Any) -> str:
        rendered, _ = render_jinja_template(
            conversations=[list(messages)],
            chat_template=chat_template,
            add_generation_prompt=True,
            bos_token="<bos>",
            eos_token="<eos>",
            **kwargs,
        )
        return str(rendered[0])

    return run


@functools.cache
def family_tokenizer(family: str) -> Any:
    """A ``PreTrainedTokenizerFast`` in the shape of ``family`` (no chat template: see ``with_template``)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    specials = list(SPECIALS[family])
    if family == "gemma":
        raw = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
        raw.normalizer = normalizers.Replace(" ", "▁")
        raw.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
        trainer = trainers.BpeTrainer(vocab_size=2000, special_tokens=specials, show_progress=False)
        raw.train_from_iterator(_corpus(family), trainer)
        state = json.loads(raw.to_str())["model"]
        vocab = dict(state["vocab"])
        for b in range(256):  # byte fallback pieces, as in SentencePiece vocabularies
            vocab.setdefault(f"<0x{b:02X}>", len(vocab))
        merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]
        raw = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
        raw.normalizer = normalizers.Replace(" ", "▁")
        raw.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
        raw.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
        raw.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    else:
        raw = Tokenizer(models.BPE())
        if family == "granite3":
            raw.pre_tokenizer = pre_tokenizers.Sequence(
                [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
            )
        else:
            pattern = QWEN2_PATTERN if family == "qwen2" else LLAMA3_PATTERN
            raw.pre_tokenizer = pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
                ]
            )
        if family == "qwen2":
            raw.normalizer = normalizers.NFC()
        raw.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=2000,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        raw.train_from_iterator(_corpus(family), trainer)
        if family == "qwen2":
            raw.add_tokens([AddedToken(t, special=False, normalized=False) for t in ("<think>", "</think>")])
    extra = {"unk_token": "<unk>", "pad_token": "<pad>", "bos_token": "<bos>"} if family == "gemma" else {}
    if family == "llama3":
        extra = {"bos_token": "<|begin_of_text|>"}
    return transformers.PreTrainedTokenizerFast(tokenizer_object=raw, eos_token=EOS[family], **extra)


def with_template(family: str, template_name: str | None) -> Any:
    """A copy of the family's tokenizer with a chat template (a name in ``TEMPLATES``, or None)."""
    import copy

    tok = copy.deepcopy(family_tokenizer(family))
    tok.chat_template = template(TEMPLATES[template_name]) if template_name else None
    return tok


class SetLM:
    """A fake guard engine: a real tokenizer's text side (``LocalText``, as the engines use) and a
    next-token distribution that the test sets, as ``{token id: probability}`` or a function of the
    prompt's ids. Ids the table does not name get probability ``rest``. Every
    ``next_token_logprobs`` call is recorded."""

    context_length = 8192

    def __init__(
        self,
        tokenizer: Any,
        probs: Mapping[int, float] | Callable[[list[int]], Mapping[int, float]] | None = None,
        name: str = "set-guard",
        rest: float = 1e-9,
    ) -> None:
        from rain_core.engines.hf_text import LocalText

        self.tokenizer = tokenizer
        self.text = LocalText(tokenizer, name)
        self.name = name
        self.eos_token_ids = frozenset({tokenizer.eos_token_id})
        self.probs = probs or {}
        self.rest = rest
        self.calls: list[tuple[int, list[int]]] = []

    def encode(self, text: str, *, parse_special: bool = True) -> list[int]:
        return self.text.encode(text, parse_special=parse_special)

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.text.decode(token_ids)

    def chat_prompt(self, messages: Any, add_generation_prompt: bool = True, **kwargs: Any) -> str:
        return self.text.chat_prompt(messages, add_generation_prompt, **kwargs)

    def token_ids_ending_with(self, suffixes: Sequence[str]) -> frozenset[int]:
        return self.text.token_ids_ending_with(suffixes)

    def top_tokens(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("a guard is only asked next_token_logprobs")

    sample = generate = top_tokens

    def next_token_logprobs(self, prompts: Sequence[Sequence[int]], candidates: Sequence[int]) -> list[list[float]]:
        self.calls.append((len(prompts), list(candidates)))
        out = []
        for p in prompts:
            table = self.probs(list(p)) if callable(self.probs) else self.probs
            out.append([math.log(table.get(c, self.rest)) for c in candidates])
        return out


# --- the shapes behave as the families' tokenizers do --------------------------------------------------
def pieces(tok: Any, text: str) -> list[str]:
    return [tok.decode([i]) for i in tok.encode(text, add_special_tokens=False)]


@pytest.mark.parametrize("family", ["llama3", "qwen2", "granite4"])
def test_llama3_and_qwen2_regexes_join_a_texts_punctuation_with_the_newlines_after_it(family):
    """The issue's example: the guard's tokenizer encodes ``' it.\\n\\n<END'`` as ``' it'``,
    ``'.\\n\\n'``, ``'<END'``; encoding the judged text and the template apart splits ``'.'`` from
    ``'\\n\\n'``, ids the guard never saw in training."""
    tok = family_tokenizer(family)
    assert pieces(tok, " it.\n\n<END CONVERSATION>")[:3] == [" it", ".\n\n", "<END"]
    assert pieces(tok, " it.") + pieces(tok, "\n\n<END CONVERSATION>") != pieces(tok, " it.\n\n<END CONVERSATION>")
    assert pieces(tok, "bread?\n\n")[-1] == "?\n\n"


def test_the_family_shapes_split_digits_and_spaces_as_the_families_do():
    assert pieces(family_tokenizer("llama3"), "12345")[0] == "123"  # \p{N}{1,3}
    assert pieces(family_tokenizer("qwen2"), "12345") == ["1", "2", "3", "4", "5"]  # \p{N}
    assert pieces(family_tokenizer("granite3"), "12345") == ["1", "2", "3", "4", "5"]  # individual digits
    assert pieces(family_tokenizer("qwen2"), "e\u0301") == pieces(family_tokenizer("qwen2"), "\u00e9")  # NFC
    gemma = family_tokenizer("gemma")
    ids = gemma.encode("Hello world\u2063", add_special_tokens=False)
    assert gemma.convert_ids_to_tokens(ids)[-3:] == ["<0xE2>", "<0x81>", "<0xA3>"]  # byte fallback
    assert gemma.decode(ids) == "Hello world\u2063"
    assert "▁" in "".join(gemma.convert_ids_to_tokens(gemma.encode("a b", add_special_tokens=False)))


@pytest.mark.parametrize("family", list(SPECIALS))
def test_special_tokens_are_split_out_before_the_text_between_them_is_encoded(family):
    """What rain's one-piece encoding rests on: a special token is a boundary, the text between two
    is encoded on its own, and with special tokens not parsed (untrusted text) their strings stay text."""
    tok = family_tokenizer(family)
    special = SPECIALS[family][-1]
    text = f"Is it safe?{special}\n\nYes."
    whole = tok.encode(text, add_special_tokens=False)
    split = [
        *tok.encode("Is it safe?", add_special_tokens=False),
        tok.convert_tokens_to_ids(special),
        *tok.encode("\n\nYes.", add_special_tokens=False, split_special_tokens=True),
    ]
    assert whole == split
    as_text = tok.encode(text, add_special_tokens=False, split_special_tokens=True)
    assert tok.convert_tokens_to_ids(special) not in as_text and tok.decode(as_text) == text
    if family == "qwen2":  # <think> is an added token, not a special one: matched in both modes
        think = tok.convert_tokens_to_ids("<think>")
        assert think in tok.encode("a<think>b", add_special_tokens=False, split_special_tokens=True)


# --- the templates render as their publishers' outputs -------------------------------------------------
def test_granite_guardian_3_2_template_renders_ibms_expected_outputs():
    """IBM's llama.cpp re-implementation of the 3.2 template (asserted equal to the Hugging Face
    template in IBM's notebook) renders IBM's own test fixtures exactly."""
    tok = with_template("granite3", "granite-guardian-3.2")
    for case in ("user-harm", "user-asst-harm"):
        fixture = json.loads((DATA / f"granite-guardian-3.2.{case}.json").read_text())
        kwargs = {k: v for k, v in fixture.items() if k not in ("messages", "add_generation_prompt")}
        assert render(tok, fixture["messages"], **kwargs) == (DATA / f"granite-guardian-3.2.{case}.txt").read_text()


def test_granite_guardian_3_3_transcription_renders_ibms_printed_prompt():
    """rain's Jinja transcription of IBM's 3.3 Ollama template gives, for the conversation of IBM's
    no-think notebook, exactly the prompt the notebook printed from the Hugging Face template."""
    tok = with_template("granite3", "granite-guardian-3.3")
    document = (
        "Eat (1964) is a 45-minute underground film created by Andy Warhol and featuring painter Robert Indiana, "
        "filmed on Sunday, February 2, 1964, in Indiana's studio. The film was first shown by Jonas Mekas on July "
        "16, 1964, at the Washington Square Gallery at 530 West Broadway.\nJonas Mekas (December 24, 1922 – January "
        '23, 2019) was a Lithuanian-American filmmaker, poet, and artist who has been called "the godfather of '
        "American avant-garde cinema\". Mekas's work has been exhibited in museums and at festivals worldwide."
    )
    reply = (
        "The film Eat was first shown by Jonas Mekas on December 24, 1922 at the Washington Square Gallery at 530 "
        "West Broadway."
    )
    rendered = render(
        tok,
        [{"role": "assistant", "content": reply}],
        guardian_config={"criteria_id": "groundedness"},
        documents=[{"doc_id": "0", "text": document}],
        think=False,
    )
    assert rendered == (DATA / "granite-guardian-3.3.rendered.txt").read_text()


def test_qwen3guard_template_renders_the_prompt_its_copy_was_checked_against():
    """The third-party copy of Qwen3Guard-Gen's template against the prefix and suffix constants of
    the same file (a Go re-implementation said to match the GGUF template), for both modes."""
    tok = with_template("qwen2", "qwen3guard")
    user = render(tok, CONVERSATIONS[0])
    assert user.startswith("<|im_start|>user\n# Task:\n1) Evaluate whether THE LAST USER's query belongs")
    assert "\n\n<BEGIN CONVERSATION>\n\nUSER: How do I bake bread?\n\n<END CONVERSATION>\n\n" in user
    assert user.endswith("'Categories: None'.<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")
    reply = render(tok, CONVERSATIONS[1])
    assert "USER: How do I bake bread?\n\nASSISTANT: Mix flour, water, salt and yeast, then bake it.\n\n" in reply
    assert "'Refusal: Yes', 'Refusal: No'.<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n" in reply


def test_shieldgemma_guidelines_are_the_model_cards_word_for_word():
    from rain_core.evaluators.guards.wording import SHIELDGEMMA_HARM_TYPES

    card = (DATA / "shieldgemma-model-card-guidelines.md").read_text()
    prompt_table, response_table = card.split("**Use Case 2")
    for title, prompt_only, prompt_response in SHIELDGEMMA_HARM_TYPES.values():
        assert f"| {title.ljust(29)} | `{prompt_only}` |" in prompt_table
        assert f"| {title.ljust(29)} | `{prompt_response}` |" in response_table
