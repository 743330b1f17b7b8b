"""Configuration errors are one line that names the field, the value and what the field allows
(``ConfigError``, a ``ValueError`` that keeps pydantic's details), from ``RainConfig``, ``RainDecoder``
and per-call overrides alike; and the adapters' constructors check every option before any weights
load: a loader that fails when called shows that the bad-option error comes first, and a good set of
options does reach it."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

import rain_core.loaders.models as loading
from rain_core import ConfigError, RainConfig, RainDecoder
from rain_integrations.langchain import ChatRain, RainLLM
from rain_integrations.llamaindex import RainLlamaIndexLLM


class WeightsLoaded(Exception):
    """Raised by the patched loaders: a constructor got as far as loading a model."""


@pytest.fixture(autouse=True)
def loaders_that_fail(monkeypatch):
    def refuse(name: str) -> Any:
        def load(*args: Any, **kwargs: Any) -> Any:
            raise WeightsLoaded(f"{name}{args}")

        return load

    for name in ("load_model", "load_default_model", "shared_default_model"):
        monkeypatch.setattr(loading, name, refuse(name))


LANGCHAIN = [ChatRain, RainLLM]
GUARD = "meta-llama/Llama-Guard-3-1B"

# (keyword arguments, the error type, a regular expression its message matches)
BAD = [
    (dict(max_searches=-1), ConfigError, r"^RainConfig: max_searches must be an integer >= 1, got -1$"),
    (dict(max_new_tokens=0), ConfigError, r"^RainConfig: max_new_tokens must be an integer >= 1, got 0$"),
    (dict(max_serches=3), TypeError, r"unknown option\(s\) \['max_serches'\]: pass \w+ fields or RainConfig fields"),
    (dict(principle="harmles"), ValueError, r"unknown principle 'harmles': use one of harmless"),
    (dict(principle="/no/such/principle.toml"), ValueError, r"unknown principle '/no/such/principle.toml'"),
    (dict(evaluator=lambda p, r: 1.0, judge="some/judge"), TypeError, r"pass either judge .* or evaluator, not both"),
    (dict(config={"max_searches": 2}), TypeError, r"config must be a RainConfig, got dict"),
    (dict(config=RainConfig(), scoring="loud"), ConfigError, r"scoring must be 'discrete' or 'continuous', got 'loud'"),
    (dict(encoder="minilm"), ValidationError, r'encoder must be an Encoder, "default" or None'),
    (dict(guard=GUARD, judge="some/judge"), TypeError, r"pass either judge .* not both: got judge and guard"),
    (dict(guard="/models/my-guard"), ValidationError, r"cannot tell which guard family .* \(here: guard_preset=\)"),
    (dict(guard=GUARD, guard_preset="llama-guard-4"), ValidationError, r"unknown guard preset 'llama-guard-4'"),
    (dict(guard_preset="llama-guard-3"), TypeError, r"guard_preset configure a guard: pass guard= as well"),
    (dict(guard=GUARD, principle="truthful"), TypeError, r"a guard judges by its own policy"),
    (dict(guard=GUARD, guard_kwargs={"scoring": "loud"}), ValueError, r"scoring must be 'discrete' or 'continuous'"),
]

LANGCHAIN_BAD = [
    (dict(max_tokens=0), ValidationError, r"validation error for (ChatRain|RainLLM)\nmax_tokens\n  Input should be"),
    (dict(temperature=-1), ValidationError, r"temperature\n  Input should be greater than or equal to 0"),
    (dict(timeout="soon"), ValidationError, r"timeout\n  Input should be a valid number"),
    (dict(stop="END"), ValidationError, r"stop\n  Input should be a valid list"),
    (dict(rain_options={"max_searches": 0}), ConfigError, r"^RainConfig: max_searches must be an integer >= 1, got 0$"),
    (dict(rain_options={"max_serches": 2}), TypeError, r"unknown RAIN option\(s\) \['max_serches'\]"),
    (dict(decoder=None), TypeError, r"the constructors build the decoder"),
]


@pytest.mark.parametrize("cls", LANGCHAIN)
@pytest.mark.parametrize(("kwargs", "error", "message"), BAD + LANGCHAIN_BAD)
def test_langchain_from_default_checks_before_loading(cls, kwargs, error, message):
    with pytest.raises(error, match=message):
        cls.from_default(**kwargs)


@pytest.mark.parametrize("cls", LANGCHAIN)
@pytest.mark.parametrize(("kwargs", "error", "message"), BAD + LANGCHAIN_BAD)
def test_langchain_from_model_id_checks_before_loading(cls, kwargs, error, message):
    with pytest.raises(error, match=message):
        cls.from_model_id("/models/not-loaded-yet", device_map="auto", dtype="bfloat16", **kwargs)


LLAMAINDEX_BAD = [
    (dict(context_window=1), ValidationError, r"RainLlamaIndexLLM\ncontext_window\n  Input should be greater than 1"),
    (dict(llm_kwargs={"system_prompt": 3}), ValidationError, r"system_prompt\n  Input should be a valid string"),
    (dict(llm_kwargs={"contxt_window": 3}), TypeError, r"unknown option\(s\) \['contxt_window'\]"),
    (dict(plain="sometimes"), ValidationError, r"plain\n  Input should be a valid boolean"),
]


@pytest.mark.parametrize(("kwargs", "error", "message"), BAD + LLAMAINDEX_BAD)
def test_llamaindex_constructors_check_before_loading(kwargs, error, message):
    with pytest.raises(error, match=message):
        RainLlamaIndexLLM.from_default(**kwargs)
    with pytest.raises(error, match=message):
        RainLlamaIndexLLM.from_model_name("org/not-loaded-yet", device="cpu", **kwargs)


@pytest.mark.parametrize(
    "build",
    [
        lambda: ChatRain.from_default(max_tokens=8, max_searches=3, temperature=0, stop=["\n"], principle="truthful"),
        lambda: RainLLM.from_model_id("/models/m", device_map="auto", timeout=30, rain_options={"seed": 1}),
        lambda: RainLlamaIndexLLM.from_default(
            max_new_tokens=8, context_window=512, llm_kwargs={"system_prompt": "Hi"}
        ),
        lambda: RainLlamaIndexLLM.from_model_name("org/m", judge="org/judge", config=RainConfig.fast()),
        lambda: ChatRain.from_model_id("org/m", guard=GUARD, guard_kwargs={"device": "cpu", "threshold": 0.4}),
        lambda: RainLlamaIndexLLM.from_default(guard="/models/guard", guard_preset="shieldgemma"),
    ],
)
def test_good_options_reach_the_loader(build):
    with pytest.raises(WeightsLoaded):
        build()


def test_the_model_id_passes_through_to_the_loader_with_its_options():
    with pytest.raises(WeightsLoaded, match=r"load_model\('/models/m',\)"):
        ChatRain.from_model_id("/models/m", device_map="auto")
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['device_map'\]"):
        ChatRain.from_default(device_map="auto")  # loading options belong to from_model_id


# --- the core's configuration errors: one line each --------------------------------------------------
CORE_BAD = [
    (dict(max_new_tokens=0), "RainConfig: max_new_tokens must be an integer >= 1, got 0"),
    (dict(num_candidates=300), "RainConfig: num_candidates must be an integer in [1, 256], got 300"),
    (dict(temperature=0), "RainConfig: temperature must be a number in (0, 100], got 0"),
    (dict(value_threshold=1.5), "RainConfig: value_threshold must be a number in [-1, 1], got 1.5"),
    (dict(max_seconds=-2.0), "RainConfig: max_seconds must be a number > 0 or None, got -2.0"),
    (dict(simulation_top_k=0), "RainConfig: simulation_top_k must be an integer >= 1 or None, got 0"),
    (dict(max_searches="many"), "RainConfig: max_searches must be an integer >= 1, got 'many'"),
    (dict(similarity_update="maybe"), "RainConfig: similarity_update must be True or False, got 'maybe'"),
    (dict(scoring="loud"), "RainConfig: scoring must be 'discrete' or 'continuous', got 'loud'"),
    (dict(temperature=float("nan")), "RainConfig: temperature must be a finite number, got nan"),
    (dict(token_set_lengths=()), "RainConfig: token_set_lengths must name at least one length, e.g. (1, 2, 4, 10)"),
    (
        dict(max_searches=0, max_new_tokens=0),
        "RainConfig: max_searches must be an integer >= 1, got 0; max_new_tokens must be an integer >= 1, got 0",
    ),
]


@pytest.mark.parametrize(("kwargs", "line"), CORE_BAD)
def test_config_errors_are_one_line_naming_field_value_and_range(kwargs, line):
    from fakes import CharLM

    lm = CharLM()
    for build in (
        lambda: RainConfig(**kwargs),
        lambda: RainConfig().merged(**kwargs),
        lambda: RainConfig.model_validate(kwargs),
        lambda: RainDecoder(lm, **kwargs),
        lambda: RainDecoder(lm).resolve_config(**kwargs),  # a per-call override
    ):
        with pytest.raises(ConfigError) as caught:
            build()
        assert str(caught.value) == line
        assert isinstance(caught.value, ValueError)  # `except ValueError` still catches it


def test_a_config_error_keeps_pydantics_details():
    with pytest.raises(ConfigError) as caught:
        RainConfig(max_new_tokens=0, num_candidates=300)
    err = caught.value
    assert isinstance(err.validation_error, ValidationError)
    assert [(e["loc"], e["type"], e["input"]) for e in err.errors] == [
        (("num_candidates",), "less_than_equal", 300),
        (("max_new_tokens",), "greater_than_equal", 0),
    ]
    assert err.errors == [dict(e) for e in err.validation_error.errors()]
    assert err.__cause__ is None and err.__suppress_context__  # no second, multi-line traceback under it


def test_good_values_still_build():
    cfg = RainConfig(max_new_tokens=1, num_candidates=256, temperature=100, value_threshold=-1)
    assert cfg.merged(max_seconds=0.5).max_seconds == 0.5
    assert RainConfig.fast(max_searches=3).lazy_expansion is True
