"""Run SAM3 over a FiftyOne collection through the samfleet service (the SDK, never the model).

Results are written in chunks as they arrive, so a run that dies (service gone, executor
killed) keeps everything finished so far; with `overwrite=False` a re-run only visits samples
not yet done (label field still empty; videos: see `fiftyone_plugin.video`), which makes it the resume.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fiftyone as fo
import fiftyone.core.collections as foc
import fiftyone.core.media as fom

from fiftyone_plugin import runs
from fiftyone_plugin.background import Stop
from fiftyone_plugin.classes import add_classes
from fiftyone_plugin.labels import clicked_detection, keypoint_clicks, to_detections
from fiftyone_plugin.prompts import ClassPrompts, parse_prompts
from fiftyone_plugin.sample_prompts import EXEMPLAR_ONLY, NO_PROMPTS, SamplePrompts
from fiftyone_plugin.video import VideoLabels, labels_path
from sdk import AsyncClient, Client
from sdk.batch import BatchItem, run_batch
from sdk.calls import segment_params
from sdk.images import Upload, reduces
from sdk.video import DEFAULT_VIDEO_ATTEMPTS

Progress = Callable[[int, int, int], None]  # (done, failed, total)
REFINE_IMAGES_ONLY = (
    "refine with points works on image datasets; to follow a clicked object through a video "
    "use `samfleet track --point` or the SDK's track_video(points=...)"
)


@dataclass(frozen=True)  # frozen: safe as a shared default argument
class Service:
    """Where the service is; None leaves it to the SDK (SAMFLEET_URL / SAMFLEET_API_KEY)."""

    url: str | None = None
    api_key: str | None = None


@dataclass
class SegmentRun:
    """One "segment with SAM3" run: which prompts, where the labels go, how hard to push."""

    prompts: list[str]  # "prompt" or "class=prompt" (fiftyone_plugin.prompts)
    label_field: str
    threshold: float = 0.5
    negative_prompts: list[str] = field(default_factory=list)  # concepts whose instances are dropped
    overwrite: bool = False
    concurrency: int = 8
    upload: Upload = "reduced"  # images larger than the model's input sent reduced to it (sdk.Client)
    chunk_size: int = 64
    mask_dir: Path | None = None  # masks as PNG files (`mask_path`) instead of in the database
    video_attempts: int = DEFAULT_VIDEO_ATTEMPTS  # tries per video and prompt when its stream breaks

    def __post_init__(self) -> None:
        self.class_prompts: ClassPrompts = parse_prompts(self.prompts)
        reduces(self.upload)
        for prompt in self.texts:
            # Bad input fails here, before any request.
            segment_params(prompt, threshold=self.threshold, negative_prompts=self.negative_prompts)
        if self.concurrency < 1 or self.chunk_size < 1 or self.video_attempts < 1:
            raise ValueError("concurrency, chunk_size and video_attempts must be at least 1")

    @property
    def texts(self) -> list[str]:
        """The prompt texts sent to the service."""
        return list(self.class_prompts.texts)


@dataclass
class RunSummary:
    done: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # sample id -> why
    stopped: bool = False  # ended by `stop` before every sample was visited
    run_key: str = ""  # the run's record on the dataset (fiftyone_plugin.runs)


def pending_samples(view: foc.SampleCollection, done_field: str, overwrite: bool) -> foc.SampleCollection:
    if overwrite or not view.has_field(done_field):
        return view
    return view.exists(done_field, False)


class ImageLabels:
    """Image samples: the instances of every prompt in one `fo.Detections` field, written in chunks."""

    def __init__(self, run: SegmentRun):
        self.run = run
        self.done_field = run.label_field
        self.chunk_size = run.chunk_size
        self._groups: list[list[str]] | None = None
        self._groups_lock = asyncio.Lock()

    async def label(
        self, client: AsyncClient, path: str, mask_dir: Path | None, own: SamplePrompts = NO_PROMPTS
    ) -> fo.Detections:
        """One request per image for all the prompts (the service encodes the image once for
        them), or as few as the service's `max_prompts` allows; each instance comes back
        labelled with its prompt.  The image's `own` prompts (`fiftyone_plugin.model`'s
        prompt field) add a request per prompt refined by exemplar boxes, and one per clicked
        object."""
        run = self.run
        texts = [[p for p in group if p not in own.boxes] for group in await self.prompt_groups(client)]
        texts = [group for group in texts if group]
        params: dict[str, Any] = {"threshold": run.threshold, "negative_prompts": run.negative_prompts}
        found, exemplified, clicked = await asyncio.gather(
            asyncio.gather(*(client.segment(path, group, **params) for group in texts)),
            asyncio.gather(
                *(
                    client.segment(path, None if prompt == EXEMPLAR_ONLY else prompt, exemplars=boxes, **params)
                    for prompt, boxes in own.boxes.items()
                )
            ),
            asyncio.gather(*(client.segment_points(path, c.points, labels=c.labels) for c in own.clicks)),
        )
        by_prompt = {
            prompt: result.model_copy(update={"instances": [i for i in result.instances if i.label == prompt]})
            for group, result in zip(texts, found, strict=True)
            for prompt in group
        }
        by_prompt.update(zip(own.boxes, exemplified, strict=True))

        def detections() -> fo.Detections:
            labels = to_detections(by_prompt, mask_dir, run.class_prompts.class_of)
            labels.detections += [
                clicked_detection(result, c.label, c.keypoint_id, mask_dir / f"points-{k}.png" if mask_dir else None)
                for k, (c, result) in enumerate(zip(own.clicks, clicked, strict=True))
            ]
            return labels

        return await asyncio.to_thread(detections)

    async def prompt_groups(self, client: AsyncClient) -> list[list[str]]:
        """The prompts in requests of as many as the service takes beside the negative prompts
        (its `max_prompts` counts both), asked once per run."""
        async with self._groups_lock:
            if self._groups is None:
                limit = (await client.info()).limits.max_prompts - len(self.run.negative_prompts)
                size = max(1, limit)  # none left: the service refuses it, with its own message
                prompts = self.run.texts
                self._groups = [prompts[i : i + size] for i in range(0, len(prompts), size)]
        return self._groups

    def write(self, view: foc.SampleCollection, finished: dict[str, fo.Detections]) -> None:
        view.set_values(self.run.label_field, finished, key_field="id")


@dataclass(frozen=True)
class SampleRequest:
    """What is asked for one sample: its media file, where its masks go (None: in the
    database), and the prompts it brings itself."""

    id: str
    path: str
    mask_dir: Path | None = None
    own: SamplePrompts = NO_PROMPTS


def label_each(
    client: AsyncClient, media: ImageLabels | VideoLabels, samples: Iterable[SampleRequest], concurrency: int
) -> AsyncIterator[BatchItem[SampleRequest]]:
    """Each sample's labels as they finish, `concurrency` samples at a time, a failed sample's
    error on its item: the one request path of "segment with SAM3" (`segment_collection`) and
    of `dataset.apply_model` (`fiftyone_plugin.model`)."""
    return run_batch(
        samples,
        lambda sample: media.label(client, sample.path, sample.mask_dir, sample.own),
        concurrency=concurrency,
        progress=False,
        ordered=False,
    )


def segment_collection(
    view: foc.SampleCollection,
    run: SegmentRun,
    service: Service = Service(),
    progress: Progress | None = None,
    stop: Stop | None = None,
) -> RunSummary:
    """Label every (pending) sample of `view` with the instances of each prompt; in a video
    dataset every frame, each prompt tracked through the video (`fiftyone_plugin.video`).

    Before the first label, the run's classes join the dataset's classes and mask targets of the
    label field (`fiftyone_plugin.classes`) and the run is recorded on the dataset
    (`fiftyone_plugin.runs`, key in `summary.run_key`), updated with the counts when it ends.
    `stop()` from another thread ends the run early (`summary.stopped`): no request starts after
    it, and what finished is saved before this returns.

    Raises `sdk.ConnectionError` when the service stays unreachable; what was finished before is
    already saved.  Per-sample failures (an unreadable image, a 4xx) are collected, not raised.
    """
    media = VideoLabels(run) if view.media_type == fom.VIDEO else ImageLabels(run)
    todo = pending_samples(view, media.done_field, run.overwrite)
    ids, paths = todo.values(["id", "filepath"])
    summary = RunSummary(skipped=len(view) - len(ids))
    with Client(service.url, api_key=service.api_key) as client:
        info, url = client.info(), client.settings.url
    field = labels_path(run.label_field) if view.media_type == fom.VIDEO else run.label_field
    add_classes(view, field, run.class_prompts.classes)
    summary.run_key = runs.start(view, run, field, info, url, samples=len(view))
    try:
        work = _segment(view, list(zip(ids, paths, strict=True)), run, media, service, summary, progress)
        finished = _run((stop or Stop()).guard(work))
        summary.stopped = not finished and summary.done + len(summary.failed) < len(ids)
    except BaseException as exc:
        runs.finish(view, summary, exc)
        raise
    runs.finish(view, summary, None)
    return summary


def _run(work: Coroutine[Any, Any, bool]) -> bool:
    """`asyncio.run(work)`, also where an event loop already runs in this thread (a Jupyter
    notebook, where FiftyOne users call this), which refuses asyncio.run: there in a thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(work)
    with ThreadPoolExecutor(1, thread_name_prefix="samfleet-segment") as pool:
        return pool.submit(asyncio.run, work).result()


