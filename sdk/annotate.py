"""Annotate a folder of images through the service: resumable, atomic, optionally watching.

Output folder layout (FILE is the image's path relative to the source folder):
  results/FILE.json        the service's answer (instances, RLE masks, boxes, scores, labels)
  masks/FILE.png           instance-id PNG (0 = background, k = results' k-th instance), --format png|both
  annotations.coco.json    COCO instance segmentation of every finished image, --format coco|both
  manifest.jsonl           what is finished, so a re-run resumes (see sdk.manifest)
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image
from pydantic import ValidationError as PydanticValidationError

from sdk.calls import points_params, segment_params
from sdk.client import Client
from sdk.coco import CocoBuilder, CocoImage
from sdk.errors import APIError, ConnectionError, TimeoutError
from sdk.images import image_bytes
from sdk.manifest import Fingerprint, Manifest, write_atomic
from sdk.results import Result
from sdk.schema import PointsParams, SegmentParams

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
COCO_NAME = "annotations.coco.json"
Format = Literal["png", "coco", "both"]
# --watch tries an image that failed transiently again on later rounds, up to this many attempts
# in all (of this version of the file; each attempt already retried by the client, with backoff).
WATCH_ATTEMPTS = 5
# --watch rewrites the COCO file (all of it) at most once per this many times the last rewrite
# took, so that a long watch does not spend its time rewriting it; it is always written at the end.
COCO_REWRITE_SPACING = 10


def transient(error: Exception) -> bool:
    """Worth trying again later: the service was overloaded, lost a replica, was unreachable or
    did not answer in time.  Not when it refused the request or the image (4xx but 429)."""
    if isinstance(error, APIError):
        return error.status == 429 or error.status >= 500
    return isinstance(error, (ConnectionError, TimeoutError))


@dataclass(frozen=True)
class AnnotationRequest:
    """What to ask for every image: a concept (text and/or exemplar boxes) or clicks/box."""

    endpoint: Literal["segment", "segment_points"]
    params: dict[str, Any]

    def validate(self) -> dict[str, Any]:
        """The parameters as the SDK sends them: those that differ from the schema's defaults
        (raises sdk.ValidationError when malformed).

        Defaults left out, the run header of a folder says what the user chose and nothing more:
        a field added to the schema later (with a default) leaves it unchanged, so runs started
        before it still resume, and equal headers still mean identical requests.  (Not pydantic's
        exclude_unset: `segment_params` sets every field, defaults included.)
        """
        build = segment_params if self.endpoint == "segment" else points_params
        # The reference image travels as a file part beside the parameters.
        params = {k: v for k, v in self.params.items() if k != "reference_image"}
        return build(**params).model_dump(mode="json", exclude_defaults=True)

    def same_form(self, params: dict[str, Any]) -> dict[str, Any]:
        """Parameters from a run header of any version (with every default, or lacking fields
        added since) as `validate` gives them now; raises pydantic's ValidationError if they
        are not parameters of this endpoint."""
        model = SegmentParams if self.endpoint == "segment" else PointsParams
        return model.model_validate(params).model_dump(mode="json", exclude_defaults=True)

    def categories(self) -> list[str]:
        """COCO categories in a fixed order: the prompts (the labels the service gives its instances)."""
        prompt = self.params.get("prompt")
        if self.endpoint == "segment_points":
            return ["object"]
        if not prompt:
            return ["exemplar"]
        return [prompt] if isinstance(prompt, str) else list(prompt)


@dataclass(frozen=True)
class SourceImage:
    file: str  # path relative to the source folder, "/"-separated: the key in the manifest
    path: Path
    fingerprint: Fingerprint


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)

    def report(self) -> str:
        lines = [f"done {self.done}, skipped {self.skipped} (finished earlier), failed {len(self.failed)}"]
        lines += [f"  failed {file}: {reason}" for file, reason in sorted(self.failed.items())]
        return "\n".join(lines)


def find_images(src: Path, exclude: Path | None = None) -> Iterator[tuple[str, Path]]:
    """Image files under `src` (recursively, sorted), as (relative name, path); hidden files and
    folders (e.g. half-copied `.name.part` files) and the `exclude` folder are left out."""
    if src.is_file():
        yield src.name, src
        return
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if exclude is not None and path.resolve().is_relative_to(exclude.resolve()):
            continue
        if any(part.startswith(".") for part in rel.parts) or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.is_file():
            yield rel.as_posix(), path


class FolderAnnotator:
    """Annotates the images of `src` into `out` through `client`, skipping those already finished."""

    def __init__(
        self,
        client: Client,
        src: Path,
        out: Path,
        request: AnnotationRequest,
        fmt: Format = "both",
        concurrency: int = 8,
        progress: bool = True,
    ):
        self.client, self.src, self.out, self.request = client, src, out, request
        self.formats = {"png", "coco"} if fmt == "both" else {fmt}
        self.concurrency, self.progress = concurrency, progress
        self.info = client.info()
        run = {"request": request.endpoint, "params": request.validate(), "model": self.info.model}
        self.params = dict(request.params)
        if self.params.get("reference_image") is not None:
            # Read once and vouched for by its hash in the header: a run resumed with another
            # reference image is refused, and a file changed mid-run changes nothing.
            self.params["reference_image"] = image_bytes(self.params["reference_image"])
            run["reference_image_sha256"] = hashlib.sha256(self.params["reference_image"]).hexdigest()
        self.manifest = Manifest(out, run, self._same_form)
        self.summary = Summary()
        self._coco: dict[str, CocoImage] = {}  # each result converted once, by file
        self._coco_stale = True  # the COCO file may not say what the manifest says
        self._coco_due = 0.0  # time.monotonic() before which --watch does not rewrite it

    def _same_form(self, stored: dict[str, Any]) -> dict[str, Any]:
        """A run header written by any version, in this version's form (see AnnotationRequest.validate)."""
        if stored.get("request") != self.request.endpoint or not isinstance(stored.get("params"), dict):
            return stored
        try:
            return {**stored, "params": self.request.same_form(stored["params"])}
        except PydanticValidationError:
            return stored  # not a request this version can make: it differs

    def close(self) -> None:
        self.manifest.close()

    def pending(self, retry_failed: bool = True) -> tuple[list[SourceImage], int]:
        """Images not finished yet (new or changed since), and how many are finished.

        Images that failed are all tried again with `retry_failed` (a re-run); otherwise (a
        --watch round) only those that failed transiently, fewer than WATCH_ATTEMPTS times.
        """
        todo, finished = [], 0
        for file, path in find_images(self.src, exclude=self.out):
            try:
                image = SourceImage(file, path, Fingerprint.of(path))
            except FileNotFoundError:  # deleted between listing and stat
                continue
            failure = self.manifest.failure(file, image.fingerprint)
            if self.manifest.is_done(file, image.fingerprint):
                finished += 1
            elif retry_failed or failure is None or (failure.transient and failure.attempts < WATCH_ATTEMPTS):
                todo.append(image)
        return todo, finished

    def annotate(self, images: list[SourceImage]) -> None:
        """Send `images` through the service, writing each result as soon as it arrives."""
        if not images:
            return
        by_path = {image.path: image for image in images}
        many = self.client.segment_many if self.request.endpoint == "segment" else self.client.segment_points_many
        with many(
            [image.path for image in images],
            concurrency=self.concurrency,
            progress=self.progress,
            ordered=False,
            **self.params,
        ) as batch:
            for item in batch:
                image = by_path[item.image]
                if item.ok:
                    self._write(image, item.result)
                else:
                    assert item.error is not None
                    reason = str(item.error)
                    self._coco_stale |= image.file in self.manifest.done  # an earlier version's result leaves it
                    self.manifest.record_failed(image.file, image.fingerprint, reason, transient(item.error))
                    self.summary.failed[image.file] = reason

    def _write(self, image: SourceImage, result: Result) -> None:
        if "png" in self.formats:
            buffer = io.BytesIO()
            Image.fromarray(result.label_image()).save(buffer, format="PNG")
            write_atomic(self.out / "masks" / f"{image.file}.png", buffer.getvalue())
        # The result file goes last: once it exists, everything for this image does.
        write_atomic(self.result_path(image.file), result.model_dump_json().encode())
        self.manifest.record_done(image.file, image.fingerprint, len(result.instances))
        if "coco" in self.formats:
            self._coco[image.file] = CocoImage.of(image.file, result)
            self._coco_stale = True
        self.summary.done += 1
        self.summary.failed.pop(image.file, None)

    def result_path(self, file: str) -> Path:
        return self.out / "results" / f"{file}.json"

    def write_coco(self) -> Path | None:
        """COCO file of every finished image, in file-name order, so that the same finished set
        always gives the same file, however many runs it took.  Written only when it may differ
        from the last one written; each result is converted once (when it arrives, or read back
        from its file once for images finished by an earlier run)."""
        if "coco" not in self.formats:
            return None
        path = self.out / COCO_NAME
        if not self._coco_stale:
            return path
        started = time.monotonic()
        builder = CocoBuilder(self.request.categories())
        for file in sorted(self.manifest.done):
            if file not in self._coco:
                result = Result.model_validate_json(self.result_path(file).read_bytes())
                self._coco[file] = CocoImage.of(file, result)
            builder.add_image(self._coco[file])
        write_atomic(path, json.dumps(builder.to_dict()).encode())
        self._coco_stale = False
        self._coco_due = time.monotonic() + COCO_REWRITE_SPACING * (time.monotonic() - started)
        return path

    def run(self) -> Summary:
        todo, self.summary.skipped = self.pending()
        self.annotate(todo)
        self.write_coco()
        return self.summary

    def watch(self, interval_s: float = 2.0, stop: Callable[[], bool] = lambda: False) -> None:
        """Annotate images as they appear until `stop()` or an interrupt.

        Polling rather than OS file events: it works the same on network shares and every OS,
        and it sees a file only once its size and mtime held still for one interval, i.e. once
        whoever is copying it in has finished.  Images the service refused are retried only if
        changed; those that failed transiently (overload, lost replica, unreachable service) on
        later rounds, WATCH_ATTEMPTS attempts in all.  The COCO file is rewritten after a round
        that changed what it says (but see COCO_REWRITE_SPACING), and at the end.
        """
        previous: dict[str, Fingerprint] = {}
        try:
            while not stop():
                time.sleep(interval_s)
                candidates, _ = self.pending(retry_failed=False)
                stable = [image for image in candidates if previous.get(image.file) == image.fingerprint]
                previous = {image.file: image.fingerprint for image in candidates}
                if stable:
                    self.annotate(stable)
                if time.monotonic() >= self._coco_due:
                    self.write_coco()
        finally:
            self.write_coco()
