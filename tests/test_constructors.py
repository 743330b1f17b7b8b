"""The adapters' constructors, one body for both frameworks (``rain_integrations._build``) described
once (``rain_integrations.options``): keywords split into the adapter's fields and ``RainConfig``
fields; loading options pass through to ``load_model`` untouched, for a judge or guard too; the
same model named twice loads once; ``guard=`` makes a guard model RAIN's evaluator (continuous score
by default) from an id, a ready ``LanguageModel`` or a ready ``GuardEvaluator``; and every
constructor shows every option in its signature and docstring.

Loading is replaced by a loader that records what it is asked and returns a fake (the real loader
runs in ``test_langchain_integration.py`` and ``test_llamaindex_model.py``); bad options are in
``test_validation.py``."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from fakes import CharLM
from langchain_fakes import always_good, scripted
from test_guard_evaluator import SetLM, guard_tokenizer, vocab_id

import rain_core.loaders.models as loading
from rain_core import GuardEvaluator, JudgeEvaluator, Scoring, SelfEvaluator
from rain_core.evaluators.guards.presets import LLAMA_GUARD_3_1B, SHIELDGEMMA
from rain_integrations.langchain import ChatRain, RainLLM
from rain_integrations.llamaindex import RainLlamaIndexLLM
from rain_integrations.options import DecoderOptions, LoadOptions

GUARD_ID = "meta-llama/Llama-Guard-3-1B"


def set_guard(name: str = GUARD_ID) -> SetLM:
    """A Llama-Guard-shaped fake guard engine that calls every reply safe (P = 0.9 against 0.05)."""
    tok = guard_tokenizer("llama-guard-3-1b")
    return SetLM(tok, {vocab_id(tok, "safe"): 0.9, vocab_id(tok, "unsafe"): 0.05}, name=name)


@pytest.fixture
def loads(monkeypatch) -> list[tuple[str, dict[str, Any]]]:
    """The loader records each (id, options) it is asked for and returns a fake: a guard engine for
    a guard's id, else a scripted chat model."""
    asked: list[tuple[str, dict[str, Any]]] = []

    def load_model(name: str, **options: Any) -> Any:
        asked.append((name, options))
        return set_guard(name) if "guard" in name.lower() else scripted("loaded.", name=name)

    monkeypatch.setattr(loading, "load_model", load_model)
    return asked


# --- fields, RainConfig fields, evaluators ---------------------------------------------------------
def test_keywords_split_into_fields_and_rain_options():
    lm = scripted("hi.")
    chat = ChatRain.from_engine(lm, evaluator=always_good, encoder=None, max_tokens=9, max_searches=3, seed=5)
    assert chat.decoder.lm is lm and chat.max_tokens == 9
    assert chat.decoder.config.max_searches == 3 and chat.decoder.config.seed == 5
    assert chat.invoke("x").content == "hi."
    llm = RainLLM.from_engine(lm, evaluator=always_good, encoder=None, stop=["!"])
    assert llm.stop == ["!"] and llm.decoder.lm is lm
    li = RainLlamaIndexLLM.from_engine(
        lm, evaluator=always_good, encoder=None, max_searches=3, context_window=500, system_prompt="be kind"
    )
    assert li.decoder.lm is lm and li.decoder.config.max_searches == 3
    assert li.context_window == 500 and li.system_prompt == "be kind"


@pytest.mark.parametrize("cls", [ChatRain, RainLlamaIndexLLM])
def test_the_model_judges_itself_unless_a_judge_or_principle_says_otherwise(cls):
    lm, judge = scripted("hi."), CharLM(name="judge-lm")
    own = cls.from_engine(lm, encoder=None)
    assert isinstance(own.decoder.evaluator, SelfEvaluator) and own.decoder.evaluator.lm is lm
    truthful = cls.from_engine(lm, principle="truthful", encoder=None, scoring="continuous")
    assert truthful.decoder.evaluator.principle.name == "truthful"
    assert truthful.decoder.evaluator.scoring is Scoring.CONTINUOUS
    judged = cls.from_engine(lm, judge=judge, encoder=None)
    assert type(judged.decoder.evaluator) is JudgeEvaluator and judged.decoder.evaluator.lm is judge


# --- loading options ---------------------------------------------------------------------------------
def test_loading_options_pass_through_to_the_loader_for_the_judge_too(loads):
    quant = object()
    chat = ChatRain.from_model_id(
        "org/model-7b",
        judge="org/judge-70b",
        device_map="auto",
        dtype="bfloat16",
        quantization_config=quant,
        model_kwargs={"attn_implementation": "sdpa"},
        encoder=None,
        max_tokens=5,
        max_searches=2,
    )
    expected = {"device_map": "auto", "dtype": "bfloat16", "quantization_config": quant, "attn_implementation": "sdpa"}
    assert loads == [("org/model-7b", expected), ("org/judge-70b", expected)]
    assert chat.model_name == "org/model-7b" and chat.max_tokens == 5 and chat.decoder.config.max_searches == 2
    assert chat.decoder.evaluator.lm.name == "org/judge-70b"


