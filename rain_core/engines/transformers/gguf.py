"""A GGUF checkpoint as a plain float32 Hugging Face folder (safetensors, config, tokenizer)."""

from __future__ import annotations

from pathlib import Path


def save_dequantised(gguf: Path, folder: Path) -> None:
    """Dequantise the causal LM in ``gguf`` into ``folder`` (which exists): ``model.safetensors``, its
    config without the GGUF quantisation entry, its generation config and its tokenizer."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    # The weights are dequantised: the GGUF origin must not make other loaders expect GGUF files.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.save_pretrained(str(folder))
    model.generation_config.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
