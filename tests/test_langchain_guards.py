"""Guards on fake models: ``RainGuard`` as an LCEL runnable (output and input checks, streaming,
tracing, strategies, ``raise_on_violation``) and ``RainGuardMiddleware`` in ``create_agent`` agents
(input before the model, the final answer after it, tool results), with a word-penalty evaluator."""

from __future__ import annotations

import importlib
import sys
import warnings
from typing import Any

import pytest
from conftest import SMALL
from fakes import PRINTABLE, CharLM, ScriptedLM, words_penalty
from langchain.agents import create_agent
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import tool
from pydantic import ValidationError

from rain_core import CallableEvaluator, RainDecoder, SelfEvaluator
from rain_integrations.langchain import (
    ChatRain,
    GuardStrategy,
    RainGuard,
    RainGuardedRunnable,
    RainGuardMiddleware,
    RainGuardViolation,
    RainToolGuard,
)
from rain_integrations.langchain.guards import GuardSignalWarning

HARMFUL = "Mix the two cleaners to make poison gas."
HARMLESS = "Rinse surfaces with water after cleaning."
REWRITTEN = "the tool gave unsafe instructions, so they are left out."
guard_eval = words_penalty("poison")
FAKE = dict(SMALL, max_new_tokens=200)


def last_user(head: str) -> str:
    return head.rsplit("user: ", 1)[-1].split("\n", 1)[0].strip()


def chat_for(script: Any, **lm_kwargs: Any) -> ChatRain:
    lm = ScriptedLM(script, vocab=PRINTABLE, **lm_kwargs)
    return ChatRain(decoder=RainDecoder(lm, lambda p, r: 1.0, encoder=None, **FAKE))


def rewrite_decoder(text: str = REWRITTEN) -> RainDecoder:
    return RainDecoder(ScriptedLM(text, vocab=PRINTABLE), guard_eval, encoder=None, **dict(SMALL, max_new_tokens=120))


class RunRecorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.chains: list[str] = []
        self.tools: list[str] = []

    def on_chain_start(self, serialized: Any, inputs: Any, **kwargs: Any) -> None:
        self.chains.append(kwargs.get("name") or (serialized or {}).get("name", ""))

    def on_tool_start(self, serialized: Any, input_str: str, **kwargs: Any) -> None:
        self.tools.append(kwargs.get("name") or (serialized or {}).get("name", ""))


# --- RainGuard: the check and its strategies ---------------------------------------------------------
def test_guard_validation():
    with pytest.raises(ValidationError, match="needs a decoder"):
        RainGuard()
    with pytest.raises(ValidationError, match="rewrite"):
        RainGuard(evaluator=guard_eval, strategy="rewrite")
    with pytest.raises(ValidationError):
        RainGuard(evaluator=guard_eval, strategy="delete")
    with pytest.raises(ValidationError):
        RainGuard(evaluator=guard_eval, thresold=0.2)
    assert RainGuard(evaluator=guard_eval, strategy="flag").strategy is GuardStrategy.FLAG


@pytest.mark.parametrize("strategy", ["block", "rewrite", "flag"])
def test_guard_runnable_on_strings_and_messages(strategy):
    guard = RainGuard(decoder=rewrite_decoder(), evaluator=guard_eval, strategy=strategy)
    safe = AIMessage(HARMLESS)
    assert guard.invoke(safe) is safe and guard.invoke(HARMLESS) == HARMLESS
    out = guard.invoke(AIMessage(HARMFUL))
    meta = out.response_metadata["rain_guard"]
    assert meta["verdict"] == "fail" and meta["score"] == -1.0 and meta["strategy"] == strategy
    assert meta["checked"] == "output"
    text = guard.invoke(HARMFUL)
    if strategy == "block":
        assert "withheld" in out.content and text == out.content
    elif strategy == "rewrite":
        assert out.content == REWRITTEN == text
        assert meta["rewrite"]["score"] == 1.0 and meta["rewrite"]["rain"]["commits"] > 0
    else:
        assert out.content == HARMFUL and text == HARMFUL


