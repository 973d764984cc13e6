"""SAM3 on the samfleet cluster as a FiftyOne model: `dataset.apply_model(model, "sam3", ...)`,
the way FiftyOne's own SAM3 zoo model (`segment-anything-3-image-torch`) is used, with the work
sent to the service instead of a local GPU.

    model = SamfleetModel.of(url="http://gpu-cluster:8000", classes=["person", "car"])
    dataset.apply_model(model, "sam3", batch_size=16)        # batch_size: requests in flight

As for the zoo model, `classes` are the text prompts ("class=prompt" entries such as "bus=red bus"
label what the prompt finds with the class, `fiftyone_plugin.prompts`) and `confidence_thresh` the minimum score
(the service's threshold; its default 0.5 when None).  `apply_model(classes=...)` restricts the
model's classes, or names them when it has none: an open-vocabulary model is asked for exactly
the classes wanted.  `apply_model(prompt_field=...)` adds each sample's own prompts
(`fiftyone_plugin.sample_prompts`).  Video datasets need `media_type="video"`: each class is
tracked through the video and the labels land on its frames.

The requests and the labels are those of the plugin's "segment with SAM3"
(`fiftyone_plugin.segment.label_each`); FiftyOne reads each image for the model, but only its
file is sent (no torch here).  A sample that fails (an unreadable image, a 4xx) is logged and
left unlabelled, as `apply_model(skip_failures=True)` does.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar, get_args

import fiftyone.core.config as foc
import fiftyone.core.models as fom

from fiftyone_plugin.prompts import parse_prompts
from fiftyone_plugin.sample_prompts import NO_PROMPTS, SamplePrompts, sample_prompts
from fiftyone_plugin.segment import ImageLabels, SampleRequest, SegmentRun, label_each
from fiftyone_plugin.video import VIDEO_PROMPT_FIELD, VideoLabels
from sdk import AsyncClient
from sdk.images import Upload

logger = logging.getLogger(__name__)
T = TypeVar("T")
PROMPT_FIELD = "prompt_field"  # the key apply_model(prompt_field=...) sets in `needs_fields`
NEEDS_CLASSES = "give classes=[...]: the text prompts, each instance of which SAM3 finds"


class SamfleetModelConfig(foc.Config):
    """`url`, `api_key`: the service (None: SAMFLEET_URL / SAMFLEET_API_KEY); `classes`: the
    text prompts; `confidence_thresh`: the minimum score (None: the service's default);
    `negative_prompts`: concepts whose instances are dropped (images); `media_type`: "image"
    or "video"; `upload`: as `sdk.Client`'s."""

    def __init__(self, d: dict[str, Any]):
        self.url = self.parse_string(d, "url", default=None)
        self.api_key = self.parse_string(d, "api_key", default=None)
        self.classes = self.parse_array(d, "classes", default=None)
        # Set by apply_model(classes=...), as for FiftyOne's models.
        self.filter_classes = self.parse_array(d, "filter_classes", default=None)
        self.confidence_thresh = self.parse_number(d, "confidence_thresh", default=None)
        self.negative_prompts = self.parse_array(d, "negative_prompts", default=[])
        self.media_type = self.parse_categorical(d, "media_type", ["image", "video"], default="image")
        self.upload = self.parse_categorical(d, "upload", list(get_args(Upload)), default="reduced")


class _Session:
    """An event loop in a thread of its own, with one client and one run, while the model is in
    use: every batch reuses the connections, and it runs inside a notebook, whose own loop is busy."""

    def __init__(self, config: SamfleetModelConfig, run: SegmentRun):
        self.run = run
        self.media = VideoLabels(run) if config.media_type == "video" else ImageLabels(run)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="samfleet-model", daemon=True)
        self._thread.start()

        async def open_client() -> AsyncClient:
            return AsyncClient(config.url, api_key=config.api_key, upload=config.upload)

        self.client = self.call(open_client())

    def call(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result()

    def close(self) -> None:
        self.call(self.client.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


class SamfleetModel(fom.SamplesMixin, fom.Model):
    """SAM3 through the samfleet service (module docstring); `with model:` holds its
    connections (apply_model does)."""

    def __init__(self, config: SamfleetModelConfig):
        fom.SamplesMixin.__init__(self)
        self.config = config
        self._session: _Session | None = None

    @classmethod
    def of(cls, **config: Any) -> SamfleetModel:
        return cls(SamfleetModelConfig(config))

    @property
    def media_type(self) -> str:
        return str(self.config.media_type)

    @property
    def ragged_batches(self) -> bool:
        return False  # images are sent one by one: any sizes batch together

    @property
    def transforms(self) -> None:
        return None

    @property
    def preprocess(self) -> bool:
        return False

    @preprocess.setter
    def preprocess(self, value: bool) -> None:
        pass  # nothing is preprocessed here: the files are sent as they are

    def __enter__(self) -> SamfleetModel:
        # apply_model sets classes, confidence_thresh and prompt_field before entering: bad
        # input fails here, before any request (inside its batches it would only be logged).
        self._open()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def prompts(self) -> list[str]:
        classes = list(self.config.classes or [])
        wanted = self.config.filter_classes
        if wanted is None:
            return classes
        if not classes:
            return sorted(wanted)  # apply_model hands them over as a set: sorted, the same order each run
        parsed = parse_prompts(classes)  # "bus=red bus" is kept when "bus" is wanted
        return [entry for entry, text in zip(classes, parsed.texts, strict=True) if parsed.class_of[text] in wanted]

    def predict(self, arg: Any, sample: Any = None) -> Any:
        return self.predict_all([arg], samples=None if sample is None else [sample])[0]

    def predict_all(self, args: Sequence[Any], samples: Sequence[Any] | None = None) -> list[Any]:
        """The labels of each sample's file (`args`, the pixels FiftyOne read, give only the
        image sizes the prompt field's coordinates need)."""
        if samples is None:
            raise ValueError("the samfleet model sends the samples' files: use dataset.apply_model(model, ...)")
        session = self._open()
        prompt_field = self.needs_fields.get(PROMPT_FIELD)
        requests = [
            SampleRequest(sample.id, sample.filepath, own=self._own_prompts(sample, arg, prompt_field))
            for arg, sample in zip(args, samples, strict=True)
        ]

        async def label_all() -> list[Any]:
            labels: list[Any] = [None] * len(requests)
            async for item in label_each(session.client, session.media, requests, concurrency=len(requests)):
                if item.ok:
                    labels[item.index] = item.result
                else:
                    logger.warning(
                        "samfleet: sample %s (%s) left unlabelled: %s", item.image.id, item.image.path, item.error
                    )
            return labels

        return session.call(label_all())

    def _open(self) -> _Session:
        if self._session is None:
            prompts = self.prompts()
            if not prompts:
                raise ValueError(NEEDS_CLASSES)
            if self.media_type == "video" and self.needs_fields.get(PROMPT_FIELD):
                raise ValueError(VIDEO_PROMPT_FIELD)
            threshold = self.config.confidence_thresh
            run = SegmentRun(
                prompts=prompts,
                label_field="predictions",  # unused: apply_model writes the labels
                negative_prompts=list(self.config.negative_prompts),
                upload=self.config.upload,
                **({} if threshold is None else {"threshold": threshold}),
            )
            self._session = _Session(self.config, run)
        return self._session

    def _own_prompts(self, sample: Any, image: Any, prompt_field: str | None) -> SamplePrompts:
        if not prompt_field:
            return NO_PROMPTS
        height, width = image.shape[:2]
        return sample_prompts(sample[prompt_field], self._open().run.class_prompts, width, height)
