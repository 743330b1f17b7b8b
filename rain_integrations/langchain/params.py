"""What ``ChatRain`` and ``RainLLM`` share: their fields, their constructors, how a call's options
become ``RainDecoder`` keyword arguments, and where each commit's statistics go (the ``rain_commit``
callback event, or the chunks of a stream)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.outputs import ChatGenerationChunk, GenerationChunk
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rain_core import Decoder, LanguageModel, RainConfig, RainResult
from rain_core.decoder import Cancel

from .._build import RainConstructors
from .._decoding import rain_temperature, stats_of
from ..options import DecoderOptions, LoadOptions, constructor

__all__ = ["RAIN_COMMIT_EVENT", "Commits", "RainCall", "RainParams"]

RAIN_COMMIT_EVENT = "rain_commit"
"""Name of the LangChain custom callback event sent once per committed token set; its data is the
commit's statistics (``index``, ``tokens``, ``text``, ``searches``, ``visits``, ``real_visits``,
``value``, ``early_stop``, ``seconds``, ...). ``astream_events`` shows it as ``on_custom_event``."""

P = TypeVar("P", bound="RainParams")
C = TypeVar("C", ChatGenerationChunk, GenerationChunk)


@dataclass
class RainCall:
    """One call's options: ``RainDecoder`` keyword arguments and what the adapter itself does."""

    options: dict[str, Any]
    """``RainConfig`` overrides, ``config`` and ``keep_trees`` for ``RainDecoder.stream``."""
    cancel: Cancel = None
    """The caller's own stop signal (``cancel=`` of the call)."""
    return_trace: bool = False

    def decode_kwargs(self) -> dict[str, Any]:
        return {**self.options, "cancel": self.cancel}


@dataclass
class Commits:
    """Where a call's commits go. With a run manager: its handlers, as ``rain_commit`` custom events
    (none without handlers). Without one (``stream``/``astream``, where LangChain reports the tokens
    itself and passes none): on the next chunk, as ``response_metadata["rain_commits"]`` (merged
    chunks list every commit in order)."""

    run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None
    held: list[dict[str, Any]] = field(default_factory=list)

    def _manager(self, kind: type[Any]) -> Any:
        run = self.run_manager
        assert run is not None
        return kind(handlers=run.handlers, parent_run_id=run.parent_run_id, tags=run.tags, metadata=run.metadata)

    def send(self, data: dict[str, Any]) -> None:
        if self.run_manager is None:
            self.held.append(data)
        elif self.run_manager.handlers:
            manager = self._manager(CallbackManager)
            manager.on_custom_event(RAIN_COMMIT_EVENT, data, run_id=self.run_manager.run_id)

    async def asend(self, data: dict[str, Any]) -> None:
        if self.run_manager is None:
            self.held.append(data)
        elif self.run_manager.handlers:
            manager = self._manager(AsyncCallbackManager)
            await manager.on_custom_event(RAIN_COMMIT_EVENT, data, run_id=self.run_manager.run_id)

    def on(self, chunk: C) -> C:
        """``chunk`` with the commits held since the last one."""
        if self.held and isinstance(chunk, ChatGenerationChunk):
            meta = chunk.message.response_metadata
            chunk.message.response_metadata = {**meta, "rain_commits": list(self.held)}
            self.held.clear()
        return chunk


def _standard(fields: dict[str, Any]) -> dict[str, Any]:
    """The standard LangChain options among ``fields`` as ``RainConfig`` overrides (unset ones left out)."""
    standard = {
        "max_new_tokens": fields.get("max_tokens"),
        "temperature": rain_temperature(fields.get("temperature")),
        "stop": fields.get("stop"),
        "max_seconds": fields.get("timeout"),
    }
    return {k: v for k, v in standard.items() if v is not None}