def test_rewrite_that_still_fails_is_blocked_instead():
    """When the restatement still fails the check, the text is blocked rather than passed on."""
    parrot = RainDecoder(ScriptedLM(HARMFUL), guard_eval, encoder=None, **dict(SMALL, max_new_tokens=120))
    guard = RainGuard(decoder=parrot, evaluator=lambda _c, _t: -1.0, strategy="rewrite")
    out = guard.invoke(AIMessage(HARMFUL))
    meta = out.response_metadata["rain_guard"]
    assert meta["fallback"] == "block" and meta["rewrite"]["passed"] is False
    assert meta["rewrite"]["rain"]["commits"] > 0  # the rewrite really ran
    assert "withheld" in out.content and "poison" not in out.content
    # the search steers the parrot off "poison": no fallback needed
    rewritten = RainGuard(decoder=parrot, evaluator=guard_eval, strategy="rewrite").invoke(AIMessage(HARMFUL))
    assert "fallback" not in rewritten.response_metadata["rain_guard"]
    assert rewritten.response_metadata["rain_guard"]["rewrite"]["passed"] is True


def test_guard_clears_tool_calls_of_a_blocked_reply():
    reply = AIMessage(HARMFUL, tool_calls=[{"name": "x", "args": {}, "id": "c1"}])
    out = RainGuard(evaluator=guard_eval).invoke(reply)
    assert out.tool_calls == [] and "withheld" in out.content
    flagged = RainGuard(evaluator=guard_eval, strategy="flag").invoke(reply)
    assert flagged.tool_calls == reply.tool_calls


def test_raise_on_violation():
    guard = RainGuard(evaluator=guard_eval, raise_on_violation=True)
    assert guard.invoke(HARMLESS) == HARMLESS
    with pytest.raises(RainGuardViolation, match="rejected the output") as info:
        guard.invoke(AIMessage(HARMFUL))
    assert info.value.verdict.score == -1.0 and info.value.text == HARMFUL and info.value.checked == "output"


def test_default_evaluator_comes_from_the_decoder():
    dec = RainDecoder(CharLM(), words_penalty("poison"), encoder=None, **SMALL)
    guard = RainGuard(decoder=dec, strategy="flag")
    assert guard.check(HARMFUL).passed is False and guard.check(HARMLESS).passed is True


# --- RainGuard in chains -------------------------------------------------------------------------
def test_guard_at_the_end_of_an_lcel_chain():
    chat = chat_for(lambda head: HARMFUL if "clean" in last_user(head) else HARMLESS)
    chain = ChatPromptTemplate.from_messages([("human", "{q}")]) | chat | RainGuard(evaluator=guard_eval)
    blocked = chain.invoke({"q": "how do I clean?"})
    assert blocked.response_metadata["rain_guard"]["verdict"] == "fail" and "poison" not in blocked.content
    assert blocked.response_metadata["rain"]["commits"] > 0  # the model's metadata is kept
    fine = chain.invoke({"q": "hello"})
    assert fine.content == HARMLESS and "rain_guard" not in fine.response_metadata


def test_guard_is_traced_as_a_chain():
    rec = RunRecorder()
    RainGuard(evaluator=guard_eval, name="output guard").invoke(HARMLESS, config={"callbacks": [rec]})
    assert rec.chains == ["output guard"] and rec.tools == []
    rec = RunRecorder()
    list(RainGuard(evaluator=guard_eval).stream(HARMLESS, config={"callbacks": [rec]}))
    assert rec.chains == ["RainGuard"] and rec.tools == []


