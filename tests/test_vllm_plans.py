"""The vLLM engine's pure parts without a server: request plans fed canned answers (the JSON vLLM 0.32
sends), the probe, the answer readers, the metrics parser and the facts learnt at run time.

Each test drives a plan by hand: it reads the calls a plan yields and sends back answers written
here, the way ``vllm_runner`` would send the server's."""

from __future__ import annotations

import math
import threading
from typing import Any

import pytest

from rain_core.engines.vllm.answers import choices, positions_of, renormalised_logprob, tokens_of
from rain_core.engines.vllm.facts import OptionScoring, ServedModel, ServerFacts, ServerFeatures
from rain_core.engines.vllm.http import LogprobsLimitError, MissingFeatureError, ModelNotServedError
from rain_core.engines.vllm.metrics import parse_metrics, prefix_cache_hit_rate
from rain_core.engines.vllm.plans import Calls, PlanContext, generate, next_token_logprobs, sample, top_tokens
from rain_core.engines.vllm.probe import choose_model, probe
from rain_core.protocols import ContextTooLongError, Continuation, EngineError

EOS = 2
PREFIX = [11, 12, 13]


def context(
    *,
    send_seeds: bool = False,
    max_resends: int = 2,
    features: ServerFeatures | None = None,
    facts: ServerFacts | None = None,
    context_length: int = 64,
) -> PlanContext:
    return PlanContext(
        ServedModel("toy", context_length, "/models/toy"),
        "http://fake:8000",
        send_seeds,
        max_resends,
        features or ServerFeatures(),
        facts if facts is not None else ServerFacts({EOS}),
    )


def entry(position: dict[int, float]) -> dict[str, float]:
    return {f"token_id:{t}": v for t, v in position.items()}


def choice(
    tokens: list[int],
    positions: list[dict[int, float]] | None = None,
    *,
    index: int = 0,
    finish: str = "length",
    stop_reason: Any = None,
    token_ids: bool = True,
) -> dict[str, Any]:
    """One choice as vLLM writes it with return_tokens_as_token_ids (and return_token_ids)."""
    out: dict[str, Any] = {
        "index": index,
        "text": "",
        "finish_reason": finish,
        "stop_reason": stop_reason,
        "token_ids": tokens if token_ids else None,
        "logprobs": None,
        "prompt_logprobs": None,
    }
    if positions is not None:
        out["logprobs"] = {
            "tokens": [f"token_id:{t}" for t in tokens],
            "top_logprobs": [entry(p) for p in positions],
            "token_logprobs": [p.get(t) for t, p in zip(tokens, positions)],
        }
    return out


def answer(*found: dict[str, Any]) -> dict[str, Any]:
    return {"id": "cmpl-canned", "object": "text_completion", "choices": list(found), "usage": {}}


def run(plan, *answers: list[dict[str, Any]]) -> tuple[list[Calls], Any]:
    """Drive ``plan`` with one list of answers per yield; the yields and the plan's answer."""
    yielded = [next(plan)]
    for i, reply in enumerate(answers):
        try:
            yielded.append(plan.send(reply))
        except StopIteration as stop:
            assert i == len(answers) - 1, "the plan finished before every canned answer was used"
            return yielded, stop.value
    raise AssertionError(f"the plan wants more answers after {len(answers)}: {yielded[-1]}")


def finished(plan) -> Any:
    """The answer of a plan that returns without sending anything."""
    with pytest.raises(StopIteration) as stop:
        next(plan)
    return stop.value.value


# A position's raw log-probabilities: token 5 first, then 7, 9, 4, 8.
POS = {5: -0.5, 7: -1.5, 9: -2.0, 4: -3.0, 8: -4.0}


# --- top tokens ---------------------------------------------------------------------------------
def test_top_tokens_asks_for_k_plus_excluded_and_returns_the_rest_in_order():
    calls, got = run(top_tokens(context(), PREFIX, 3, 1.0, [7]), [answer(choice([5], [POS]))])
    (payload,) = [c.payload for c in calls[0].calls]
    assert payload["logprobs"] == 4 and payload["temperature"] == 0.0 and payload["max_tokens"] == 1
    assert payload["prompt"] == PREFIX and payload["model"] == "toy" and payload["return_tokens_as_token_ids"]
    assert got == [Continuation((5,), -0.5), Continuation((9,), -2.0), Continuation((4,), -3.0)]


