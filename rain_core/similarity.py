"""Old import path (rain 0.1): now ``rain_core.engines.encoder`` (and ``rain_core.protocols.Encoder``).
Kept as a re-export for one release."""

from .engines.encoder import SentenceEncoder, load_default_encoder  # noqa: F401
from .protocols import Encoder  # noqa: F401
