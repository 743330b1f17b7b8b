"""What ``ChatRain`` and ``RainLLM`` share: their fields, how a call's options become ``RainDecoder``
keyword arguments, the constructors (``from_model_id``, ``from_engine``, ``from_default``), and the
``rain_commit`` callback event sent once per committed token set."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rain_core import LanguageModel, RainConfig, RainDecoder, RainResult
from rain_core.decoder import Cancel

from .._common import (
    build_decoder,
    check_fields,
    join_cancels,
    rain_temperature,
    split_fields,
    stats_of,
)

__all__ = ["RAIN_COMMIT_EVENT", "RainCall", "RainParams", "acommit_dispatch", "commit_dispatcher"]

RAIN_COMMIT_EVENT = "rain_commit"
"""Name of the LangChain custom callback event sent once per committed token set; its data is the
commit's statistics (``index``, ``tokens``, ``text``, ``searches``, ``visits``, ``real_visits``,
``value``, ``early_stop``, ``seconds``, ...). ``astream_events`` shows it as ``on_custom_event``."""

P = TypeVar("P", bound="RainParams")


@dataclass
class RainCall:
    """One call's options: ``RainDecoder`` keyword arguments and what the adapter itself does."""

    options: dict[str, Any]
    """``RainConfig`` overrides, ``config`` and ``keep_trees`` for ``RainDecoder.stream``."""
    cancel: Cancel = None
    """The caller's own stop signal (``cancel=`` of the call)."""
    return_trace: bool = False

    def decode_kwargs(self, cancel: threading.Event | None = None) -> dict[str, Any]:
        return {**self.options, "cancel": join_cancels(cancel, self.cancel)}


def commit_dispatcher(run_manager: CallbackManagerForLLMRun | None) -> Callable[[dict[str, Any]], None] | None:
    """A function that sends ``rain_commit`` to the run's handlers (None without handlers)."""
    if run_manager is None or not run_manager.handlers:
        return None
    manager = CallbackManager(
        handlers=run_manager.handlers,
        parent_run_id=run_manager.parent_run_id,
        tags=run_manager.tags,
        metadata=run_manager.metadata,
    )
    return lambda data: manager.on_custom_event(RAIN_COMMIT_EVENT, data, run_id=run_manager.run_id)


async def acommit_dispatch(run_manager: AsyncCallbackManagerForLLMRun | None, data: dict[str, Any]) -> None:
    if run_manager is None or not run_manager.handlers:
        return
    manager = AsyncCallbackManager(
        handlers=run_manager.handlers,
        parent_run_id=run_manager.parent_run_id,
        tags=run_manager.tags,
        metadata=run_manager.metadata,
    )
    await manager.on_custom_event(RAIN_COMMIT_EVENT, data, run_id=run_manager.run_id)


def _standard(fields: dict[str, Any]) -> dict[str, Any]:
    """The standard LangChain options among ``fields`` as ``RainConfig`` overrides (unset ones left out)."""
    standard = {
        "max_new_tokens": fields.get("max_tokens"),
        "temperature": rain_temperature(fields.get("temperature")),
        "stop": fields.get("stop"),
        "max_seconds": fields.get("timeout"),
    }
    return {k: v for k, v in standard.items() if v is not None}