def test_top_tokens_at_a_temperature_divides_the_raw_values():
    _, got = run(top_tokens(context(), PREFIX, 2, 0.5, []), [answer(choice([5], [POS]))])
    assert got == [Continuation((5,), -1.0), Continuation((7,), -3.0)]


def test_top_tokens_leave_out_a_drawn_token_outside_the_top():
    listed = {3: -9.0, 5: -0.5, 7: -1.5}  # vLLM lists the drawn token first, then the top 2
    _, got = run(top_tokens(context(), PREFIX, 2, 1.0, []), [answer(choice([3], [listed]))])
    assert [c.token_ids for c in got] == [(5,), (7,)]


def test_top_tokens_retry_at_the_limit_a_refusal_names_when_k_fits():
    plan = top_tokens(context(), PREFIX, 3, 1.0, [7, 9, 4])
    first = next(plan)
    assert first.calls[0].payload["logprobs"] == 6
    again = plan.throw(LogprobsLimitError("over", limit=5))
    assert again.calls[0].payload["logprobs"] == 5 and not again.resend
    with pytest.raises(StopIteration) as stop:
        plan.send([answer(choice([5], [POS]))])
    assert stop.value.value == [Continuation((5,), -0.5), Continuation((8,), -4.0)]
    plan = top_tokens(context(), PREFIX, 6, 1.0, [])
    next(plan)
    with pytest.raises(LogprobsLimitError):
        plan.throw(LogprobsLimitError("over", limit=5))


def test_a_known_logprobs_limit_caps_the_ask_and_refuses_before_sending():
    facts = ServerFacts({EOS})
    facts.learn_logprobs_limit(4)
    calls, _ = run(top_tokens(context(facts=facts), PREFIX, 3, 1.0, [7, 9]), [answer(choice([5], [POS]))])
    assert calls[0].calls[0].payload["logprobs"] == 4
    with pytest.raises(LogprobsLimitError, match="--max-logprobs 5") as info:
        next(top_tokens(context(facts=facts), PREFIX, 5, 1.0, []))
    assert info.value.limit == 4
    with pytest.raises(LogprobsLimitError, match="--max-logprobs 6"):
        next(sample(context(facts=facts), PREFIX, 2, 3, 6, 1.0, 0, True))


def test_cut_short_lists_are_asked_again_then_fail_loudly():
    short = {5: -0.5, 0: -9999.0}
    plan = top_tokens(context(max_resends=1), PREFIX, 3, 1.0, [])
    first = next(plan)
    second = plan.send([answer(choice([5], [short]))])
    assert second.resend and second.calls == first.calls
    with pytest.raises(EngineError, match="logprob_token_ids"):
        plan.send([answer(choice([5], [short]))])


def test_the_context_is_checked_before_anything_is_sent():
    with pytest.raises(ContextTooLongError, match="context of 8"):
        next(top_tokens(context(context_length=8), list(range(8)), 2, 1.0, []))
    with pytest.raises(ValueError, match="at least one token"):
        next(top_tokens(context(), [], 2, 1.0, []))
    assert finished(top_tokens(context(), PREFIX, 0, 1.0, [])) == []


