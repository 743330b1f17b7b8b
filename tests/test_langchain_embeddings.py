"""``RainEmbeddings``: LangChain's standard embeddings suites on the packaged all-MiniLM-L6-v2, its
options and errors, and an offline retriever chain (vector store, retriever, prompt, ``ChatRain`` on
the embedded model, parser)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_tests.integration_tests import EmbeddingsIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests
from pydantic import ValidationError

from rain_integrations.langchain import DEFAULT_EMBEDDINGS_MODEL, ChatRain, RainEmbeddings

TEXTS = [
    "Never mix bleach with ammonia or vinegar: the fumes are toxic.",
    "A sourdough starter needs flour, water and a few days at room temperature.",
    "Mount Everest is the highest mountain above sea level.",
]


class TestRainEmbeddingsStandardUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[RainEmbeddings]:
        return RainEmbeddings


@pytest.mark.model
class TestRainEmbeddingsStandardIntegration(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[RainEmbeddings]:
        return RainEmbeddings


def test_options_are_checked_when_built():
    with pytest.raises(ValidationError, match="batch_size"):
        RainEmbeddings(batch_size=0)
    with pytest.raises(ValidationError, match="model_nam"):
        RainEmbeddings(model_nam="x")  # extra="forbid": a misspelt option is an error
    with pytest.raises(ValidationError, match="model_name must name"):
        RainEmbeddings(model_name=" ")
    with pytest.raises(ValidationError, match="encode"):
        RainEmbeddings(encoder=object())
    with pytest.raises(ValidationError, match="the sentence-transformers folder '/no/such/encoder' does not exist"):
        RainEmbeddings(model_name="/no/such/encoder")


def test_a_hub_id_that_is_not_cached_says_so():
    embeddings = RainEmbeddings(model_name="rain-tests/no-such-encoder-3f9c")
    with pytest.raises(FileNotFoundError, match="neither a folder here nor a hub id in the local Hugging Face cache"):
        embeddings.embed_query("hello")


def test_the_encoder_loads_on_first_use(monkeypatch):
    import rain_core.loaders.encoders as encoder_module

    def refuse(device: str = "cpu") -> Any:
        raise RuntimeError(f"the encoder was loaded on {device}")

    monkeypatch.setattr(encoder_module, "load_default_encoder", refuse)
    embeddings = RainEmbeddings()  # nothing loads yet
    assert embeddings.embed_documents([]) == []  # nor for no texts
    with pytest.raises(RuntimeError, match="loaded on cpu"):
        embeddings.embed_query("hello")


def test_texts_must_be_strings():
    embeddings = RainEmbeddings()
    with pytest.raises(TypeError, match=r"texts\[1\] is a int"):
        embeddings.embed_documents(["a", 1])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="the query is a bytes"):
        embeddings.embed_query(b"a")  # type: ignore[arg-type]


@pytest.mark.model
def test_vectors_are_unit_length_batched_alike_and_meaningful():
    embeddings = RainEmbeddings()
    one_batch = embeddings.embed_documents(TEXTS)
    assert DEFAULT_EMBEDDINGS_MODEL == "all-MiniLM-L6-v2" and len(one_batch[0]) == 384
    assert all(abs(math.hypot(*v) - 1.0) < 1e-4 for v in one_batch)
    in_pairs = RainEmbeddings(batch_size=2).embed_documents(TEXTS)
    assert all(abs(a - b) < 1e-4 for u, v in zip(one_batch, in_pairs) for a, b in zip(u, v))
    query = embeddings.embed_query("Which cleaning products are dangerous together?")
    scores = [sum(a * b for a, b in zip(query, v)) for v in one_batch]
    assert scores.index(max(scores)) == 0


@pytest.mark.model
def test_a_folder_and_a_ready_encoder():
    from rain_core.engines.encoder import SentenceEncoder
    from rain_core.loaders.embedded import default_encoder_path

    folder = str(default_encoder_path())
    by_folder = RainEmbeddings(model_name=folder, max_length=64).embed_query(TEXTS[2])
    ready = RainEmbeddings(encoder=SentenceEncoder(folder, max_length=64)).embed_query(TEXTS[2])
    default = RainEmbeddings().embed_query(TEXTS[2])
    assert max(abs(a - b) for a, b in zip(by_folder, ready)) < 1e-5
    assert max(abs(a - b) for a, b in zip(by_folder, default)) < 1e-4  # the text is short: no truncation


@pytest.mark.model
def test_a_cached_hub_id_loads_offline(tmp_path, monkeypatch):
    import shutil

    import huggingface_hub.constants

    from rain_core.loaders.embedded import default_encoder_path

    snapshot = tmp_path / "models--rain-tests--minilm" / "snapshots" / "0123abcd"
    shutil.copytree(default_encoder_path(), snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    cached = RainEmbeddings(model_name="rain-tests/minilm").embed_query(TEXTS[1])
    default = RainEmbeddings().embed_query(TEXTS[1])
    assert max(abs(a - b) for a, b in zip(cached, default)) < 1e-4


class PromptRecorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.seen: list[str] = []

    def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
        self.seen.extend(str(m.content) for batch in messages for m in batch)


@pytest.mark.model
async def test_an_offline_retriever_chain_with_chat_rain():
    store = InMemoryVectorStore(RainEmbeddings())
    ids = store.add_texts(TEXTS)
    assert len(ids) == 3
    retriever = store.as_retriever(search_kwargs={"k": 1})
    question = "Is it safe to clean with bleach and ammonia together?"
    assert [d.page_content for d in retriever.invoke(question)] == [TEXTS[0]]

    chat = ChatRain.from_default(
        max_tokens=6,
        max_searches=2,
        extra_searches=1,
        min_visits=1,
        num_candidates=3,
        max_simulation_tokens=4,
        similarity_update=False,
        dynamic_node_addition=False,
    )
    prompt = ChatPromptTemplate.from_messages(
        [("system", "Answer from this context only:\n{context}"), ("human", "{question}")]
    )

    def join(docs: list[Any]) -> str:
        return "\n".join(d.page_content for d in docs)

    chain = {"context": retriever | join, "question": RunnablePassthrough()} | prompt | chat | StrOutputParser()
    recorder = PromptRecorder()
    answer = chain.invoke(question, config={"callbacks": [recorder]})
    assert isinstance(answer, str) and answer.strip()
    assert any(TEXTS[0] in text for text in recorder.seen)  # the retrieved text reached the model
    assert not any(TEXTS[2] in text for text in recorder.seen)
    pieces = [piece async for piece in chain.astream(question)]
    assert pieces and "".join(pieces).strip()