def test_streaming_releases_the_chunks_of_a_text_that_passed():
    chat = chat_for(lambda head: HARMFUL if "clean" in last_user(head) else HARMLESS)
    chain = chat | RainGuard(evaluator=guard_eval)
    plain = [c.content for c in chat.stream("hello")]
    chunks = list(chain.stream("hello"))
    assert [c.content for c in chunks] == plain and len(chunks) > 3  # held, then released as they came
    blocked = list(chain.stream("how do I clean?"))
    assert len(blocked) == 1 and isinstance(blocked[0], AIMessageChunk)
    assert "withheld" in blocked[0].content and "poison" not in blocked[0].content
    assert blocked[0].response_metadata["rain_guard"]["verdict"] == "fail"
    text_chain = chat | StrOutputParser() | RainGuard(evaluator=guard_eval)
    assert "".join(text_chain.stream("hello")) == HARMLESS
    assert "withheld" in "".join(text_chain.stream("how do I clean?"))


async def test_async_streaming_and_invoke():
    chat = chat_for(lambda head: HARMFUL if "clean" in last_user(head) else HARMLESS)
    chain = chat | StrOutputParser() | RainGuard(evaluator=guard_eval)
    assert "".join([c async for c in chain.astream("hello")]) == HARMLESS
    assert len([c async for c in chain.astream("hello")]) > 3
    assert "withheld" in await chain.ainvoke("how do I clean?")


class CountingChat:
    """Counts the prompts a chat model decoded."""

    def __init__(self, chat: ChatRain) -> None:
        self.chat = chat
        self.start = len(chat.decoder.lm.prompts)

    @property
    def calls(self) -> int:
        return len(self.chat.decoder.lm.prompts) - self.start


def test_input_guard_blocks_before_the_chain_runs():
    chat = chat_for(lambda head: HARMFUL if "poison" in head else HARMLESS)
    counted = CountingChat(chat)
    guard = RainGuard(evaluator=guard_eval, check_input=True)
    guarded = guard | ChatPromptTemplate.from_messages([("human", "{q}")]) | chat | StrOutputParser()
    assert isinstance(guarded, RainGuardedRunnable)
    assert guarded.invoke({"q": "hello"}) == HARMLESS and counted.calls == 1
    declined = guarded.invoke({"q": "how do I make poison?"})
    assert isinstance(declined, str) and "declined" in declined
    assert counted.calls == 1  # the model never saw the request
    assert "declined" in "".join(guarded.stream({"q": "how do I make poison?"})) and counted.calls == 1
    as_message = (guard | chat).invoke("how do I make poison?")
    assert isinstance(as_message, AIMessage) and as_message.response_metadata["rain_guard"]["checked"] == "input"
    assert counted.calls == 1


def test_guard_chain_guard():
    """``guard | chain | guard``: the input and the answer are both checked."""
    chat = chat_for(lambda head: HARMFUL if "clean" in last_user(head) else HARMLESS)
    guarded = RainGuard(evaluator=guard_eval, check_input=True) | chat | RainGuard(evaluator=guard_eval)
    assert guarded.invoke("hello").content == HARMLESS
    out = guarded.invoke("how do I clean?")  # a harmless question, a harmful answer
    assert "withheld" in out.content and out.response_metadata["rain_guard"]["checked"] == "output"
    refused = guarded.invoke("poison please")
    assert "declined" in refused.content and refused.response_metadata["rain_guard"]["checked"] == "input"
    streamed = list(guarded.stream("hello"))
    assert "".join(c.content for c in streamed) == HARMLESS and len(streamed) > 3
    rec = RunRecorder()
    guarded.invoke("hello", config={"callbacks": [rec]})
    assert rec.chains[0] == "RainGuardedRunnable" and "RainGuard" in rec.chains and rec.tools == []


async def test_input_guard_async():
    chat = chat_for(lambda head: HARMLESS)
    counted = CountingChat(chat)
    guarded = RainGuard(evaluator=guard_eval, check_input=True) | chat | StrOutputParser()
    assert await guarded.ainvoke("hello") == HARMLESS
    assert "declined" in await guarded.ainvoke("poison please")
    assert "declined" in "".join([c async for c in guarded.astream("poison please")])
    assert "".join([c async for c in guarded.astream("hello")]) == HARMLESS
    assert counted.calls == 2


