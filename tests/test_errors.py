"""Bad input gets a clear error naming the problem."""

import math

import pytest
from fakes import CharLM

from rain_core import CallableEvaluator, ContextTooLongError, EvaluatorError, RainConfig, RainDecoder, load_principle


@pytest.fixture
def dec():
    return RainDecoder(CharLM(), lambda p, r: 0.0, encoder=None, max_new_tokens=4, max_searches=2)


@pytest.mark.parametrize(
    "prompt, exc, words",
    [
        ("", ValueError, "empty"),
        ("   \n", ValueError, "empty"),
        ([], ValueError, "no messages"),
        ([{"role": "user", "content": "  "}], ValueError, "empty"),
        (123, TypeError, "list of"),
        (b"hi", TypeError, "bytes"),
        (None, TypeError, "list of"),
        (["hi"], TypeError, "message 0"),
        ([{"role": "bot", "content": "hi"}], ValueError, "role 'bot'"),
        ([{"role": "user"}], ValueError, "no 'content'"),
        ([{"role": "user", "content": 5}], TypeError, "content must be a string"),
    ],
)
def test_malformed_prompts(dec, prompt, exc, words):
    with pytest.raises(exc, match=words):
        dec.generate(prompt)
    with pytest.raises(exc, match=words):
        list(dec.stream(prompt))
    with pytest.raises(exc, match=words):
        dec.vanilla(prompt)


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("max_searches", -1, "max_searches"),
        ("max_searches", 0, "max_searches"),
        ("min_visits", -5, "min_visits"),
        ("value_threshold", 1.5, "value_threshold"),
        ("value_threshold", math.nan, "value_threshold"),
        ("c_puct", math.inf, "c_puct"),
        ("similarity_threshold", -2.0, "similarity_threshold"),
        ("temperature", 0.0, "temperature"),
        ("max_new_tokens", 0, "max_new_tokens"),
        ("num_candidates", 0, "num_candidates"),
        ("token_set_lengths", (), "token_set_lengths"),
        ("token_set_lengths", (1, 0), "token_set_lengths"),
        ("stop", [""], "stop"),
        ("scoring", "fuzzy", "scoring"),
        ("max_searches", "many", "max_searches"),
    ],
)
def test_invalid_config_values(dec, field, value, words):
    with pytest.raises(ValueError, match=words):
        RainConfig(**{field: value})
    with pytest.raises(ValueError, match=words):
        dec.generate("hi", **{field: value})


def test_unknown_option_names_the_valid_ones(dec):
    with pytest.raises(TypeError, match="unknown RAIN option.*max_serches"):
        dec.generate("hi", max_serches=3)
    with pytest.raises(ValueError, match=r"^RainConfig: unknown option max_serches=3; the options are RainConfig's"):
        RainConfig(max_serches=3)


def test_config_is_frozen():
    cfg = RainConfig()
    with pytest.raises(ValueError):
        cfg.max_searches = 3
    assert cfg.merged(max_searches=3).max_searches == 3 and cfg.max_searches == 50


def test_unknown_principle():
    with pytest.raises(ValueError, match="unknown principle 'nice'.*harmless"):
        load_principle("nice")


def test_prompt_longer_than_the_context():
    dec = RainDecoder(CharLM(context_length=4096), lambda p, r: 0.0, encoder=None, max_length=10_000)
    with pytest.raises(ContextTooLongError, match="4096"):
        dec.generate("x" * 5000)
    with pytest.raises(ContextTooLongError, match="max_length=100"):
        dec.generate("x" * 200, max_length=100)
    with pytest.raises(ContextTooLongError):
        dec.vanilla("x" * 5000)
    with pytest.raises(ContextTooLongError, match="max_length=2048"):
        RainDecoder(CharLM(), lambda p, r: 0.0, encoder=None).generate("x" * 3000)


@pytest.mark.parametrize("bad", [2.0, -1.5, math.nan, "good", None, True])
def test_evaluator_out_of_range(bad):
    dec = RainDecoder(CharLM(), lambda p, r: bad, encoder=None, max_new_tokens=4, max_searches=2)
    with pytest.raises(EvaluatorError, match="evaluator .*number in \\[-1, 1\\]"):
        dec.generate("hi")


def test_bad_constructor_arguments():
    with pytest.raises(TypeError, match="LanguageModel"):
        RainDecoder("SmolLM2")
    with pytest.raises(TypeError, match="evaluator"):
        RainDecoder(CharLM(), evaluator=42)
    with pytest.raises(TypeError, match="callable"):
        CallableEvaluator(42)
    with pytest.raises(TypeError, match="RainConfig"):
        RainDecoder(CharLM(), config={"max_searches": 2})


def test_batch_evaluator_must_return_one_score_per_response():
    ev = CallableEvaluator(batch_fn=lambda p, rs: [0.0])
    with pytest.raises(ValueError, match="1 scores for 2"):
        ev.score_batch("p", ["a", "b"])
    assert CallableEvaluator(batch_fn=lambda p, rs: [0.5] * len(rs)).score("p", "a") == 0.5


def test_an_engine_without_a_default_encoder_says_what_to_pass():
    dec = RainDecoder(CharLM(), lambda p, r: 0.0, max_new_tokens=4, max_searches=2)  # encoder="default"
    with pytest.raises(TypeError, match="no default sentence encoder.*encoder=None"):
        dec.generate("hi")
    assert (
        RainDecoder(
            CharLM(),
            lambda p, r: 0.0,
            max_new_tokens=4,
            max_searches=2,
            similarity_update=False,
            dynamic_node_addition=False,
        )
        .generate("hi")
        .text
        is not None
    )
    with pytest.raises(ValueError, match="encoder must be"):
        RainDecoder(CharLM(), encoder="minilm")
