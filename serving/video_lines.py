"""Turn tracked frames into the NDJSON lines of POST /v1/video/track (runs on the CPU ingress)."""

from __future__ import annotations

from sdk.masks import RunMask
from sdk.schema import MaskFormat, TrackedInstance, VideoFrame
from serving.postprocess import run_box
from serving.video_tracking import TrackedFrame


def frame_line(tracked: TrackedFrame, frame_count: int, mask_format: MaskFormat) -> VideoFrame:
    size = (tracked.height, tracked.width)
    instances = []
    for object_id, mask, score, label in zip(
        tracked.object_ids, tracked.masks, tracked.scores, tracked.labels, strict=True
    ):
        runs = RunMask.from_crop(mask.crop(), (mask.x, mask.y), size)
        instances.append(
            TrackedInstance(
                object_id=object_id,
                mask=runs.encode(mask_format),
                box=run_box(runs),
                score=score,
                label=label,
            )
        )
    return VideoFrame(
        frame_index=tracked.frame_index,
        frame_count=frame_count,
        width=tracked.width,
        height=tracked.height,
        instances=sorted(instances, key=lambda i: i.object_id),
    )


def ndjson(line) -> bytes:
    return line.model_dump_json().encode() + b"\n"