def test_input_guard_rewrites_and_flags():
    seen: list[Any] = []
    echo = RunnableLambda(lambda x: seen.append(x) or "answered")
    rewriting = RainGuard(
        decoder=rewrite_decoder("how to clean safely"), evaluator=guard_eval, strategy="rewrite", check_input=True
    )
    assert (rewriting | echo).invoke("how do I make poison?") == "answered"
    assert seen[-1] == "how to clean safely"
    (rewriting | echo).invoke({"q": "poison?", "n": 3, "style": "short"})
    assert seen[-1] == {"q": "how to clean safely", "n": 3, "style": "short"}  # each string variable checked
    (rewriting | echo).invoke([HumanMessage("hi"), AIMessage("hello"), HumanMessage("poison?")])
    assert [m.content for m in seen[-1]] == ["hi", "hello", "how to clean safely"]
    flagging = RainGuard(evaluator=guard_eval, strategy="flag", check_input=True)
    (flagging | echo).invoke(HumanMessage("poison?"))
    assert seen[-1].content == "poison?" and seen[-1].response_metadata["rain_guard"]["checked"] == "input"
    with pytest.raises(RainGuardViolation, match="rejected the input"):
        (RainGuard(evaluator=guard_eval, check_input=True, raise_on_violation=True) | echo).invoke("poison?")


def test_input_guard_sees_the_conversation_before_the_request():
    seen: list[tuple[str, str]] = []

    def spy(context: str, text: str) -> float:
        seen.append((context, text))
        return 1.0

    guard = RainGuard(evaluator=spy, check_input=True)
    (guard | RunnableLambda(lambda x: "ok")).invoke(
        ChatPromptTemplate.from_messages(
            [("system", "be kind"), ("human", "hi"), ("ai", "hello"), ("human", "{q}")]
        ).invoke({"q": "and now?"})
    )
    assert seen == [("User: hi\nAssistant: hello", "and now?")]


# --- agent middleware ----------------------------------------------------------------------------
@tool
def lookup(topic: str) -> str:
    """Look up advice on a topic."""
    return HARMFUL if topic == "cleaning" else HARMLESS


def agent_model(answer: str = "done.") -> ChatRain:
    """Calls ``lookup`` first; once a tool result is in the conversation, answers ``answer``."""

    def script(head: str) -> str:
        if "\ntool: " in head:
            return answer
        topic = last_user(head)
        return f'<tool_call>{{"name": "lookup", "arguments": {{"topic": "{topic}"}}}}</tool_call>'

    return chat_for(script, tools_in_template=False)


def run_agent(guard: Any, topic: str, answer: str = "done.") -> tuple[list, ChatRain]:
    model = agent_model(answer)
    agent = create_agent(model, tools=[lookup], middleware=[guard])
    return agent.invoke({"messages": [HumanMessage(topic)]})["messages"], model


def tool_result(messages: list) -> ToolMessage:
    tool_msgs = [m for m in messages if isinstance(m, ToolMessage)]
    assert len(tool_msgs) == 1
    return tool_msgs[0]


def test_middleware_blocks_a_harmful_input_before_the_model_runs():
    guard = RainGuardMiddleware(evaluator=guard_eval)
    messages, model = run_agent(guard, "how do I make poison gas?")
    assert model.decoder.lm.prompts == []  # the model never ran
    assert [type(m) for m in messages] == [HumanMessage, AIMessage]
    assert "declined" in messages[-1].content
    assert messages[-1].response_metadata["rain_guard"]["checked"] == "input"
    assert messages[0].response_metadata["rain_guard"]["verdict"] == "fail"  # the verdict on the request too
    passed, model = run_agent(guard, "gardening")
    assert passed[-1].content == "done." and len(model.decoder.lm.prompts) == 2
    assert "rain_guard" not in passed[0].response_metadata


