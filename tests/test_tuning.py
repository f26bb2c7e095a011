"""Tuning methods: which parameters train, and the SAC paper's Table 5 counts on ViT-B."""
from __future__ import annotations

import pytest
import torch

from pipeline.errors import ParamsError
from pipeline.models.split_qkv import SplitQkv
from pipeline.params import TUNING_METHODS, load_params
from pipeline.tuning import count_parameters
from pipeline.tuning.apply import SAM_METHODS
from pipeline.tuning.build import build_model


def test_the_schema_and_apply_tuning_name_the_same_methods() -> None:
    # One list of names (params.TuningMethod): a method the schema accepts is always applied.
    assert tuple(SAM_METHODS) == TUNING_METHODS


def vit_b(*overrides: str):
    # Random weights: counts do not depend on them. 256x256 as in SAC.
    return build_model(load_params("missing.yaml", ["model.variant=vit_b", "data.img_size=256", *overrides]))


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["tuning.method=layernorm"], 41_472),  # SAC: ~41K, 0.046%
        (["tuning.method=lora", "tuning.lora.targets=[lin2]", "tuning.lora.last_blocks=1", "tuning.lora.rank=8"], 30_720),
        (["tuning.method=lora", "tuning.lora.targets=[lin2]", "tuning.lora.last_blocks=1", "tuning.lora.rank=16"], 61_440),
        (["tuning.method=lora", "tuning.lora.targets=[qkv]", "tuning.lora.last_blocks=2", "tuning.lora.rank=8"], 49_152),
        (["tuning.method=lora", "tuning.lora.targets=[qkv]", "tuning.lora.last_blocks=2", "tuning.lora.rank=16"], 98_304),
        (["tuning.method=lora", "tuning.lora.targets=[qkv]", "tuning.lora.last_blocks=4", "tuning.lora.rank=8"], 98_304),
        (["tuning.method=lora", "tuning.lora.targets=[qkv]", "tuning.lora.last_blocks=4", "tuning.lora.rank=16"], 196_608),
    ],
)
def test_sac_table5_counts_on_vit_b(overrides, expected):
    counts = count_parameters(vit_b(*overrides))
    assert counts.trainable == expected
    if overrides == ["tuning.method=layernorm"]:
        assert round(counts.trainable_percent, 3) == 0.046


def test_cracksam_lora_r4_is_about_4m_and_decoder_trainable():
    model = vit_b("tuning.method=cracksam", "tuning.cracksam.parts=[lora]", "tuning.lora.rank=4", "tuning.lora.targets=[q, v]")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert 4_000_000 < count_parameters(model).trainable < 4_300_000
    assert any(n.startswith("sam.mask_decoder.") for n in trainable)
    assert any(n.startswith("sam.prompt_encoder.") for n in trainable)
    assert all("lora_" in n for n in trainable if n.startswith("sam.image_encoder."))


def tiny(*overrides: str, size: int = 64):
    torch.manual_seed(0)
    return build_model(load_params("missing.yaml", [f"data.img_size={size}", *overrides]))


@pytest.mark.parametrize(
    "method, marker",
    [("layernorm", "ln_tuning_layers"), ("lora", "lora_"), ("adapter", ".adapter."), ("decoder", "sam.mask_decoder.")],
)
def test_only_the_method_parameters_get_gradients(method, marker):
    model = tiny(f"tuning.method={method}")
    loss = model(torch.rand(2, 3, 64, 64)).pow(2).mean()
    loss.backward()
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert marker in name, name
        else:
            assert param.grad is None, name
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    "overrides",
    [["tuning.method=layernorm"], ["tuning.method=lora", "tuning.lora.targets=[q, v, proj, lin1]"],
     ["tuning.method=adapter"], ["tuning.method=cracksam", "tuning.cracksam.parts=[lora, adapter]"]],
)
def test_tuning_starts_from_the_pretrained_function(overrides):
    """LoRA's B and adapters' up-projections start at zero: tuning must not change the output."""
    # Same seed, so the base weights are identical; tuning modules are created after them.
    tuned = tiny(*overrides)
    reference = tiny("tuning.method=full")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(tuned(x), reference(x), atol=1e-5)


def test_split_qkv_matches_fused_projection():
    fused = torch.nn.Linear(12, 36)
    split = SplitQkv(fused)
    x = torch.randn(3, 5, 12)
    assert torch.allclose(split(x), fused(x), atol=1e-6)


def test_last_blocks_larger_than_depth_is_an_error():
    with pytest.raises(ParamsError, match="last_blocks=9"):
        tiny("tuning.method=lora", "tuning.lora.last_blocks=9")
