"""Build a tiny, randomly initialised SAM3 checkpoint for tests and the offline demo.

The folder has the same layout as the real `facebook/sam3` checkpoint (one `sam3_video`
model holding the detector and the tracker, plus the processor and tokenizer), so the
service loads it through exactly the same `from_pretrained` calls.  Its weights are
random: the masks it produces are meaningless and only exercise the plumbing.
"""

from __future__ import annotations

import json
from pathlib import Path

TINY_MODEL_NOTICE = (
    "tiny randomly initialised SAM3: its masks are MEANINGLESS; "
    "point --model at facebook/sam3 or a local copy of it for real annotations"
)

# Smallest sizes the SAM3 architecture accepts: a 112px input gives an 8x8 token grid,
# every width is shared (the detector, tracker and FPN exchange features unprojected).
_IMAGE_SIZE = 112
_PATCH = 14
_WIDTH = 128  # the video tracker reads 64-channel memories (hard-coded) and needs a wider model
_GRID = _IMAGE_SIZE // _PATCH
_FEATURE_SIZES = [[_GRID * 4, _GRID * 4], [_GRID * 2, _GRID * 2], [_GRID, _GRID]]
_MARKER_FILE = "samfleet_tiny_model.json"
# Bumped when the layout changes so `samfleet demo` rebuilds an older tiny model (2: video-capable).
_LAYOUT = 2


def _vision_config() -> dict:
    return {
        "backbone_config": {
            "model_type": "sam3_vit_model",
            "hidden_size": _WIDTH,
            "intermediate_size": 2 * _WIDTH,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": _IMAGE_SIZE,
            "patch_size": _PATCH,
            "window_size": _GRID // 2,
            "global_attn_indexes": [1],
            "pretrain_image_size": _IMAGE_SIZE,
        },
        "fpn_hidden_size": _WIDTH,
        "backbone_feature_sizes": _FEATURE_SIZES,
    }


def _small_transformer(**extra) -> dict:
    return {"hidden_size": _WIDTH, "num_attention_heads": 2, "intermediate_size": 2 * _WIDTH, **extra}


def byte_tokenizer():
    """A byte-level CLIP tokenizer with no merges: every byte is one token.

    The real CLIP vocabulary cannot be downloaded here; a merge-free byte vocabulary is the
    smallest one the CLIP BPE accepts for any text, so prompts of any language tokenize.
    """
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    specials = ["<|startoftext|>", "<|endoftext|>"]
    symbols = list(bytes_to_unicode().values())
    vocab = {tok: i for i, tok in enumerate(specials + symbols + [s + "</w>" for s in symbols])}
    return CLIPTokenizer(vocab=vocab, merges=[])


FULL_SIZE_NOTICE = (
    "full-size randomly initialised SAM3 (the real architecture, for cost measurements): its masks are MEANINGLESS"
)


def build_tiny_model(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random SAM3 checkpoint (model, processor, tokenizer) to `out_dir`."""
    return build_random_model(out_dir, seed, full_size=False)


def build_random_model(out_dir: str | Path, seed: int = 0, *, full_size: bool) -> Path:
    """A random SAM3 checkpoint in the published layout; `full_size` uses transformers' default
    (published) architecture, which costs what the trained model costs to load and run."""
    import torch
    from safetensors.torch import save_file
    from transformers import Sam2VideoVideoProcessor, Sam3ImageProcessor, Sam3Processor, Sam3VideoConfig, Sam3VideoModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = byte_tokenizer()
    if full_size:
        config, image_processor, notice = Sam3VideoConfig(), Sam3ImageProcessor(), FULL_SIZE_NOTICE
    else:
        config, image_processor, notice = _tiny_config(len(tokenizer)), _tiny_image_processor(), TINY_MODEL_NOTICE
    torch.manual_seed(seed)
    model = Sam3VideoModel(config).eval()
    # save_pretrained applies the tracker's checkpoint key mapping twice for this nested
    # model ("tracker_model.tracker_model.*"), which from_pretrained cannot read back; the
    # plain state dict has the key layout of the published checkpoint.
    config.save_pretrained(out)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    Sam3Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    # Sam3VideoProcessor / Sam3TrackerVideoProcessor also load a video processor (the class the
    # published checkpoint names); frames are fed one at a time through the image processor, so
    # it only has to match it.
    Sam2VideoVideoProcessor(
        size=image_processor.size, image_mean=image_processor.image_mean, image_std=image_processor.image_std
    ).save_pretrained(out)
    (out / _MARKER_FILE).write_text(
        json.dumps({"notice": notice, "seed": seed, "full_size": full_size, "layout": _LAYOUT})
    )
    return out


def _tiny_image_processor():
    from transformers import Sam3ImageProcessor

    return Sam3ImageProcessor(
        size={"height": _IMAGE_SIZE, "width": _IMAGE_SIZE},
        mask_size={"height": _GRID * 4, "width": _GRID * 4},
    )


def _tiny_config(vocab_size: int):
    from transformers import Sam3VideoConfig

    detector = {
        "model_type": "sam3",
        "vision_config": _vision_config(),
        "text_config": {
            "model_type": "clip_text_model",
            "vocab_size": vocab_size,
            "hidden_size": _WIDTH,
            "intermediate_size": 2 * _WIDTH,
            "projection_dim": _WIDTH,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 32,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        "geometry_encoder_config": _small_transformer(num_layers=1),
        "detr_encoder_config": _small_transformer(num_layers=1),
        "detr_decoder_config": _small_transformer(num_layers=1, num_queries=16),
        "mask_decoder_config": {"hidden_size": _WIDTH, "num_attention_heads": 2},
    }
    tracker = {
        "model_type": "sam3_tracker_video",
        "vision_config": {"model_type": "sam3_vision_model", **_vision_config()},
        "prompt_encoder_config": {"hidden_size": _WIDTH, "image_size": _IMAGE_SIZE, "patch_size": _PATCH},
        "mask_decoder_config": {
            "hidden_size": _WIDTH,
            "mlp_dim": 2 * _WIDTH,
            "num_attention_heads": 2,
            "iou_head_hidden_dim": _WIDTH,
        },
        "image_size": _IMAGE_SIZE,
        "memory_attention_hidden_size": _WIDTH,
        "memory_attention_num_layers": 1,
        "memory_attention_feed_forward_hidden_size": 2 * _WIDTH,
        "memory_attention_rope_feat_sizes": [_GRID, _GRID],
        "memory_encoder_hidden_size": _WIDTH,
        "memory_encoder_output_channels": 64,
        "mask_downsampler_embed_dim": _WIDTH,
        "memory_fuser_embed_dim": _WIDTH,
        "memory_fuser_intermediate_dim": 2 * _WIDTH,
    }
    return Sam3VideoConfig(detector_config=detector, tracker_config=tracker, low_res_mask_size=_GRID * 4)


def is_tiny_model(path: str | Path) -> bool:
    """True for every checkpoint built here (tiny or full-size): its weights are random."""
    return (Path(path) / _MARKER_FILE).is_file()


def is_current_tiny_model(path: str | Path) -> bool:
    """A checkpoint built here by this version (older ones lack what the video models need)."""
    return is_tiny_model(path) and json.loads((Path(path) / _MARKER_FILE).read_text()).get("layout") == _LAYOUT