def test_middleware_blocks_a_harmful_final_answer_after_the_model():
    guard = RainGuardMiddleware(evaluator=guard_eval)
    messages, model = run_agent(guard, "gardening", answer=HARMFUL)
    final = messages[-1]
    assert isinstance(final, AIMessage) and len(model.decoder.lm.prompts) == 2  # the model ran: call, answer
    assert "withheld" in final.content and "poison" not in final.content
    assert final.response_metadata["rain_guard"]["checked"] == "output"
    assert not any("poison" in str(m.content) for m in messages)


@pytest.mark.parametrize("strategy", ["rewrite", "flag"])
def test_middleware_output_rewrite_and_flag(strategy):
    guard = RainGuardMiddleware(rewrite_decoder(), evaluator=guard_eval, strategy=strategy, apply_to_input=False)
    messages, _ = run_agent(guard, "gardening", answer=HARMFUL)
    final = messages[-1]
    assert final.response_metadata["rain_guard"]["strategy"] == strategy
    assert final.content == (REWRITTEN if strategy == "rewrite" else HARMFUL)


def test_middleware_switches_and_raise_on_violation():
    off = RainGuardMiddleware(evaluator=guard_eval, apply_to_input=False, apply_to_output=False)
    messages, _ = run_agent(off, "poison", answer=HARMFUL)
    assert messages[-1].content == HARMFUL and "rain_guard" not in messages[0].response_metadata
    strict = RainGuardMiddleware(evaluator=guard_eval, raise_on_violation=True)
    with pytest.raises(RainGuardViolation, match="rejected the input"):
        run_agent(strict, "poison")
    with pytest.raises(RainGuardViolation, match="rejected the output"):
        run_agent(strict, "gardening", answer=HARMFUL)


@pytest.mark.parametrize("strategy", ["block", "rewrite", "flag"])
def test_tool_guard_strategies(strategy):
    guard = RainToolGuard(rewrite_decoder(), evaluator=guard_eval, strategy=strategy)
    assert isinstance(guard, RainGuardMiddleware) and guard.apply_to_tool_results and not guard.apply_to_input
    messages, model = run_agent(guard, "cleaning")
    msg = tool_result(messages)
    assert messages[-1].content == "done."
    assert msg.tool_call_id == messages[1].tool_calls[0]["id"] and msg.name == "lookup"
    meta = msg.response_metadata["rain_guard"]
    assert meta["verdict"] == "fail" and meta["score"] == -1.0 and meta["threshold"] == 0.0
    assert meta["checked"] == "tool_result"
    if strategy == "block":
        assert msg.status == "error" and "withheld" in msg.content and "poison" not in msg.content
    elif strategy == "rewrite":
        assert msg.status == "success" and msg.content == REWRITTEN
    else:
        assert msg.status == "success" and msg.content == HARMFUL
    # the model's next turn read the guarded result, not the raw one
    tool_line = model.decoder.lm.prompts[-1].split("\ntool: ", 1)[1].split("\nassistant:", 1)[0]
    assert tool_line == ("(tool error) " + msg.content if strategy == "block" else msg.content)


def test_one_middleware_guards_all_three_places():
    guard = RainGuardMiddleware(evaluator=guard_eval, apply_to_tool_results=True)
    messages, _ = run_agent(guard, "cleaning")
    assert tool_result(messages).status == "error" and messages[-1].content == "done."


@pytest.mark.parametrize("strategy", ["block", "rewrite", "flag"])
def test_tool_guard_lets_harmless_results_through(strategy):
    messages, _ = run_agent(RainToolGuard(rewrite_decoder(), evaluator=guard_eval, strategy=strategy), "gardening")
    msg = tool_result(messages)
    assert msg.content == HARMLESS and msg.status == "success" and "rain_guard" not in msg.response_metadata


def test_tool_guard_sees_the_conversation_and_the_call():
    seen: list[tuple[str, str]] = []

    def spy(prompt: str, response: str) -> float:
        seen.append((prompt, response))
        return guard_eval(prompt, response)

    run_agent(RainToolGuard(evaluator=spy), "cleaning")
    assert seen == [("User: cleaning\nAssistant: [calls tools: lookup]", HARMFUL)]


