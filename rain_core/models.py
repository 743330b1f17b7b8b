"""Old import path (rain 0.1): now ``rain_core.engines.embedded``. Kept as a re-export for one release."""

from .engines.embedded import (  # noqa: F401
    DEFAULT_MODEL_NAME,
    MissingModelError,
    cache_dir,
    default_encoder_path,
    default_gguf_path,
    materialize_default_model,
)
