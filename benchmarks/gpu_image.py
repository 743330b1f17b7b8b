"""The lent GPU machine's Python packages, and what rain must carry there (used by gpu_prep.sh and
gpu_rehearsal.sh).

    python benchmarks/gpu_image.py pins                       # name==version of every wheel to carry
    python benchmarks/gpu_image.py image-pins                 # the image's transformers stack, name==version
    python benchmarks/gpu_image.py view DIR                   # DIR: this venv's copy of the image's packages
    python benchmarks/gpu_image.py wheels-here SRC DST CACHE  # SRC's wheels, as builds for this Python

The GPU image (the device tool's kinds file lists it) has PyTorch, transformers and their stack, but
not pydantic, LangChain or LlamaIndex. ``pins`` walks the requirements of rain's own dependencies and
of the adapters' packages as installed in this venv (the set the test suite passes with), for
Python 3.12 on Linux, and prints each package the image lacks at the version installed here; a
requirement that the installed version does not meet stops it, so the pins always work together.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import shutil
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.tags import sys_tags
from packaging.utils import canonicalize_name, parse_wheel_filename

# The image's packages, by name (the device tool's kinds file, "Python packages already there").
IMAGE = frozenset(
    canonicalize_name(n)
    for n in """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio interface-meta iniconfig jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
zipp
""".split()
)
# The versions the image was seen with (the kinds file's pip list); the rehearsal installs these.
IMAGE_VERSIONS = {
    "transformers": "5.17.0",
    "huggingface-hub": "1.33.0",
    "tokenizers": "0.23.2",
    "safetensors": "0.8.0",
    "accelerate": "1.15.0",
}
# What the check imports beyond the image: rain's core dependency and the adapters' packages.
ROOTS = ("pydantic", "langchain-core", "llama-index-core")
# In the image, but carried anyway: pydantic-core needs a newer one than an image may hold.
CARRY_OVER_IMAGE = frozenset({"typing-extensions"})
# The GPU machine's interpreter, for requirement markers.
TARGET_ENV = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "extra": "",
}


def pins() -> list[str]:
    """``name==version`` for every package the check needs that the image lacks (plus
    ``CARRY_OVER_IMAGE``), each the version installed here, checked against every requirement on it."""
    found: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()  # (package, extra); "" for the package itself
    todo = [Requirement(r) for r in ROOTS]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in IMAGE and name not in CARRY_OVER_IMAGE:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            raise SystemExit(
                f"{name} is needed on the GPU machine but not installed here; pip install it first"
            ) from None
        if not req.specifier.contains(dist.version, prereleases=True):
            raise SystemExit(f"{name} {dist.version} is installed here, but {req} is required; fix the venv first")
        found[name] = dist.version
        for extra in {"", *req.extras} - {e for n, e in seen if n == name}:
            seen.add((name, extra))
            for line in dist.requires or []:
                sub = Requirement(line)
                if sub.marker is None or sub.marker.evaluate({**TARGET_ENV, "extra": extra}):
                    todo.append(sub)
    return [f"{n}=={v}" for n, v in sorted(found.items())]


def _top_level(dist: md.Distribution) -> set[str]:
    names = set()
    for f in dist.files or []:
        parts = Path(str(f)).parts
        if parts and parts[0] not in ("..", "__pycache__") and not parts[0].endswith(".pth"):
            names.add(parts[0])
    return names


def view(out: Path) -> None:
    """Links in ``out`` to the packages of this venv that the image also has, except those the rehearsal
    installs at the image's versions: with nothing else on the path, Python sees what the GPU machine
    sees (other versions of the same packages, and no pydantic, LangChain or embedded models)."""
    out.mkdir(parents=True, exist_ok=True)
    site = Path(md.distribution("pip").locate_file("")).resolve()
    for dist in md.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name not in IMAGE or name in IMAGE_VERSIONS:
            continue
        if Path(dist.locate_file("")).resolve() != site:
            continue
        for top in _top_level(dist):
            src, dst = site / top, out / top
            if src.exists() and not dst.exists():
                dst.symlink_to(src)


def wheels_here(src: Path, dst: Path, cache: Path) -> None:
    """``src``'s wheels into ``dst``, each as a build this Python can install: a wheel whose tags fit
    (pure Python, abi3) as it is; a compiled one for another Python as the same version's build for
    this one (downloaded once into ``cache``)."""
    here = set(sys_tags())
    dst.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    for wheel in sorted(src.glob("*.whl")):
        name, version, _, tags = parse_wheel_filename(wheel.name)
        if tags & here:
            shutil.copy2(wheel, dst / wheel.name)
            continue
        pattern = re.compile(rf"^{re.escape(name.replace('-', '_'))}-{re.escape(str(version))}-", re.IGNORECASE)
        cached = [w for w in cache.glob("*.whl") if pattern.match(w.name) and parse_wheel_filename(w.name)[3] & here]
        if not cached:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(cache)]
                + [f"{name}=={version}"],
                check=True,
            )
            cached = [
                w for w in cache.glob("*.whl") if pattern.match(w.name) and parse_wheel_filename(w.name)[3] & here
            ]
        if not cached:
            raise SystemExit(f"no build of {name} {version} for this Python")
        print(f"{wheel.name} -> {cached[0].name} (the same version, built for this Python)")
        shutil.copy2(cached[0], dst / cached[0].name)


def main(argv: list[str]) -> int:
    if argv[:1] == ["pins"]:
        print("\n".join(pins()))
    elif argv[:1] == ["image-pins"]:
        print("\n".join(f"{n}=={v}" for n, v in IMAGE_VERSIONS.items()))
    elif argv[:1] == ["view"] and len(argv) == 2:
        view(Path(argv[1]))
    elif argv[:1] == ["wheels-here"] and len(argv) == 4:
        wheels_here(Path(argv[1]), Path(argv[2]), Path(argv[3]))
    else:
        raise SystemExit(__doc__)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
