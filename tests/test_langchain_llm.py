"""``RainLLM``, the text-completion model: the prompt is sent as it is (no chat template), every prompt
of a batch is decoded with its token sets streamed to the callbacks, and stop strings, ``max_tokens``,
async calls and the trace work as for ``ChatRain``."""

from __future__ import annotations

import pytest
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import PromptTemplate
from langchain_fakes import TokenRecorder, completion_llm

from rain_integrations.langchain import RainLLM

PROMPTS = ["Q: red\nA:", "Q: blue\nA:", "Q: green\nA:"]
ANSWERS = [" red done.", " blue done.", " green done."]


@pytest.fixture
def llm() -> RainLLM:
    return completion_llm()


def test_generate_decodes_every_prompt_and_streams_each_to_the_callbacks(llm):
    rec = TokenRecorder()
    result = llm.generate(PROMPTS, callbacks=[rec])
    assert [g[0].text for g in result.generations] == ANSWERS
    assert "".join(rec.tokens) == "".join(ANSWERS)
    assert len(rec.tokens) > 6  # streamed per committed token set
    info = result.generations[0][0].generation_info
    assert info["finish_reason"] == "eos" and info["rain"]["commits"] > 0
    assert result.llm_output["token_usage"]["completion_tokens"] == sum(len(t) + 1 for t in ANSWERS)
    assert llm.batch(PROMPTS) == ANSWERS


def test_stop_strings_and_max_tokens_cut_the_completion():
    llm = completion_llm(stop=["done"])
    assert llm.invoke("Q: red\nA:") == " red "
    pieces = list(llm.stream("Q: blue\nA:"))
    assert "".join(pieces) == " blue " and len(pieces) > 1
    assert llm.invoke("Q: red\nA:", stop=["d d"]) == " re"
    assert completion_llm().invoke("Q: red\nA:", max_tokens=3) == " re"


async def test_async_calls_give_the_sync_answers(llm):
    assert await llm.ainvoke("Q: red\nA:") == " red done."
    assert "".join([p async for p in llm.astream("Q: red\nA:")]) == " red done."
    rec = TokenRecorder()
    out = await llm.agenerate(["Q: red\nA:", "Q: tan\nA:"], callbacks=[rec])
    assert "".join(rec.tokens) == " red done. tan done."
    assert [g[0].text for g in out.generations] == [" red done.", " tan done."]
    assert len(rec.commits) == sum(g[0].generation_info["rain"]["commits"] for g in out.generations)


def test_in_a_chain_no_chat_template_is_rendered():
    llm = completion_llm(return_trace=True)
    chain = PromptTemplate.from_template("Q: {colour}\nA:") | llm | StrOutputParser()
    assert chain.invoke({"colour": "teal"}) == " teal done."
    assert llm.decoder.lm.prompts == []  # raw completion: the chat template was never used
    info = llm.generate(["Q: teal\nA:"]).generations[0][0].generation_info
    assert info["rain_trace"]["text"] == " teal done." and info["usage"]["completion_tokens"] > 0