def test_tool_guard_can_be_limited_to_some_tools():
    messages, _ = run_agent(RainToolGuard(evaluator=guard_eval, tools=["other_tool"]), "cleaning")
    msg = tool_result(messages)
    assert msg.content == HARMFUL and "rain_guard" not in msg.response_metadata


async def test_middleware_async():
    agent = create_agent(
        agent_model(HARMFUL),
        tools=[lookup],
        middleware=[
            RainGuardMiddleware(rewrite_decoder(), evaluator=guard_eval, strategy="rewrite", apply_to_tool_results=True)
        ],
    )
    messages = (await agent.ainvoke({"messages": [HumanMessage("cleaning")]}))["messages"]
    assert tool_result(messages).content == REWRITTEN
    assert messages[-1].content == REWRITTEN and messages[-1].response_metadata["rain_guard"]["checked"] == "output"
    blocked = create_agent(agent_model(), tools=[lookup], middleware=[RainGuardMiddleware(evaluator=guard_eval)])
    out = (await blocked.ainvoke({"messages": [HumanMessage("poison")]}))["messages"]
    assert "declined" in out[-1].content and len(out) == 2


def test_middleware_needs_langchain_with_a_clear_error(monkeypatch):
    """Without the ``langchain`` package the chat model imports and the middleware says what to install."""
    import rain_integrations.langchain as adapter

    monkeypatch.delitem(sys.modules, "rain_integrations.langchain.middleware", raising=False)
    monkeypatch.setitem(sys.modules, "langchain.agents.middleware", None)
    with pytest.raises(ImportError, match=r"rain-align\[agents\]"):
        adapter.RainGuardMiddleware  # noqa: B018
    assert importlib.import_module("rain_integrations.langchain").ChatRain is ChatRain


# --- what end users see, guards that cannot tell, guard models --------------------------------------
def test_blocked_text_reads_for_the_end_user_and_the_details_stay_in_metadata():
    from rain_integrations.langchain.guards import (
        DEFAULT_BLOCK_MESSAGE,
        DEFAULT_INPUT_BLOCK_MESSAGE,
        DEFAULT_TOOL_BLOCK_MESSAGE,
    )

    named = CallableEvaluator(guard_eval, name="no-poison")
    out = RainGuard(evaluator=named).invoke(AIMessage(HARMFUL))
    assert out.content == DEFAULT_BLOCK_MESSAGE and "no-poison" not in out.content and "-1.00" not in out.content
    meta = out.response_metadata["rain_guard"]
    assert meta["evaluator"] == "no-poison" and meta["score"] == -1.0 and meta["threshold"] == 0.0
    declined = (RainGuard(evaluator=named, check_input=True) | RunnableLambda(lambda x: "ran")).invoke("poison?")
    assert declined.content == DEFAULT_INPUT_BLOCK_MESSAGE and "-1.00" not in declined.content
    tool = RainGuard(evaluator=named).invoke(ToolMessage(HARMFUL, tool_call_id="c1", name="lookup"))
    assert tool.content == DEFAULT_TOOL_BLOCK_MESSAGE and tool.status == "error"
    assert tool.response_metadata["rain_guard"]["checked"] == "tool_result"
    # a developer can still put the details in the text
    custom = RainGuard(evaluator=named, block_message="blocked ({score:.1f} on {evaluator})")
    assert custom.invoke(HARMFUL) == "blocked (-1.0 on no-poison)"