# --- sample -------------------------------------------------------------------------------------
def test_sample_sends_a_greedy_row_and_the_rest_and_renormalises_over_the_top_k():
    ctx = context(send_seeds=True)
    p1, p2 = {5: -0.5, 7: -1.5, 9: -2.0}, {9: -0.2, 4: -2.2, 8: -2.5}
    greedy = choice([5, 9], [p1, p2])
    drawn = [choice([7, 4], [p1, p2], index=0), choice([5, EOS], [p1, {EOS: -1.0, 9: -0.7}], index=1, finish="stop")]
    calls, rows = run(sample(ctx, PREFIX, 3, 2, 2, 0.7, 12, True), [answer(greedy), answer(*reversed(drawn))])
    first, second = (c.payload for c in calls[0].calls)
    assert first["n"] == 1 and first["temperature"] == 0.0 and "seed" not in first and "top_k" not in first
    assert second["n"] == 2 and second["temperature"] == 0.7 and second["top_k"] == 2 and second["seed"] == 12
    assert first["logprobs"] == second["logprobs"] == 2 and first["stop_token_ids"] == [EOS]

    def expected(tokens, positions):
        total = 0.0
        for t, p in zip(tokens, positions):
            top = sorted(p.values(), reverse=True)[:2]
            total += p[t] / 0.7 - math.log(sum(math.exp(v / 0.7) for v in top))
        return total

    assert [r.token_ids for r in rows] == [(5, 9), (7, 4), (5, EOS)], "rows in index order, greedy first"
    assert rows[0].logprob == pytest.approx(expected([5, 9], [p1, p2]), abs=1e-12)
    assert rows[1].logprob == pytest.approx(expected([7, 4], [p1, p2]), abs=1e-12)
    assert ctx.facts.eos_token_ids == {EOS}, "EOS was sent as a stop token id: nothing to learn"


def test_sample_learns_an_eos_the_server_ended_a_row_with():
    ctx = context()
    _, rows = run(
        sample(ctx, PREFIX, 1, 3, 2, 1.0, 0, False),
        [answer(choice([5, 30], [POS, {30: -0.1, 5: -3.0}], finish="stop"))],
    )
    assert rows[0].token_ids == (5, 30) and ctx.facts.eos_token_ids == {EOS, 30}
    calls, _ = run(sample(ctx, PREFIX, 1, 1, 2, 1.0, 0, False), [answer(choice([5], [POS]))])
    assert calls[0].calls[0].payload["stop_token_ids"] == [EOS, 30], "the learnt EOS stops later rows"
    assert "seed" not in calls[0].calls[0].payload, "no seeds unless the context sends them"


def test_sample_edge_sizes_and_a_malformed_answer():
    assert finished(sample(context(), PREFIX, 0, 3, 2, 1.0, 0, True)) == []
    assert finished(sample(context(), PREFIX, 2, 0, 2, 1.0, 0, True)) == [Continuation((), 0.0)] * 2
    plan = sample(context(), PREFIX, 1, 3, 2, 1.0, 0, True)
    next(plan)
    with pytest.raises(EngineError, match="1 log-probabilities for 2 tokens"):
        plan.send([answer(choice([5, 9], [POS]))])


# --- generate -----------------------------------------------------------------------------------
def test_generate_maps_its_options_and_caps_max_tokens_by_the_context():
    calls, tokens = run(
        generate(context(), PREFIX, 100, None, 0.8, 5, ["\n"], {40}), [answer(choice([5, 6, 40], finish="stop"))]
    )
    payload = calls[0].calls[0].payload
    assert payload["top_k"] == -1 and payload["stop"] == ["\n"] and payload["stop_token_ids"] == [EOS, 40]
    assert payload["max_tokens"] == 64 - len(PREFIX) and "logprobs" not in payload and "seed" not in payload
    assert tokens == [5, 6, 40]
    assert finished(generate(context(), PREFIX, 0, None, 1.0, 0, [], ())) == []
    assert finished(generate(context(context_length=3), PREFIX, 5, None, 1.0, 0, [], ())) == []


def test_generate_reads_ids_from_the_logprobs_when_answers_carry_no_token_ids():
    ctx = context(features=ServerFeatures(token_ids_field=False))
    calls, tokens = run(
        generate(ctx, PREFIX, 4, 3, 1.0, 0, [], ()), [answer(choice([5, 9], [POS, POS], token_ids=False))]
    )
    assert calls[0].calls[0].payload["logprobs"] == 0 and calls[0].calls[0].payload["top_k"] == 3
    assert tokens == [5, 9]