async def _segment(
    view: foc.SampleCollection,
    samples: list[tuple[str, str]],
    run: SegmentRun,
    media: ImageLabels | VideoLabels,
    service: Service,
    summary: RunSummary,
    progress: Progress | None,
) -> None:
    finished: dict[str, Any] = {}

    def save() -> None:
        if finished:
            media.write(view, finished)
            summary.done += len(finished)
            finished.clear()
        if progress:
            progress(summary.done, len(summary.failed), len(samples))

    requests = (
        SampleRequest(sample_id, path, run.mask_dir / sample_id / run.label_field if run.mask_dir else None)
        for sample_id, path in samples
    )
    async with AsyncClient(service.url, api_key=service.api_key, upload=run.upload) as client:
        try:
            async for item in label_each(client, media, requests, run.concurrency):
                if item.ok:
                    finished[item.image.id] = item.result
                else:
                    summary.failed[item.image.id] = str(item.error)
                if len(finished) >= media.chunk_size:
                    save()
        finally:
            save()


def refine_with_keypoints(
    samples: foc.SampleCollection, keypoints_field: str, label_field: str, service: Service = Service()
) -> int:
    """Re-segment one object per keypoint (its points are the clicks) and put the mask into
    `label_field`, labelled like the keypoint.  Re-running replaces, not duplicates, the
    detection made from the same keypoint.  Returns the number of objects segmented."""
    if samples.media_type == fom.VIDEO:
        raise ValueError(REFINE_IMAGES_ONLY)
    samples.compute_metadata()  # only for samples that lack it
    count = 0
    with Client(service.url, api_key=service.api_key) as client:
        for sample in samples.exists(keypoints_field):
            width, height = sample.metadata.width, sample.metadata.height
            # The labels are read and saved on the sample itself, not as `samples` shows it: saving
            # a view that filters `label_field` (the review view) would delete what it hides.
            whole = sample.dataset[sample.id]
            existing = (whole.get_field(label_field) if whole.has_field(label_field) else None) or fo.Detections()
            made = []
            for keypoint in sample[keypoints_field].keypoints:
                points, labels = keypoint_clicks(keypoint, width, height)
                if not points:
                    continue
                result = client.segment_points(sample.filepath, points, labels=labels)
                made.append(clicked_detection(result, keypoint.label, keypoint.id))
            replaced = {d["keypoint_id"] for d in made}
            kept = [d for d in existing.detections if d.get_attribute_value("keypoint_id", None) not in replaced]
            whole[label_field] = fo.Detections(detections=kept + made)
            whole.save()
            count += len(made)
    return count