class RainParams(RainConstructors, BaseModel):
    """Fields and option handling shared by ``ChatRain`` and ``RainLLM``."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, protected_namespaces=())

    decoder: Decoder
    """The decoder of every call (its model, evaluator and base ``RainConfig``): a ``RainDecoder``, or any
    ``Decoder`` such as a baseline of ``rain_core.baselines`` (``BestOfNDecoder``, ...)."""
    max_tokens: int | None = Field(None, ge=1)
    """Most new tokens per call (RAIN's ``max_new_tokens``); ``None`` keeps the decoder's."""
    temperature: float | None = Field(None, ge=0.0, le=100.0)
    """Sampling temperature; 0 becomes ``MIN_TEMPERATURE`` (RAIN must sample); ``None`` keeps the decoder's."""
    stop: list[str] | None = None
    """Stop strings of any length; the reply ends before the first one. A call's ``stop`` replaces these."""
    timeout: float | None = Field(None, gt=0.0)
    """Seconds a call may decode (RAIN's ``max_seconds``): then the reply ends with what is
    committed and ``finish_reason == "time"``, never an exception. A call's ``timeout`` replaces it."""
    return_trace: bool = False
    """Put the decode's trace (``RainResult.trace``, docs/integrations.md) in ``response_metadata["rain_trace"]``
    (``generation_info["rain_trace"]`` for ``RainLLM``)."""
    keep_trees: bool = False
    """Keep each commit's search tree in the trace (large; for plots and debugging)."""
    rain_options: dict[str, Any] = Field(default_factory=dict)
    """Further ``RainConfig`` overrides for every call, e.g. ``{"max_searches": 10}``."""

    @model_validator(mode="after")
    def _check_options(self) -> Any:
        self.decoder.resolve_config(**self.rain_options)  # unknown or invalid options fail here
        return self

    # --- constructors: one body (RainConstructors), signatures and docs from rain_integrations.options
    @classmethod
    def check_config(cls, fields: dict[str, Any], config: RainConfig) -> None:
        """``rain_options`` and what the standard options (``max_tokens``, ``temperature``, ``stop``,
        ``timeout``) become in RAIN, over the decoder's ``config``."""
        config.merged(**{**fields.get("rain_options", {}), **_standard(fields)})

    @classmethod
    @constructor(LoadOptions)
    def from_model_id(cls: type[P], model_id: str, **kwargs: Any) -> P:
        """Load ``model_id`` (a local folder or a hub id in the local cache) the way users do and
        decode with RAIN on it: ``ChatRain.from_model_id("Qwen/Qwen2.5-7B-Instruct", device_map="auto",
        guard="meta-llama/Llama-Guard-3-1B", max_searches=10)``.

        ``kwargs``: the options below (``rain_integrations.options.LoadOptions``), fields of this class
        (``max_tokens``, ``timeout``, ...) and ``RainConfig`` fields (``max_searches``, ``seed``, ...).
        A misspelt or out-of-range one fails before any weights load."""
        return cls._from_options(model_id, kwargs, LoadOptions)

    @classmethod
    @constructor(DecoderOptions)
    def from_engine(cls: type[P], lm: LanguageModel, **kwargs: Any) -> P:
        """RAIN on a ready ``LanguageModel``: a loaded ``TransformersLM``, a served model (a
        ``VLLMEngine``), or your own implementation of the protocol. ``kwargs``: the options below
        (``rain_integrations.options.DecoderOptions``), fields of this class and ``RainConfig`` fields."""
        return cls._from_options(lm, kwargs, DecoderOptions)

    @classmethod
    @constructor(DecoderOptions)
    def from_default(cls: type[P], **kwargs: Any) -> P:
        """RAIN on the embedded SmolLM2-135M-Instruct (offline; loaded once per process and shared
        with the other adapters). ``kwargs`` as in ``from_engine``, checked before the model loads."""
        return cls._from_options(None, kwargs, DecoderOptions)

    # --- options ---------------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        """The decoder's model name, reported in metadata and traces."""
        return self.decoder.model_name

    def call_options(self, stop: list[str] | None = None, **kwargs: Any) -> RainCall:
        """The options a call decodes with: the decoder's config, then this object's fields, then the
        call's keyword arguments (standard LangChain names first mapped to RAIN's: ``max_tokens``,
        ``temperature``, ``timeout``, ``stop``). Checked now, so a stream fails at the call rather
        than at its first chunk."""
        model = kwargs.pop("model", None)
        if model is not None and model != self.model_name:
            raise ValueError(
                f"this {type(self).__name__} decodes with {self.model_name!r}; build another one "
                f"over a decoder of {model!r} instead of passing model=..."
            )
        kwargs.pop("stream", None)
        cancel = kwargs.pop("cancel", None)
        return_trace = bool(kwargs.pop("return_trace", self.return_trace))
        keep_trees = bool(kwargs.pop("keep_trees", self.keep_trees))
        config = kwargs.pop("rain_config", None)
        options: dict[str, Any] = dict(self.rain_options)
        standard = {"max_tokens": self.max_tokens, "temperature": self.temperature, "stop": self.stop}
        options.update(_standard({**standard, "timeout": self.timeout}))
        if "max_tokens" in kwargs:
            kwargs["max_new_tokens"] = kwargs.pop("max_tokens")
        if "timeout" in kwargs:
            kwargs["max_seconds"] = kwargs.pop("timeout")
        if "temperature" in kwargs:
            kwargs["temperature"] = rain_temperature(kwargs["temperature"])
        options.update({k: v for k, v in kwargs.items() if v is not None})
        if stop is not None:
            options["stop"] = list(stop)
        self.decoder.resolve_config(config, **options)
        if config is not None:
            options["config"] = config
        if keep_trees:
            options["keep_trees"] = True
        return RainCall(options=options, cancel=cancel, return_trace=return_trace)

    def _info(self, result: RainResult, call: RainCall) -> dict[str, Any]:
        """``finish_reason``, the search statistics (``rain``) and, when asked, the trace."""
        info: dict[str, Any] = {"finish_reason": result.finish_reason, "rain": stats_of(result)}
        if call.return_trace:
            info["rain_trace"] = result.trace
        return info

    def _ls_common(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        cfg = self.decoder.config
        temperature = kwargs.get("temperature", self.temperature)
        params: dict[str, Any] = {
            "ls_provider": "rain",
            "ls_model_name": kwargs.get("model") or self.model_name,
            "ls_temperature": float(temperature if temperature is not None else cfg.temperature),
            "ls_max_tokens": int(kwargs.get("max_tokens") or self.max_tokens or cfg.max_new_tokens),
        }
        stops = stop if stop is not None else self.stop
        if stops:
            params["ls_stop"] = list(stops)
        return params

    def _identifying(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "stop": self.stop,
            "timeout": self.timeout,
            "rain_config": self.decoder.resolve_config(**self.rain_options).model_dump(mode="json"),
        }
