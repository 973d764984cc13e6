"""The tiny checkpoint loads through the real from_pretrained path; missing models fail clearly."""

from __future__ import annotations


import pytest

from serving.config import ServiceConfig
from serving.model_loader import ModelLoadError, load_sam3
from serving.tiny_model import is_tiny_model


def test_tiny_checkpoint_loads_every_weight(tiny_model):
    from transformers import Sam3Model, Sam3TrackerModel, Sam3VideoModel

    assert is_tiny_model(tiny_model)
    for cls in (Sam3Model, Sam3TrackerModel, Sam3VideoModel):
        _, info = cls.from_pretrained(tiny_model, output_loading_info=True)
        assert not info["missing_keys"], (cls.__name__, info["missing_keys"])
        assert not info["mismatched_keys"], cls.__name__


def test_loader_shares_one_vit_backbone(tiny_model):
    loaded = load_sam3(ServiceConfig(model=tiny_model))
    assert loaded.tracker.vision_encoder.backbone is loaded.detector.vision_encoder.backbone
    assert loaded.tiny and str(loaded.device) == "cpu"


@pytest.mark.parametrize("model", ["facebook/sam3", "/nonexistent/sam3-folder"])
def test_unavailable_model_says_how_to_fix_it(model):
    with pytest.raises(ModelLoadError) as raised:
        load_sam3(ServiceConfig(model=model, device="cpu"))
    message = str(raised.value)
    assert model in message
    assert "--model DIR" in message and "make-tiny-model" in message


def test_pickled_checkpoints_are_refused(tiny_model, tmp_path):
    """Only safetensors are loaded: a .bin checkpoint is a pickle and can run code."""
    import shutil

    import torch
    from safetensors.torch import load_file

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_model, pickled)
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="safetensors|model.safetensors"):
        load_sam3(ServiceConfig(model=str(pickled), device="cpu"))


def test_model_must_lie_inside_the_configured_roots(tmp_path):
    from pydantic import ValidationError

    root, outside = tmp_path / "models", tmp_path / "outside"
    (root / "sam3").mkdir(parents=True)
    outside.mkdir()
    (root / "escape").symlink_to(outside)
    assert ServiceConfig(model=str(root / "sam3"), model_roots=[str(root)]).model == str(root / "sam3")
    for elsewhere in ("facebook/sam3", str(root / ".." / "outside"), str(root / "escape")):
        with pytest.raises(ValidationError, match="not inside the allowed model_roots"):
            ServiceConfig(model=elsewhere, model_roots=[str(root)])
