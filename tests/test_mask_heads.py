"""model.mask_head (SAM's token or CrackSAM's two class tokens) and model.input_norm on small models."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from crackops.cli import main
from pipeline.errors import CheckpointError, ParamsError
from pipeline.models.mask_heads import MASK_HEAD_NAMES, MASK_HEADS
from pipeline.models.sam_builder import build_sam
from pipeline.params import ModelParams, load_params
from pipeline.training.run import train_from_params
from pipeline.training.trained import load_trained_model
from pipeline.tuning.build import build_model

DEFAULTS = str(Path(__file__).with_name("defaults.yaml"))  # an empty params file: the built-in defaults

CLASS_TOKENS = "model.mask_head=class_tokens"


def tiny(*overrides: str):
    torch.manual_seed(0)
    return build_model(load_params("missing.yaml", ["data.img_size=64", *overrides]))


def count(capsys, *overrides: str) -> int:
    args = ["count-params", "--params", DEFAULTS, "--json"]
    for item in overrides:
        args += ["-S", item]
    assert main(args) == 0
    return json.loads(capsys.readouterr().out)["trainable"]


def test_every_mask_head_is_a_valid_param() -> None:
    from typing import get_args

    assert get_args(ModelParams.model_fields["mask_head"].annotation) == MASK_HEAD_NAMES


@pytest.mark.parametrize("overrides, sam_token, class_tokens, paper", [
    # CrackSAM paper: 9.1M with adapters (m=32), 4.4M with LoRA (r=4 on q, v).
    (["model.variant=vit_h", "tuning.method=cracksam", "tuning.cracksam.parts=[adapter]", "tuning.adapter.dim=32"],
     9_391_408, 9_110_766, 9.1e6),
    (["model.variant=vit_h", "tuning.method=cracksam", "tuning.cracksam.parts=[lora]", "tuning.lora.rank=4",
      "tuning.lora.targets=[q, v]"], 4_719_920, 4_439_278, 4.4e6),
    # SAC's decoder-only 3.7M: CrackSAM's two-token decoder is 3,777,698.
    (["model.variant=vit_b", "data.img_size=256", "tuning.method=decoder"], 4_058_340, 3_777_698, None),
])
def test_count_params_with_each_head(capsys, overrides, sam_token, class_tokens, paper) -> None:
    # count-params builds on the meta device, so even ViT-H counts without allocating its weights.
    assert count(capsys, *overrides) == sam_token
    assert count(capsys, *overrides, CLASS_TOKENS) == class_tokens
    if paper is not None:
        assert abs(class_tokens - paper) / paper < 0.01


def test_class_tokens_decoder_has_two_new_tokens_and_their_mlps() -> None:
    decoder = tiny(CLASS_TOKENS).sam.mask_decoder
    assert decoder.mask_tokens.weight.shape == (2, 256)
    assert len(decoder.output_hypernetworks_mlps) == 2
    assert decoder.iou_prediction_head.layers[-1].out_features == 2


def test_class_tokens_logit_is_crack_minus_background_so_sigmoid_is_the_softmax() -> None:
    model = tiny(CLASS_TOKENS).eval()
    captured = {}
    original = model.sam.mask_decoder.predict_masks

    def spy(**inputs):
        masks, iou = original(**inputs)
        captured.setdefault("masks", []).append(masks)
        return masks, iou

    model.sam.mask_decoder.predict_masks = spy
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        logits = model(images)
    z = torch.nn.functional.interpolate(torch.cat(captured["masks"]), size=(64, 64), mode="bilinear",
                                        align_corners=False)
    assert z.shape == (2, 2, 64, 64) and logits.shape == (2, 1, 64, 64)
    assert torch.allclose(torch.sigmoid(logits), torch.softmax(z, dim=1)[:, 1:2], atol=1e-5)


def test_class_tokens_and_their_mlps_train_and_the_unused_iou_head_gets_no_gradient() -> None:
    model = tiny(CLASS_TOKENS, "tuning.method=cracksam")
    model(torch.rand(2, 3, 64, 64)).pow(2).mean().backward()
    decoder = model.sam.mask_decoder
    assert decoder.mask_tokens.weight.grad.abs().sum(dim=1).gt(0).all()  # both class tokens
    for mlp in decoder.output_hypernetworks_mlps:
        assert mlp.layers[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in decoder.iou_prediction_head.parameters())


@pytest.mark.parametrize("norm", ["family", "none"])
def test_input_norm_sets_what_the_encoder_sees(norm: str) -> None:
    model = tiny(f"model.input_norm={norm}")
    seen = []
    model.sam.image_encoder.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        model(images)
    expected = images if norm == "none" else (images * 255 - model.sam.pixel_mean) / model.sam.pixel_std
    assert torch.equal(seen[0], expected)


def test_class_tokens_are_sam_only_and_sam_lite_keeps_its_normalisation() -> None:
    with pytest.raises(ParamsError, match="model.mask_head 'class_tokens' applies to model.family sam only"):
        load_params("missing.yaml", ["model.family=deeplabv3", "model.mask_head=class_tokens"])
    with pytest.raises(ParamsError, match="model.input_norm 'none' does not apply to model.family sam_lite"):
        load_params("missing.yaml", ["model.family=sam_lite", "model.input_norm=none"])


@pytest.mark.parametrize("norm", ["family", "none"])
def test_deeplab_input_norm_is_imagenet_or_none(norm: str) -> None:
    from pipeline.tuning.build import build_model

    model = build_model(load_params("missing.yaml", ["model.family=deeplabv3", f"model.input_norm={norm}"]))
    seen = []
    model.net.backbone.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    images = torch.rand(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        model(images)
    expected = images if norm == "none" else (images - model.mean) / model.std
    assert torch.equal(seen[0], expected)


def test_official_checkpoint_loads_into_class_tokens_except_the_replaced_modules(tmp_path) -> None:
    torch.manual_seed(1)
    official = build_sam("vit_tiny", 64)  # SAM's own decoder: 4 mask tokens, 4 MLPs, 4-output IoU head
    path = tmp_path / "sam_vit_tiny.pth"
    torch.save(official.state_dict(), path)
    sam = tiny(CLASS_TOKENS, f"model.checkpoint={path}").sam
    fresh = MASK_HEADS["class_tokens"].fresh_prefixes
    assert set(fresh) == {"mask_decoder.mask_tokens.", "mask_decoder.output_hypernetworks_mlps.",
                          "mask_decoder.iou_prediction_head."}  # CrackSAM's load_from except_keys
    loaded, source = sam.state_dict(), official.state_dict()
    for name, tensor in loaded.items():
        if name.startswith(fresh):
            assert name not in source or not torch.equal(tensor, source[name]), name
        else:
            assert torch.equal(tensor, source[name]), name
    assert "mask_decoder.output_hypernetworks_mlps.3.layers.0.weight" in source  # dropped, not an error
    # Only the replaced modules are excused: any other key still has to be there.
    del source["mask_decoder.iou_token.weight"]
    torch.save(source, path)
    with pytest.raises(CheckpointError, match="missing: mask_decoder.iou_token.weight"):
        tiny(CLASS_TOKENS, f"model.checkpoint={path}")


def test_class_tokens_trains_saves_reloads_predicts_and_serves(tiny_params, tmp_path) -> None:
    from pipeline.inference.probabilities import predict_probabilities
    from pipeline.tracking.pyfunc import CrackSegmenterModel

    params = tiny_params(CLASS_TOKENS, "model.input_norm=none", "loss.kind=ce_class_dice", "train.epochs=1",
                         "tuning.method=cracksam", "tuning.cracksam.parts=[adapter]")
    outcome = train_from_params(params, out_dir=tmp_path / "train", progress=False)
    assert len(outcome.fit.history) == 1 and np.isfinite(outcome.fit.history[0].train_loss)
    loaded, loaded_params = load_trained_model(tmp_path / "train")
    assert (loaded_params.model.mask_head, loaded_params.model.input_norm) == ("class_tokens", "none")
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(images), outcome.model.eval()(images), atol=1e-5)

    image = np.random.default_rng(0).integers(0, 256, (80, 100, 3), dtype=np.uint8)
    whole, tiled = (predict_probabilities(loaded, [image], 64, 2, tile=tile)[0] for tile in (None, 64))
    for prob in (whole, tiled):
        assert prob.shape == (80, 100) and 0.0 <= prob.min() and prob.max() <= 1.0

    served = CrackSegmenterModel()
    train_dir = tmp_path / "train"
    served.load_context(SimpleNamespace(artifacts={"weights": str(train_dir / "model.safetensors"),
                                                   "params": str(train_dir / "params.yaml")}))
    masks = served.predict(None, image[None], params={"threshold": 0.5})
    np.testing.assert_array_equal(masks[0], (whole >= 0.5).astype(np.uint8))
    out = served.predict(None, pd.DataFrame({"image": [_png_base64(image)]}))
    assert out["crack_fraction"][0] == pytest.approx(float((whole >= 0.5).mean()))


def _png_base64(image: np.ndarray) -> str:
    import base64

    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok
    return base64.b64encode(buf.tobytes()).decode()


def test_methods_compare_non_sam_presets_reset_the_sam_only_settings() -> None:
    from search.space import load_space

    space = load_space("methods-compare")
    base = {"model": {"mask_head": "class_tokens", "input_norm": "none"}}
    for preset in ("sam_lite", "deeplabv3"):
        model = space.trial_params(base, {"preset": preset, "loss.focal_gamma": 2.0}).model
        assert (model.mask_head, model.input_norm) == ("sam_token", "family"), preset
    assert space.trial_params(base, {"preset": "sam-lora"}).model.mask_head == "class_tokens"
