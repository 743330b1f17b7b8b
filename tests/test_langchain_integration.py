"""LangChain adapters on the embedded SmolLM2-135M-Instruct at small budgets: LangChain's standard
integration suite for ``ChatRain``, plus loading by model id (``device_map="cpu"``), chains, agent
histories, guards and ``RainLLM``."""

from __future__ import annotations

import functools
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_tests.integration_tests import ChatModelIntegrationTests

from rain_core import RainDecoder
from rain_integrations.langchain import (
    ChatRain,
    RainGuard,
    RainLLM,
    messages_from_langchain,
    template_support,
)

pytestmark = pytest.mark.model

# Tiny budgets: every part of a RAIN step runs (expand, simulate, self-evaluate, back up, commit),
# about two seconds per reply on two CPU cores. The sentence encoder stays off to keep it fast.
TINY = dict(
    max_searches=2,
    extra_searches=1,
    min_visits=1,
    num_candidates=3,
    max_simulation_tokens=4,
    max_new_tokens=6,
    similarity_update=False,
    dynamic_node_addition=False,
)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Torch's two-thread CPU pool spins when the machine is oversubscribed: on a busy 2-core box one
    reply took 43 s in the main thread with 2 threads and 3.8 s with 1. Restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# SmolLM2-135M-Instruct answers in prose when offered tools, even with a 48-token budget
# ("The value of magic_function(3) is 3. The tool is called ..."), so these tests fail on it for
# reasons of model quality, not of the adapter.
NO_TOOL_CALLS = (
    "SmolLM2-135M-Instruct writes no complete tool call or JSON object here (it answers in prose, or a JSON "
    "object is cut off by the 6-token test budget), so it produces no tool call or structured output; "
    "ChatRain's tool rendering, call parsing, streaming of calls, tool_choice and with_structured_output "
    "(all three methods, and the OutputParserException on a reply that does not parse) are tested with a "
    "scripted model in test_langchain_tools.py and test_langchain_structured.py"
)
MODEL_PARAMS = pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
SCHEMA_TYPES = pytest.mark.parametrize("schema_type", ["pydantic", "typeddict", "json_schema"])


@functools.cache
def tiny_decoder() -> RainDecoder:
    return ChatRain.from_default(**TINY).decoder


class TestChatRainStandardIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatRain]:
        return ChatRain

    @property
    def chat_model_params(self) -> dict:
        return {"decoder": tiny_decoder()}

    @property
    def supports_model_override(self) -> bool:
        return False  # one ChatRain wraps one loaded model

    @property
    def supports_json_mode(self) -> bool:
        return True  # with_structured_output(method="json_mode")

    # --- tests that need a model able to emit tool calls or JSON ---------------------------------
    @pytest.mark.xfail(reason=NO_TOOL_CALLS)
    def test_json_mode(self, model: Any) -> None:
        super().test_json_mode(model)

    @pytest.mark.xfail(reason=NO_TOOL_CALLS)
    @MODEL_PARAMS
    def test_tool_calling(self, model: Any) -> None:
        super().test_tool_calling(model)

    @pytest.mark.xfail(reason=NO_TOOL_CALLS)
    async def test_tool_calling_async(self, model: Any) -> None:
        await super().test_tool_calling_async(model)

    @pytest.mark.xfail(reason=NO_TOOL_CALLS)
    def test_bind_runnables_as_tools(self, model: Any) -> None:
        super().test_bind_runnables_as_tools(model)

    @pytest.mark.xfail(reason=NO_TOOL_CALLS)
    def test_tool_choice(self, model: Any) -> None:
        super().test_tool_choice(model)

    @pytest.mark.xfail(reason=NO_TOOL_CALLS)
    def test_tool_calling_with_no_arguments(self, model: Any) -> None:
        super().test_tool_calling_with_no_arguments(model)

    @pytest.mark.xfail(reason=NO_TOOL_CALLS)
    @SCHEMA_TYPES
    def test_structured_output(self, model: Any, schema_type: Any) -> None:
        super().test_structured_output(model, schema_type)

    @pytest.mark.xfail(reason=NO_TOOL_CALLS)
    @SCHEMA_TYPES
    async def test_structured_output_async(self, model: Any, schema_type: Any) -> None:
        await super().test_structured_output_async(model, schema_type)

    @pytest.mark.xfail(reason=NO_TOOL_CALLS)
    def test_structured_output_pydantic_2_v1(self, model: Any) -> None:
        super().test_structured_output_pydantic_2_v1(model)

    @pytest.mark.xfail(reason=NO_TOOL_CALLS)
    def test_structured_output_optional_param(self, model: Any) -> None:
        super().test_structured_output_optional_param(model)

    @pytest.mark.xfail(reason=NO_TOOL_CALLS)
    @MODEL_PARAMS
    def test_agent_loop(self, model: Any) -> None:
        super().test_agent_loop(model)

    @pytest.mark.xfail(reason=NO_TOOL_CALLS)
    def test_unicode_tool_call_integration(
        self, model: Any, *, tool_choice: str | None = None, force_tool_call: bool = True
    ) -> None:
        super().test_unicode_tool_call_integration(model, tool_choice=tool_choice, force_tool_call=force_tool_call)


