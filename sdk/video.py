"""Write a tracked video to a folder: the service's NDJSON lines and one instance-id PNG per frame."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from sdk.masks import decode_mask, paint
from sdk.schema import VideoFrame


def object_id_image(frame: VideoFrame) -> np.ndarray:
    """HxW uint16: each pixel the `object_id` of the object there, 0 for background."""
    image = np.zeros((frame.height, frame.width), dtype=np.uint16)
    for instance in frame.instances:
        paint(image, decode_mask(instance.mask), instance.object_id)
    return image


def write_frames(frames: Iterable[VideoFrame], out: Path, progress: bool = True) -> int:
    """`out/frames.ndjson` (one VideoFrame per line) and `out/masks/FRAME.png`; the number of frames."""
    (out / "masks").mkdir(parents=True, exist_ok=True)
    written = 0
    with open(out / "frames.ndjson", "w") as lines, tqdm(unit="frame", disable=not progress) as bar:
        for frame in frames:
            bar.total = frame.frame_count - frame.frame_index + written  # known once the first frame is in
            lines.write(frame.model_dump_json() + "\n")
            Image.fromarray(object_id_image(frame)).save(out / "masks" / f"{frame.frame_index:06d}.png")
            written += 1
            bar.update()
    return written