# --- next-token log-probabilities -----------------------------------------------------------------
def test_option_letters_by_allowed_token_ids_one_candidate_after_the_other():
    prompts = [PREFIX, [11, 14]]
    plan = next_token_logprobs(context(), prompts, [5, 9, 5])
    first = next(plan)
    assert len(first.calls) == 1 and first.calls[0].payload["allowed_token_ids"] == [5]
    assert first.calls[0].payload["prompt"] == prompts and first.calls[0].payload["logprobs"] == 0
    rest = plan.send([answer(choice([5], [{5: -0.1}], index=0), choice([5], [{5: -0.2}], index=1))])
    assert [c.payload["allowed_token_ids"] for c in rest.calls] == [[9]], "distinct candidates only"
    with pytest.raises(StopIteration) as stop:
        plan.send([answer(choice([9], [{9: -2.5}], index=1), choice([9], [{9: -2.0}], index=0))])
    assert stop.value.value == [[-0.1, -2.0, -0.1], [-0.2, -2.5, -0.2]]


def test_a_server_ignoring_allowed_token_ids_is_named():
    plan = next_token_logprobs(context(), [PREFIX], [5])
    next(plan)
    with pytest.raises(MissingFeatureError, match="allowed_token_ids=\\[5\\]"):
        plan.send([answer(choice([7], [{7: -0.1}]))])


def test_option_letters_by_prompt_logprobs_in_one_request():
    ctx = context(features=ServerFeatures(option_scoring=OptionScoring.PROMPT_LOGPROBS))
    prompts = [PREFIX, [11, 14]]

    def scored(prompt: list[int], value: float, index: int) -> dict[str, Any]:
        out = choice([1], index=index)
        out["prompt_logprobs"] = [None] * (len(prompt) - 1) + [{str(prompt[-1]): {"logprob": value, "rank": 1}}]
        return out

    flat = [p + [c] for p in prompts for c in (5, 9)]
    values = [-0.1, -2.0, -0.2, -2.5]
    calls, got = run(
        next_token_logprobs(ctx, prompts, [5, 9]),
        [answer(*(scored(f, v, i) for i, (f, v) in enumerate(zip(flat, values))))],
    )
    assert calls[0].calls[0].payload["prompt"] == flat and calls[0].calls[0].payload["prompt_logprobs"] == 0
    assert got == [[-0.1, -2.0], [-0.2, -2.5]]
    assert finished(next_token_logprobs(ctx, [], [5])) == []
    assert finished(next_token_logprobs(ctx, [PREFIX], [])) == [[]]


# --- reading answers ------------------------------------------------------------------------------
def test_answer_readers():
    assert [c["index"] for c in choices(answer(choice([1], index=1), choice([2], index=0)))] == [0, 1]
    with pytest.raises(EngineError, match="no choices"):
        choices({"error": "x"})
    with pytest.raises(MissingFeatureError, match="return_tokens_as_token_ids"):
        positions_of({"logprobs": {"top_logprobs": [{"hello": -0.1}]}})
    with pytest.raises(MissingFeatureError, match="neither token_ids"):
        tokens_of({"token_ids": None, "logprobs": None})
    with pytest.raises(MissingFeatureError, match="no log-probabilities"):
        positions_of({"logprobs": None})


def test_renormalised_logprob_over_the_top_k_and_a_tie_at_the_kth_place():
    p = {5: -0.5, 7: -1.5, 9: -2.0}
    want = -1.5 - math.log(math.exp(-0.5) + math.exp(-1.5))
    assert renormalised_logprob(7, p, 2, 1.0) == pytest.approx(want, abs=1e-12)
    tied = {5: -0.5, 7: -1.5, 9: -1.5}  # 9 tied with 7 at the second place, and drawn
    assert renormalised_logprob(9, tied, 2, 1.0) == pytest.approx(want, abs=1e-12)


# --- probing ------------------------------------------------------------------------------------
def probing(scoring: OptionScoring = OptionScoring.ALLOWED_TOKEN_IDS):
    return probe("toy", "http://fake:8000", PREFIX, EOS, scoring)


RAW = {5: -0.2, 7: -2.6, 9: -3.5, 4: -4.0, 8: -4.5}