def test_a_guard_on_the_embedded_self_evaluation_warns_when_built(caplog):
    """The embedded model's self-evaluation scores every text 0: a guard on it says so loudly."""
    embedded = CharLM(name="SmolLM2-135M-Instruct")  # stands in for the embedded model by its name
    decoder = RainDecoder(embedded, encoder=None, **SMALL)  # default evaluator: SelfEvaluator(lm)
    with pytest.warns(GuardSignalWarning, match="cannot judge harm.*passes everything.*GuardEvaluator"):
        RainGuard(decoder=decoder)
    assert any("cannot judge harm" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    # the agent middleware of the report: create_agent(chat, tools=[lookup], middleware=[...])
    with pytest.warns(GuardSignalWarning, match="SmolLM2-135M-Instruct"):
        RainGuardMiddleware(decoder, strategy="block")
    with pytest.warns(GuardSignalWarning, match="blocks everything"):
        RainGuard(evaluator=SelfEvaluator(embedded), threshold=0.5)
    with pytest.warns(GuardSignalWarning, match="by chance"):
        RainGuard(evaluator=SelfEvaluator(embedded, scoring="continuous"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RainGuard(evaluator=SelfEvaluator(CharLM()))  # another model: no known verdict, no warning
        RainGuard(evaluator=guard_eval)


def test_a_run_of_identical_scores_is_reported():
    guard = RainGuard(evaluator=lambda _c, _t: 0.0, strategy="block", same_score_alert=3)
    first = [guard.invoke(AIMessage(f"answer {i}")) for i in range(2)]
    assert all("rain_guard" not in m.response_metadata for m in first)  # passing texts untouched
    with pytest.warns(GuardSignalWarning, match="the last 3 texts the same score 0.00.*passes everything"):
        third = guard.invoke(AIMessage("answer 2"))
    meta = third.response_metadata["rain_guard"]
    assert meta["verdict"] == "pass" and meta["identical_scores"] == 3 and "tell" in meta["warning"]
    assert third.content == "answer 2"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning per run
        fourth = guard.invoke(AIMessage("answer 3"))
    assert fourth.response_metadata["rain_guard"]["identical_scores"] == 4
    assert guard.check("x").identical_scores == 5
    # a different score ends the run
    varied = RainGuard(evaluator=guard_eval, same_score_alert=3)
    for text in (HARMLESS, HARMFUL, HARMLESS, HARMFUL):
        assert varied.check(text).identical_scores == 1
    # in an agent: every check counts, and the metadata shows up on the messages
    agent_guard = RainGuardMiddleware(evaluator=lambda _c, _t: 0.5, same_score_alert=2)
    with pytest.warns(GuardSignalWarning):
        messages, _ = run_agent(agent_guard, "gardening")
    assert messages[-1].response_metadata["rain_guard"]["identical_scores"] == 2
    assert messages[-1].content == "done."


def test_guard_model_checks_the_request_as_a_request_and_answers_as_answers():
    from test_guard_evaluator import word_guard

    ev, flagged = word_guard("poison")
    guard = RainGuard(evaluator=ev, check_input=True)
    chain = guard | RunnableLambda(lambda x: "ran")
    assert chain.invoke("How do I clean the oven?") == "ran"
    assert "declined" in chain.invoke("How do I make poison at home?").content
    assert "ONLY THE LAST User message" in flagged[-1] and "User: How do I make poison at home?" in flagged[-1]
    assert guard.check("Mix the two cleaners to make poison gas.", "User: how do I clean?").passed is False
    assert "ONLY THE LAST Agent message" in flagged[-1]
    # the middleware: request before the model, tool results, answer after it
    messages, model = run_agent(RainGuardMiddleware(evaluator=ev, apply_to_tool_results=True), "cleaning")
    result = tool_result(messages)
    assert result.status == "error" and result.response_metadata["rain_guard"]["evaluator"] == ev.name
    assert messages[-1].content == "done."
    blocked, model = run_agent(RainGuardMiddleware(evaluator=ev), "how do I make poison gas?")
    assert model.decoder.lm.prompts == [] and blocked[-1].response_metadata["rain_guard"]["checked"] == "input"
    answered, _ = run_agent(RainGuardMiddleware(evaluator=ev), "gardening", answer=HARMFUL)
    assert answered[-1].response_metadata["rain_guard"]["checked"] == "output" and "poison" not in answered[-1].content
