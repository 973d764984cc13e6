"""BENCHMARK DOUBLE of SAM3's detector, served by the real application: same deployments, same
ingress, same config, only `SAM3Model.segment` answers from here instead of from a model.

It measures what the service does around a GPU that the tiny random model cannot show: the
tiny model finds no instances on most images, while full-size SAM3 returns up to 200 per
prompt, and a GPU answers a batch in tens of milliseconds.  The double sleeps a configurable
forward-pass time per batch (a GPU's time: it costs this machine no CPU) and answers SAM3-shaped
raw outputs from `serving.synthetic_outputs`: a prompt that starts with a number, e.g.
"50 cars", gets that many instances.  Its masks are synthetic: only their sizes are realistic.

It also tracks videos (`TrackerOutputDouble`): a configurable sleep per frame and one synthetic
object moving across the frame, behind the real `track_video` (the upload is decoded frame by
frame as for the real tracker), so a video can last minutes on this machine at almost no CPU:
the fleet tests (tests/test_fleet_lifecycle.py) keep one in flight through rollouts and downscales.

A double is a model folder (`samfleet make-output-double DIR --forward-ms 30`) holding the
full-size SAM3 processors, so the ingress decodes, resizes and post-processes exactly as for
the real checkpoint, and a marker file the SAM3 deployment recognises.  Point requests need a
real model and are refused.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from serving.predictor import RawDetections, SegmentItem
from serving.synthetic_outputs import synthetic_detections
from serving.video_tracking import TrackRequest

MARKER_FILE = "samfleet_output_double.json"
NOTICE = "SAM3 output double (benchmarks): no model runs, instances are SYNTHETIC"
VARIANTS = 4  # different scenes per instance count, answered in turn
_COUNT = re.compile(r"^\s*(\d+)\b")


def build_output_double(out_dir: str | Path, forward_ms: float = 30.0, frame_ms: float = 45.0) -> Path:
    """A model folder for the double: full-size SAM3's processors and the double's settings.
    `frame_ms` is one video frame's tracking time (45 ms: 22 frames/s, the rate the shipped
    graceful shutdown is sized for, serving/serve_config.yaml)."""
    from transformers import Sam3ImageProcessor, Sam3Processor

    from serving.tiny_model import byte_tokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    Sam3Processor(image_processor=Sam3ImageProcessor(), tokenizer=byte_tokenizer()).save_pretrained(out)
    (out / MARKER_FILE).write_text(json.dumps({"notice": NOTICE, "forward_ms": forward_ms, "frame_ms": frame_ms}))
    return out


def is_output_double(model: str | Path) -> bool:
    return (Path(model) / MARKER_FILE).is_file()


def _settings(folder: str | Path) -> dict:
    return json.loads((Path(folder) / MARKER_FILE).read_text())


class SegmentOutputDouble:
    """`Sam3Predictor.segment`'s interface; one sleep of `forward_ms` per call (one batch)."""

    def __init__(self, folder: str | Path):
        self.forward_s = _settings(folder)["forward_ms"] / 1000
        self.mask_size = (288, 288)  # full-size SAM3's low-res masks
        self._answers: dict[tuple[int, int, float], RawDetections] = {}
        self._turn = 0
        self._lock = threading.Lock()

    def segment(self, items: Sequence[SegmentItem]) -> list[list[RawDetections]]:
        time.sleep(self.forward_s)
        return [
            [self._answer(text if not excluded else "0", item.mask_threshold) for text, excluded in item.queries()]
            for item in items
        ]

    def _answer(self, text: str, mask_threshold: float) -> RawDetections:
        match = _COUNT.match(text)
        count = int(match.group(1)) if match else 0
        with self._lock:
            self._turn = (self._turn + 1) % VARIANTS
            key = (count, self._turn, mask_threshold)
            if key not in self._answers:
                # Made once per key: on a GPU the replica's share of this is device work.
                made = synthetic_detections(count, seed=count * VARIANTS + self._turn, mask_size=self.mask_size)
                self._answers[key] = RawDetections.of(
                    torch.from_numpy(made.pred_logits),
                    torch.from_numpy(made.pred_boxes),
                    torch.from_numpy(made.pred_masks),
                    torch.from_numpy(made.presence_logits),
                    mask_threshold,
                )
            return self._answers[key]

    def describe(self) -> dict:
        return {"device": "none", "dtype": "none", "tiny_random_model": False, "output_double": True}


class TrackerOutputDouble:
    """`serving.video_tracking.VideoTracker`'s interface: per frame, a sleep of `frame_ms` (the
    GPU's time) and one object, id 1, a square a quarter of the frame's height moving right."""

    def __init__(self, folder: str | Path):
        self.frame_s = _settings(folder)["frame_ms"] / 1000

    def track(self, frames: Iterable[np.ndarray], request: TrackRequest) -> Iterator[tuple]:
        label = request.prompt or "object"
        for index, frame in enumerate(frames):
            time.sleep(self.frame_s)
            height, width = frame.shape[:2]
            side = max(1, height // 4)
            x = index % max(1, width - side)
            mask = torch.zeros((1, height, width), dtype=torch.bool)
            mask[0, side : 2 * side, x : x + side] = True
            yield mask, [1], [0.9], [label]