class RainParams(BaseModel):
    """Fields and option handling shared by ``ChatRain`` and ``RainLLM``."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, protected_namespaces=())

    decoder: RainDecoder
    """The ``RainDecoder`` that decodes every call (its model, evaluator and base ``RainConfig``)."""
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

    # --- constructors ---------------------------------------------------------------------------
    @classmethod
    def _from_parts(
        cls: type[P], model: str | LanguageModel | None, build: dict[str, Any], kwargs: dict[str, Any]
    ) -> P:
        """Check every option, then load (``model=None``: the embedded model) and build."""
        own, rain = split_fields(cls, cls.model_fields, kwargs)
        cls.check_options(own, rain, config=build.get("config"))
        return cls(decoder=build_decoder(model, **build, **rain), **own)

    @classmethod
    def check_options(
        cls, fields: dict[str, Any], rain_fields: dict[str, Any] | None = None, *, config: RainConfig | None = None
    ) -> None:
        """This class's ``fields`` and the decoder's ``RainConfig`` (``config`` with ``rain_fields``)
        checked together without loading a model: field types and bounds, ``rain_options``, and what
        the standard options (``max_tokens``, ``temperature``, ``stop``, ``timeout``) become in RAIN.
        Raises what building the object would (``ValidationError``, ``TypeError``)."""
        if "decoder" in fields:
            raise TypeError(f"the constructors build the decoder; pass a ready one as {cls.__name__}(decoder=...)")
        check_fields(cls, fields)
        base = config if config is not None else RainConfig()
        if not isinstance(base, RainConfig):
            raise TypeError(f"config must be a RainConfig, got {type(base).__name__}")
        per_call = {**fields.get("rain_options", {}), **_standard(fields)}
        base.merged(**(rain_fields or {})).merged(**per_call)

    @classmethod
    def from_model_id(
        cls: type[P],
        model_id: str,
        *,
        judge: str | LanguageModel | None = None,
        evaluator: Any = None,
        principle: Any = "harmless",
        encoder: Any = "default",
        config: RainConfig | None = None,
        device: str | None = None,
        device_map: Any = None,
        dtype: Any = None,
        quantization_config: Any = None,
        model_kwargs: dict[str, Any] | None = None,
        judge_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> P:
        """Load ``model_id`` (a local folder or a hub id in the local cache) the way users do and
        decode with RAIN on it.

        ``device`` ("cpu", "cuda:1") or ``device_map`` ("auto": across GPUs), ``dtype``,
        ``quantization_config`` (e.g. ``BitsAndBytesConfig(load_in_4bit=True)``) and ``model_kwargs``
        pass through to ``from_pretrained``; a dispatched or quantised model is never moved.
        ``judge``: a model id/folder or ``LanguageModel`` that judges replies against ``principle``;
        ``evaluator``: any ``Evaluator`` or ``fn(prompt, response) -> float`` instead; neither: the
        model judges itself. ``kwargs``: fields of this class (``max_tokens``, ``timeout``, ...) or
        ``RainConfig`` fields (``max_searches``, ``seed``, ...). Every option is checked before any
        weights load: a misspelt or out-of-range one fails at once."""
        build = dict(
            judge=judge,
            evaluator=evaluator,
            principle=principle,
            encoder=encoder,
            config=config,
            device=device,
            device_map=device_map,
            dtype=dtype,
            quantization_config=quantization_config,
            model_kwargs=model_kwargs,
            judge_kwargs=judge_kwargs,
        )
        return cls._from_parts(model_id, build, kwargs)

    @classmethod
    def from_engine(
        cls: type[P],
        lm: LanguageModel,
        *,
        judge: str | LanguageModel | None = None,
        evaluator: Any = None,
        principle: Any = "harmless",
        encoder: Any = "default",
        config: RainConfig | None = None,
        **kwargs: Any,
    ) -> P:
        """RAIN on a ready ``LanguageModel``: a loaded ``TransformersLM``, a served model (a remote
        engine), or your own implementation of the protocol. Other arguments as in ``from_model_id``."""
        build = dict(judge=judge, evaluator=evaluator, principle=principle, encoder=encoder, config=config)
        return cls._from_parts(lm, build, kwargs)

    @classmethod
    def from_default(
        cls: type[P],
        *,
        judge: str | LanguageModel | None = None,
        evaluator: Any = None,
        principle: Any = "harmless",
        encoder: Any = "default",
        config: RainConfig | None = None,
        **kwargs: Any,
    ) -> P:
        """RAIN on the embedded SmolLM2-135M-Instruct (offline; loaded once per process and shared
        with the other adapters). Arguments as in ``from_engine``; they are checked before the model
        loads."""
        build = dict(judge=judge, evaluator=evaluator, principle=principle, encoder=encoder, config=config)
        return cls._from_parts(None, build, kwargs)

    # --- options ---------------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        """The decoder's model name, reported in metadata and traces."""
        return self.decoder.model_name

    def _call(self, stop: list[str] | None, kwargs: dict[str, Any]) -> RainCall:
        """A call's options: the decoder's config, then this object's fields, then the call's
        keyword arguments (standard LangChain names first mapped to RAIN's). Checked now, so a stream
        fails at the call rather than at its first chunk."""
        kwargs = dict(kwargs)
        model = kwargs.pop("model", None)
        if model is not None and model != self.model_name:
            raise ValueError(
                f"this {type(self).__name__} decodes with {self.model_name!r}; build another one "
                f"over a RainDecoder for {model!r} instead of passing model=..."
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