def test_a_judge_with_its_own_loading_options_loads_with_those(loads):
    ChatRain.from_model_id("org/a", judge="org/b", device="cuda:0", judge_kwargs={"device": "cuda:1"}, encoder=None)
    assert loads == [("org/a", {"device": "cuda:0"}), ("org/b", {"device": "cuda:1"})]


def test_the_same_id_as_judge_loads_once(loads):
    RainLLM.from_model_id("org/model-7b", judge="org/model-7b", device="cpu", encoder=None)
    assert loads == [("org/model-7b", {"device": "cpu"})]


def test_llamaindex_from_model_name_loads_the_same_way(loads):
    llm = RainLlamaIndexLLM.from_model_name(
        "org/model", judge="org/judge", device_map="auto", dtype="bfloat16", encoder=None, seed=4
    )
    assert loads == [
        ("org/model", {"device_map": "auto", "dtype": "bfloat16"}),
        ("org/judge", {"device_map": "auto", "dtype": "bfloat16"}),
    ]
    assert llm.metadata.model_name == "org/model" and llm.decoder.evaluator.lm.name == "org/judge"
    assert llm.decoder.config.seed == 4


# --- guard= ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("build", [ChatRain.from_model_id, RainLlamaIndexLLM.from_model_name])
def test_a_guard_named_by_id_loads_beside_the_model_and_judges_the_replies(loads, build):
    adapter = build("org/model-7b", guard=GUARD_ID, device_map="auto", encoder=None, max_new_tokens=4)
    guard = adapter.decoder.evaluator
    assert loads == [("org/model-7b", {"device_map": "auto"}), (GUARD_ID, {"device_map": "auto"})]
    assert isinstance(guard, GuardEvaluator) and guard.preset is LLAMA_GUARD_3_1B  # inferred from the id
    assert guard.scoring is Scoring.CONTINUOUS  # a guard's score is its verdict probability
    reply = adapter.invoke("hi") if isinstance(adapter, ChatRain) else adapter.complete("hi")
    assert reply and guard.lm.calls  # the search asked the guard


def test_guard_kwargs_hold_the_guards_own_loading_and_evaluator_options(loads):
    chat = ChatRain.from_model_id(
        "org/model-7b",
        guard="/models/my-guard",
        guard_preset="llama-guard-3-1b",
        guard_kwargs={"device": "cuda:1", "threshold": 0.3, "scoring": "discrete"},
        device="cuda:0",
        encoder=None,
    )
    guard = chat.decoder.evaluator
    assert loads == [("org/model-7b", {"device": "cuda:0"}), ("/models/my-guard", {"device": "cuda:1"})]
    assert guard.preset is LLAMA_GUARD_3_1B and guard.threshold == 0.3 and guard.scoring is Scoring.DISCRETE


def test_the_scoring_keyword_applies_to_the_guard_as_well(loads):
    chat = ChatRain.from_model_id("org/model-7b", guard=GUARD_ID, scoring="discrete", encoder=None)
    assert chat.decoder.evaluator.scoring is Scoring.DISCRETE and chat.decoder.config.scoring is Scoring.DISCRETE


@pytest.mark.parametrize("cls", [ChatRain, RainLlamaIndexLLM])
def test_a_ready_guard_engine_or_evaluator_is_used_as_it_is(cls):
    engine = set_guard("served-guard")  # as a VLLMEngine serving a guard would be
    on_engine = cls.from_engine(scripted("hi."), guard=engine, guard_preset="llama-guard-3-1b", encoder=None)
    assert on_engine.decoder.evaluator.lm is engine and on_engine.decoder.evaluator.preset is LLAMA_GUARD_3_1B
    ready = GuardEvaluator(set_guard(), LLAMA_GUARD_3_1B, scoring="discrete")
    assert cls.from_engine(scripted("hi."), guard=ready, encoder=None).decoder.evaluator is ready
    with pytest.raises(ValueError, match="no special token '<bos>'"):  # a Llama Guard tokenizer is not ShieldGemma's
        cls.from_engine(scripted("hi."), guard=set_guard(), guard_preset=SHIELDGEMMA, encoder=None)


# --- one description ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("constructor", "options"),
    [
        (ChatRain.from_model_id, LoadOptions),
        (RainLLM.from_model_id, LoadOptions),
        (RainLlamaIndexLLM.from_model_name, LoadOptions),
        (ChatRain.from_engine, DecoderOptions),
        (ChatRain.from_default, DecoderOptions),
        (RainLlamaIndexLLM.from_engine, DecoderOptions),
        (RainLlamaIndexLLM.from_default, DecoderOptions),
    ],
)
def test_every_constructor_shows_every_option(constructor, options):
    params = inspect.signature(constructor).parameters
    assert set(options.model_fields) <= set(params)
    assert all(
        params[name].kind is inspect.Parameter.KEYWORD_ONLY for name in options.model_fields if name != "evaluator"
    )
    assert params[next(reversed(params))].kind is inspect.Parameter.VAR_KEYWORD  # fields and RainConfig fields
    doc = inspect.getdoc(constructor)
    assert all(f"``{name}``" in doc for name in options.model_fields)
    assert "guard_preset" in doc and "llama-guard-3-1b" in doc
