"""Load SAM3 (detector + tracker, with their processors) through `from_pretrained`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Sam3Model, Sam3Processor, Sam3TrackerModel, Sam3TrackerProcessor

from serving.config import ServiceConfig
from serving.tiny_model import is_tiny_model


class ModelLoadError(RuntimeError):
    pass


@dataclass
class LoadedSam3:
    detector: Sam3Model
    processor: Sam3Processor
    tracker: Sam3TrackerModel
    tracker_processor: Sam3TrackerProcessor
    device: torch.device
    dtype: torch.dtype
    tiny: bool


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name != "auto":
        return getattr(torch, name)
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def load_processors(model: str) -> tuple[Sam3Processor, Sam3TrackerProcessor]:
    """Processors only: what the CPU ingress needs for post-processing."""
    return from_pretrained(Sam3Processor, model), from_pretrained(Sam3TrackerProcessor, model)


def use_tf32() -> None:
    """TensorFloat-32 matmuls and convolutions, as SAM3's authors run it on Ampere and newer GPUs:
    the float32 parts of the model (its bfloat16 autocast leaves some) at tensor-core speed."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def load_sam3(config: ServiceConfig) -> LoadedSam3:
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    if device.type == "cuda":
        use_tf32()
    # safetensors only: a pickled .bin checkpoint can run code when loaded.
    detector = from_pretrained(Sam3Model, config.model, dtype=dtype, use_safetensors=True).to(device).eval()
    tracker = from_pretrained(Sam3TrackerModel, config.model, dtype=dtype, use_safetensors=True).to(device).eval()
    # The checkpoint stores one ViT backbone; transformers copies it into both models when it
    # loads them (its sam3_tracker key mapping). Sharing the module keeps one copy in memory.
    tracker.vision_encoder.backbone = detector.vision_encoder.backbone
    processor, tracker_processor = load_processors(config.model)
    return LoadedSam3(
        detector=detector,
        processor=processor,
        tracker=tracker,
        tracker_processor=tracker_processor,
        device=device,
        dtype=dtype,
        tiny=Path(config.model).is_dir() and is_tiny_model(config.model),
    )


def from_pretrained(cls, model: str, **kwargs):
    """`cls.from_pretrained`, with a ModelLoadError saying how to fix an unavailable model."""
    try:
        return cls.from_pretrained(model, **kwargs)
    except OSError as exc:
        raise ModelLoadError(
            f"could not load SAM3 from {model!r} ({exc.__class__.__name__}: {str(exc).splitlines()[0]}). "
            "The facebook/sam3 checkpoint is gated and needs network access and a Hugging Face token; "
            "on an offline machine download it elsewhere and pass its local folder with --model DIR, "
            "or build the tiny random model (meaningless masks, for testing) with "
            "`samfleet make-tiny-model DIR` and pass --model DIR."
        ) from exc
