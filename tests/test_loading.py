"""load_model: every option checked before any weights load, an error a user can act on for each way
a model can be missing or wrong, and the dtype and placement defaults per device. Offline: tiny
random models and a word-level tokenizer are written into temporary folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from tiny_models import save_tiny_llama

from rain_core.engines.transformers import loading
from rain_core.loaders import ModelNotFoundError, UnsupportedModelError, load_model


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def no_weights(monkeypatch):
    """Loading weights or a tokenizer fails the test: errors must come before either."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def refuse(*args, **kwargs):
        raise AssertionError("weights or tokenizer loaded before the options were checked")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", refuse)


@pytest.fixture
def fake_gpu(monkeypatch, tiny_folder):
    """A machine that says it has one CUDA GPU with bfloat16; ``from_pretrained`` records its options and
    returns the tiny model on the CPU (the engine reads the device from the weights)."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    calls: list[dict] = []
    real = LlamaForCausalLM.from_pretrained

    def record(where, **kwargs):
        calls.append(kwargs)
        return real(where, dtype=torch.float32)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(loading, "_bf16_on_cuda", lambda: True)
    monkeypatch.setattr(loading, "dtype_runs_on", lambda dtype, device: True)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", record)
    return calls


# --- where the model is -----------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/nonexistent", "./no-such-model", "models/a/b"])
def test_a_missing_local_path_says_the_folder_does_not_exist(path, no_weights):
    with pytest.raises(ModelNotFoundError, match="does not exist") as info:
        load_model(path, device="cpu")
    assert "Repo id" not in str(info.value)
    assert isinstance(info.value, FileNotFoundError)


def test_a_hub_id_not_in_the_cache_says_so_and_how_to_get_it_there(tmp_path, no_weights):
    with pytest.raises(ModelNotFoundError) as info:
        load_model("someorg/not-here", device="cpu", cache_dir=str(tmp_path))
    message = str(info.value)
    assert "not in the local Hugging Face cache" in message
    assert "hf download someorg/not-here" in message
    assert "copy the model's folder here and pass its path" in message


def test_a_hub_id_in_the_cache_loads_offline(tmp_path, tiny_folder):
    snapshot = tmp_path / "models--someorg--tiny" / "snapshots" / "0123abcd"
    shutil.copytree(tiny_folder, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    lm = load_model("someorg/tiny", device="cpu", cache_dir=str(tmp_path))
    assert lm.name == "someorg/tiny"
    assert lm.top_tokens(lm.encode("hello world"), 2)


def test_a_gguf_file_without_gguf_file_names_the_option(tmp_path, no_weights):
    path = tmp_path / "model.Q4_0.gguf"
    path.write_bytes(b"GGUF")
    with pytest.raises(UnsupportedModelError, match="GGUF file") as info:
        load_model(str(path), device="cpu")
    assert f"load_model({str(tmp_path)!r}, gguf_file='model.Q4_0.gguf')" in str(info.value)
    with pytest.raises(UnsupportedModelError, match="gguf_file='model.Q4_0.gguf'"):
        load_model(str(tmp_path), device="cpu")  # a folder of GGUF weights and no config.json
    with pytest.raises(ModelNotFoundError, match="holds no 'other.gguf'; GGUF files there: model.Q4_0.gguf"):
        load_model(str(tmp_path), device="cpu", gguf_file="other.gguf")


def test_a_folder_without_config_says_it_is_not_a_model_folder(tmp_path, no_weights):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(UnsupportedModelError, match="holds no config.json"):
        load_model(str(tmp_path), device="cpu")
    with pytest.raises(UnsupportedModelError, match="is a file; pass the model's folder"):
        load_model(str(tmp_path / "notes.txt"), device="cpu")


def test_an_encoder_is_not_a_causal_language_model(tmp_path, no_weights):
    from transformers import BertConfig, BertModel, T5Config

    BertModel(BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)).save_pretrained(
        str(tmp_path / "bert")
    )
    with pytest.raises(UnsupportedModelError, match="BertModel .* not a causal language model"):
        load_model(str(tmp_path / "bert"), device="cpu")
    T5Config(d_model=16, num_layers=1, num_heads=2).save_pretrained(str(tmp_path / "t5"))  # config.json alone
    with pytest.raises(UnsupportedModelError, match="'t5' model, which is not a causal"):
        load_model(str(tmp_path / "t5"), device="cpu")


# --- options ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"dtype": "float33"}, ValueError, "unknown dtype 'float33'"),
        ({"dtype": "int8"}, ValueError, "unknown dtype 'int8'"),
        ({"device": "cpu", "device_map": "auto"}, ValueError, "either device .* or device_map"),
        ({"device": "gpu"}, ValueError, "unknown device 'gpu'"),
        ({"device_map": 3.5}, ValueError, "device_map must be"),
        ({"device_map": {}}, ValueError, "empty dict"),
        ({"cache_bytes": -1}, ValueError, "cache_bytes must be"),
        ({"batch": "yes"}, ValueError, "batch must be True or False"),
        ({"tokenizer": "/some/folder"}, ValueError, "ready tokenizer object"),
        ({"gguf_file": ""}, ValueError, "gguf_file must be"),
    ],
)
def test_bad_options_fail_before_any_weights_load(options, error, message, tiny_folder, no_weights):
    options = {"device": "cpu", **options} if "device_map" not in options else options
    with pytest.raises(error, match=message):
        load_model(str(tiny_folder), **options)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_a_gpu_on_a_machine_without_one_fails_before_any_weights_load(tiny_folder, no_weights):
    with pytest.raises(ValueError, match="sees no CUDA device here; use device='cpu'"):
        load_model(str(tiny_folder), device="cuda")
    with pytest.raises(ValueError, match="sees no CUDA device"):
        load_model(str(tiny_folder), device_map="cuda:0")


def test_a_dtype_the_device_cannot_run_names_the_fix(tiny_folder, no_weights, monkeypatch):
    monkeypatch.setattr(loading, "dtype_runs_on", lambda dtype, device: dtype == torch.float32)
    with pytest.raises(ValueError, match="cpu cannot run float16 here; pass dtype='float32'"):
        load_model(str(tiny_folder), device="cpu", dtype="float16")


def test_the_dtype_probe_runs_the_arithmetic():
    assert loading.dtype_runs_on(torch.float32, "cpu")
    assert loading.dtype_runs_on(torch.bfloat16, "cpu")  # PyTorch's CPU kernels run bfloat16


def test_device_map_auto_without_dtype_loads_bfloat16_when_a_gpu_is_there(tiny_folder, fake_gpu):
    load_model(str(tiny_folder), device_map="auto")
    assert fake_gpu[-1]["dtype"] == torch.bfloat16
    assert fake_gpu[-1]["device_map"] == "auto"


def test_device_map_auto_without_a_gpu_loads_float32(tiny_folder, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    lm = load_model(str(tiny_folder), device_map="auto")
    assert lm.model.dtype == torch.float32 and lm.device.type == "cpu"


def test_one_gpu_loads_straight_onto_it(tiny_folder, fake_gpu, monkeypatch):
    from transformers import PreTrainedModel

    moves: list = []
    real_to = PreTrainedModel.to
    monkeypatch.setattr(PreTrainedModel, "to", lambda self, *a, **k: (moves.append(a or k), real_to(self, *a, **k))[1])
    load_model(str(tiny_folder), device="cuda:0")
    assert fake_gpu[-1]["device_map"] == "cuda:0"
    assert fake_gpu[-1]["dtype"] == torch.bfloat16
    assert moves == []  # placed as it loaded, never copied over afterwards
    load_model(str(tiny_folder))  # no device: the GPU, also placed as it loads
    assert fake_gpu[-1]["device_map"] == "cuda"


def test_a_cpu_model_loads_with_float32_by_default_and_runs(tiny_folder):
    lm = load_model(str(tiny_folder), device="cpu")
    assert lm.model.dtype == torch.float32
    assert [c.token_ids for c in lm.top_tokens(lm.encode("hello world"), 3)]
    half = load_model(str(tiny_folder), device="cpu", dtype="bfloat16")
    assert half.model.dtype == torch.bfloat16
