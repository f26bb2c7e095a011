"""SAM building, prompt-free forward and checkpoint loading on small random models."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.errors import CheckpointError
from pipeline.models.prompt_free_sam import PromptFreeSam
from pipeline.models.sam_builder import build_sam
from pipeline.models.sam_checkpoint import load_sam_checkpoint
from pipeline.params import load_params
from pipeline.training.trained import load_trained_model, save_trained_model
from pipeline.tuning.build import build_model


def test_prompt_free_output_is_one_logit_map_per_image_and_batch_independent():
    torch.manual_seed(0)
    model = PromptFreeSam(build_sam("vit_tiny", 64)).eval()
    images = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        batched = model(images)
        single = torch.cat([model(images[i : i + 1]) for i in range(3)])
    assert batched.shape == (3, 1, 64, 64)
    assert torch.allclose(batched, single, atol=1e-5)


def test_wrong_input_size_is_a_clear_error():
    model = PromptFreeSam(build_sam("vit_tiny", 64))
    with pytest.raises(ValueError, match="expected 64x64"):
        model(torch.rand(1, 3, 32, 32))


def test_checkpoint_at_1024_loads_into_256_model_with_resized_position_tables(tmp_path):
    """Official checkpoints are 1024x1024; SAC trains at 256x256."""
    torch.manual_seed(0)
    source = build_sam("vit_tiny", 1024)
    path = tmp_path / "sam_vit_tiny.pth"
    torch.save(source.state_dict(), path)
    target = load_sam_checkpoint(build_sam("vit_tiny", 256), path, "vit_tiny")

    encoder, src_encoder = target.image_encoder, source.image_encoder
    assert encoder.pos_embed.shape == (1, 16, 16, 192)
    expected = F.interpolate(src_encoder.pos_embed.permute(0, 3, 1, 2), size=(16, 16), mode="bicubic",
                             align_corners=False).permute(0, 2, 3, 1)
    assert torch.allclose(encoder.pos_embed, expected)
    for index, (block, src_block) in enumerate(zip(encoder.blocks, src_encoder.blocks)):
        if index in (1, 3):  # global attention: the table covers the whole 16x16 grid
            assert block.attn.rel_pos_h.shape == (31, 64) and src_block.attn.rel_pos_h.shape == (127, 64)
        else:  # windowed attention keeps its 14x14 window tables unchanged
            assert torch.equal(block.attn.rel_pos_h, src_block.attn.rel_pos_h)
        assert torch.equal(block.attn.qkv.weight, src_block.attn.qkv.weight)
    assert torch.equal(target.mask_decoder.iou_token.weight, source.mask_decoder.iou_token.weight)


def test_same_size_checkpoint_loads_exactly(tmp_path):
    torch.manual_seed(1)
    source = build_sam("vit_tiny", 64)
    path = tmp_path / "ckpt.pth"
    torch.save({"model": source.state_dict()}, path)  # wrapped state dicts are accepted too
    target = load_sam_checkpoint(build_sam("vit_tiny", 64), path, "vit_tiny")
    for name, tensor in source.state_dict().items():
        assert torch.equal(tensor, target.state_dict()[name]), name


def test_missing_official_checkpoint_says_what_to_download(tmp_path):
    with pytest.raises(CheckpointError) as error:
        build_model(load_params("missing.yaml", ["model.variant=vit_b", f"model.checkpoint={tmp_path}/nope.pth"]))
    message = str(error.value)
    assert "nope.pth" in message and "sam_vit_b_01ec64.pth" in message
    assert "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth" in message


def test_checkpoint_of_other_architecture_names_the_keys(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"image_encoder.blocks.0.attn.qkv.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(CheckpointError, match="missing: .*unexpected|wrong shape"):
        load_sam_checkpoint(build_sam("vit_tiny", 64), path, "vit_tiny")


class NotAWeight:
    pass


def test_checkpoint_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"payload": NotAWeight()}, path)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_sam_checkpoint(build_sam("vit_tiny", 64), path, "vit_tiny")


@pytest.mark.parametrize("method", ["layernorm", "lora", "adapter", "cracksam", "full"])
def test_trained_model_round_trips_through_safetensors(tmp_path, method):
    params = load_params("missing.yaml", ["data.img_size=64", f"tuning.method={method}"])
    torch.manual_seed(0)
    model = build_model(params)
    with torch.no_grad():  # move tuned weights away from their zero init so the check means something
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.01 * torch.randn_like(param))
    save_trained_model(model, params, tmp_path)
    loaded, loaded_params = load_trained_model(tmp_path)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), loaded(x), atol=1e-5)
    assert loaded_params == params


def test_a_trained_model_exports_as_a_sam_checkpoint_that_loads_back(tmp_path):
    """The search benchmark's pretrained setting starts from such an export."""
    import subprocess
    import sys
    from pathlib import Path

    torch.manual_seed(2)
    params = load_params("missing.yaml", ["data.img_size=64"])
    model = build_model(params)
    save_trained_model(model, params, tmp_path / "trained")
    out = tmp_path / "sam_vit_tiny.pth"
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "benchmarks/sam_checkpoint_from_model.py"),
                           str(tmp_path / "trained/model.safetensors"), str(out)],
                          cwd=root, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    loaded = build_model(load_params("missing.yaml", ["data.img_size=64", f"model.checkpoint={out}"]))
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