def test_probe_finds_the_features_of_a_vllm_server():
    calls, features = run(probing(), [answer(choice([5], [RAW]))], [answer(choice([EOS], [{EOS: -6.0}]))])
    assert features == ServerFeatures(token_ids_field=True, option_scoring=OptionScoring.ALLOWED_TOKEN_IDS)
    assert calls[1].calls[0].payload["allowed_token_ids"] == [EOS]


def test_probe_falls_back_to_prompt_logprobs_and_notices_missing_token_ids():
    with_prompt_logprobs = choice([5])
    with_prompt_logprobs["prompt_logprobs"] = [None, {"12": -1.0}, {"13": -2.0}]
    _, features = run(
        probing(),
        [answer(choice([5], [RAW], token_ids=False))],
        [answer(choice([5], [{5: -0.1}]))],  # drew 5 although only EOS was allowed
        [answer(with_prompt_logprobs)],
    )
    assert features == ServerFeatures(token_ids_field=False, option_scoring=OptionScoring.PROMPT_LOGPROBS)


@pytest.mark.parametrize(
    "position,match",
    [
        ({5: 0.0, 7: -9999.0, 9: -9999.0}, "processed"),
        ({5: 7.0, 7: 5.0, 9: 4.0}, "logits"),
        ({}, "no log-probabilities"),
    ],
)
def test_probe_names_what_the_server_lacks(position, match):
    plan = probing()
    next(plan)
    with pytest.raises(MissingFeatureError, match=match):
        plan.send([answer(choice([5], [position]))])


def test_probe_refuses_a_server_without_a_way_to_read_option_letters():
    plan = probing(OptionScoring.PROMPT_LOGPROBS)
    next(plan)
    plan.send([answer(choice([5], [RAW]))])
    with pytest.raises(MissingFeatureError, match="neither allowed_token_ids nor prompt_logprobs"):
        plan.send([answer(choice([5]))])


def test_choose_model():
    served = [{"id": "a", "root": "/m/a", "max_model_len": 128}, {"id": "b", "max_model_len": 64}]
    assert choose_model(served, "a", "u") == ServedModel("a", 128, "/m/a")
    assert choose_model(served[1:], None, "u") == ServedModel("b", 64, None)
    with pytest.raises(ModelNotServedError, match="pass model=") as info:
        choose_model(served, None, "u")
    assert info.value.served == ["a", "b"]
    with pytest.raises(ModelNotServedError, match="does not serve 'c'"):
        choose_model(served, "c", "u")
    with pytest.raises(MissingFeatureError, match="max_model_len"):
        choose_model([{"id": "a"}], "a", "u")


# --- facts and metrics ----------------------------------------------------------------------------
def test_server_facts_learn_each_fact_once_across_threads():
    facts = ServerFacts({EOS})
    assert facts.logprobs_limit is None
    facts.learn_logprobs_limit(None)
    assert facts.logprobs_limit is None, "a refusal that names no limit teaches nothing"
    facts.learn_logprobs_limit(20)
    assert facts.logprobs_limit == 20
    new: list[bool] = []
    threads = [threading.Thread(target=lambda: new.append(facts.learn_eos(30))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert new.count(True) == 1 and facts.eos_token_ids == {EOS, 30}
    assert facts.learn_eos(EOS) is False


def test_metrics_are_parsed_for_the_model_and_summed_over_engines():
    text = "\n".join(
        [
            "# TYPE vllm:prefix_cache_queries_total counter",
            'vllm:prefix_cache_queries_total{engine="0",model_name="toy"} 400.0',
            'vllm:prefix_cache_queries_total{engine="1",model_name="toy"} 100.0',
            'vllm:prefix_cache_queries_total{engine="0",model_name="other"} 999.0',
            'vllm:gpu_prefix_cache_hits_total{engine="0",model_name="toy"} 300.0',
            "vllm:num_requests_waiting 3.0",
            'vllm:unrelated_total{model_name="toy"} 1.0',
        ]
    )
    now = parse_metrics(text, "toy")
    assert now == {"prefix_cache_queries": 500.0, "prefix_cache_hits": 300.0, "requests_waiting": 3.0}
    assert prefix_cache_hit_rate(now) == pytest.approx(0.6)
    assert prefix_cache_hit_rate(now, now) is None