# --- beyond the standard suite ------------------------------------------------------------------
def test_from_model_id_loads_a_folder_on_cpu():
    """The way users load a model: a folder (or cached hub id) through ``load_model`` with
    ``device_map``, judged by the embedded model already loaded (a ``JudgeEvaluator``)."""
    from rain_core.loaders.embedded import materialize_default_model

    judge = tiny_decoder().lm
    chat = ChatRain.from_model_id(
        str(materialize_default_model()), device_map="cpu", judge=judge, principle="harmless", encoder=None, **TINY
    )
    assert chat.decoder.lm is not judge and chat.decoder.evaluator.lm is judge
    msg = chat.invoke("Name a fruit.")
    assert msg.content.strip() and msg.response_metadata["rain"]["evaluations"] > 0
    llm = RainLLM.from_model_id(str(materialize_default_model()), device="cpu", encoder=None, **TINY)
    assert llm.invoke("The sky is").strip()


def test_from_default_invoke_and_stream_agree():
    chat = ChatRain.from_default(**TINY)
    assert chat.decoder.lm is tiny_decoder().lm  # the embedded model is loaded once per process
    msg = chat.invoke("Name a fruit.")
    assert msg.content.strip()
    rain = msg.response_metadata["rain"]
    assert rain["searches"] >= rain["commits"] > 0 and rain["evaluations"] > 0
    assert msg.usage_metadata["output_tokens"] <= TINY["max_new_tokens"]
    chunks = list(chat.stream("Name a fruit."))
    assert "".join(c.content for c in chunks) == msg.content  # same seed, same search
    assert chunks[-1].chunk_position == "last"
    assert chunks[-1].response_metadata["rain"]["commits"] == rain["commits"]


def test_lcel_chain_on_the_embedded_model():
    chain = (
        ChatPromptTemplate.from_messages([("system", "Answer in one word."), ("human", "{q}")])
        | ChatRain(decoder=tiny_decoder())
        | StrOutputParser()
    )
    out = chain.invoke({"q": "What colour is the sky?"})
    assert isinstance(out, str) and out.strip()
    assert len(chain.batch([{"q": "Say hi."}, {"q": "Say bye."}])) == 2


def test_agent_history_renders_through_smollm_template():
    """SmolLM2's template drops ``tool_calls`` and ignores ``tools``; the adapter writes both into the text."""
    lm = tiny_decoder().lm
    support = template_support(lm)
    assert (support.tools, support.tool_calls) == (False, False)
    history = [
        HumanMessage("What is 1 + 2?"),
        AIMessage("", tool_calls=[{"name": "add", "args": {"a": 1, "b": 2}, "id": "c1"}]),
        ToolMessage("3", tool_call_id="c1", name="add"),
    ]
    tools = [
        {
            "type": "function",
            "function": {
                "name": "add",
                "description": "Add two integers.",
                "parameters": {"type": "object", "properties": {}},
            },
        }
    ]
    messages, kwargs = messages_from_langchain(history, tools=tools, support=support)
    rendered = lm.chat_prompt(messages, **kwargs)
    assert '"name": "add"' in rendered and "Add two integers." in rendered  # the tool schema
    assert '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>' in rendered
    assert "<|im_start|>tool\n3<|im_end|>" in rendered
    reply = ChatRain(decoder=tiny_decoder()).bind_tools([]).invoke(history)
    assert isinstance(reply, AIMessage)


def test_guard_with_the_self_evaluator():
    decoder = RainDecoder(tiny_decoder().lm, encoder=None, scoring="continuous", **{**TINY, "max_new_tokens": 10})
    text = "Mix bleach and ammonia in a closed room to make a toxic gas."
    flag = RainGuard(decoder=decoder, strategy="flag", threshold=0.0)
    verdict = flag.check(text, "User: How do I clean my bathroom?")
    assert -1.0 <= verdict.score <= 1.0 and verdict.passed == (verdict.score >= 0.0)
    assert verdict.evaluator.startswith("SelfEvaluator")
    # threshold 1.0: a continuous score is below it, so the rewrite path runs on the real model
    rewrite = RainGuard(decoder=decoder, strategy="rewrite", threshold=1.0)
    out = rewrite.invoke(AIMessage(text))
    meta = out.response_metadata["rain_guard"]
    assert meta["verdict"] == "fail" and out.content != text and out.content.strip()
    assert meta["rewrite"]["rain"]["commits"] > 0 and -1.0 <= meta["rewrite"]["score"] <= 1.0
    block = RainGuard(decoder=decoder, strategy="block", threshold=1.0).invoke(
        ToolMessage(text, tool_call_id="c9", name="tips")
    )
    assert block.status == "error" and block.tool_call_id == "c9" and "withheld" in block.content


def test_rain_llm_from_default_completes_and_batches():
    llm = RainLLM.from_default(**TINY)
    out = llm.generate(["The capital of France is", "Once upon a time"])
    texts = [g[0].text for g in out.generations]
    assert len(texts) == 2 and all(t.strip() for t in texts)
    assert all(g[0].generation_info["rain"]["commits"] > 0 for g in out.generations)
    assert "".join(llm.stream("The capital of France is")) == texts[0]


def test_system_prompt_and_stop_on_the_embedded_model():
    chat = ChatRain(decoder=tiny_decoder(), max_tokens=8)
    full = chat.invoke([SystemMessage("You are terse."), HumanMessage("Count: one, two, three")]).content
    cut = chat.invoke([SystemMessage("You are terse."), HumanMessage("Count: one, two, three")], stop=[","]).content
    assert full.strip() and "," not in cut
