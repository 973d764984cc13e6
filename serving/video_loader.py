"""Load SAM3's video models next to the image models, sharing their weights.

The checkpoint holds one detector and one tracker; transformers builds a full copy of them
inside each video model it loads.  Every submodule the video models have in common with the
already-loaded image models (and with each other) is replaced by that one instance, after
checking the weights are identical, so a replica holds one copy of each weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import Sam3TrackerVideoModel, Sam3TrackerVideoProcessor, Sam3VideoModel, Sam3VideoProcessor

from serving.model_loader import LoadedSam3, from_pretrained


@dataclass
class LoadedSam3Video:
    video: Sam3VideoModel  # text prompt: detect + track
    video_processor: Sam3VideoProcessor
    tracker_video: Sam3TrackerVideoModel  # points on a frame: track one object
    tracker_video_processor: Sam3TrackerVideoProcessor
    device: torch.device
    dtype: torch.dtype


def load_sam3_video(loaded: LoadedSam3, model: str) -> LoadedSam3Video:
    kwargs = {"dtype": loaded.dtype, "use_safetensors": True}  # as load_sam3: no pickled checkpoints
    video = from_pretrained(Sam3VideoModel, model, **kwargs).to(loaded.device).eval()
    tracker_video = from_pretrained(Sam3TrackerVideoModel, model, **kwargs).to(loaded.device).eval()
    _share(video, "detector_model", loaded.detector)
    for name, _ in tracker_video.named_children():
        if name != "vision_encoder":  # the video model's tracker reads the detector's vision features
            _share(video.tracker_model, name, getattr(loaded.tracker, name, getattr(tracker_video, name)))
            _share(tracker_video, name, getattr(video.tracker_model, name))
    _share(tracker_video.vision_encoder, "backbone", loaded.detector.vision_encoder.backbone)
    _share(tracker_video.vision_encoder, "neck", video.tracker_neck)
    return LoadedSam3Video(
        video=video,
        video_processor=from_pretrained(Sam3VideoProcessor, model),
        tracker_video=tracker_video,
        tracker_video_processor=from_pretrained(Sam3TrackerVideoProcessor, model),
        device=loaded.device,
        dtype=loaded.dtype,
    )


def _share(owner: nn.Module, name: str, module: nn.Module) -> None:
    """Make `owner.name` the instance `module`, which must hold exactly the same weights."""
    current = getattr(owner, name)
    if current is module:
        return
    mine, theirs = current.state_dict(), module.state_dict()
    if mine.keys() != theirs.keys() or not all(torch.equal(mine[k], theirs[k]) for k in mine):
        raise RuntimeError(f"cannot share {type(owner).__name__}.{name}: the weights differ")
    setattr(owner, name, module)
