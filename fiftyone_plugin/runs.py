"""Each "segment with SAM3" run recorded on its dataset with FiftyOne's run API: what was asked
(prompts, classes, threshold, label field...), of which model and service, and how it went.

One run key per run, `sam3_<UTC time to the microsecond>`, so a dataset keeps the history of
every run on every field; find them with `dataset.list_runs(method=RUN_METHOD)` (or filtered by
any config value, e.g. `label_field="sam3"`, `"frames.sam3"` for a video dataset's) and read
one with `dataset.get_run_info(key)`.
The run is registered before the first request (status "running") and updated when it ends:
"completed", "stopped" (ended early, e.g. the App tab closed) or "failed" (with the error).
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING

import fiftyone.core.collections as foc
import fiftyone.core.runs as fors
import httpx

from fiftyone_plugin.classes import dataset_of
from sdk.schema import InfoResponse

if TYPE_CHECKING:
    from fiftyone_plugin.segment import RunSummary, SegmentRun

RUN_METHOD = "samfleet_sam3"
KEY_PREFIX = "sam3_"
ERRORS_KEPT = 20  # per-sample failures recorded with the run; the count covers them all


def new_key() -> str:
    return f"{KEY_PREFIX}{datetime.datetime.now(datetime.timezone.utc):%Y%m%d_%H%M%S_%f}"


def public_url(url: str) -> str:
    """The service URL without credentials or query: the run record is readable by every user
    of the dataset."""
    return str(httpx.URL(url).copy_with(userinfo=b"", query=None))


def start(
    collection: foc.SampleCollection, run: SegmentRun, label_field: str, info: InfoResponse, url: str, samples: int
) -> str:
    """Register the run (on the dataset: a selection's ids would make the record huge) and
    return its key.  `label_field` is where the labels go (`frames.<name>` on videos)."""
    key = new_key()
    dataset = dataset_of(collection)
    config = dataset.init_run(
        method=RUN_METHOD,
        status="running",
        label_field=label_field,
        prompts=list(run.prompts),
        classes=dict(run.class_prompts.class_of),
        negative_prompts=list(run.negative_prompts),
        threshold=run.threshold,
        overwrite=run.overwrite,
        upload=run.upload,
        concurrency=run.concurrency,
        chunk_size=run.chunk_size,
        mask_dir=str(run.mask_dir) if run.mask_dir else None,
        model=info.model,
        tiny_random_model=info.tiny_random_model,
        api_version=info.api_version,
        service_url=public_url(url),
        samples=samples,
        done=0,
        skipped=0,
        failed=0,
        errors={},
        error=None,
    )
    dataset.register_run(key, config)
    return key


def finish(collection: foc.SampleCollection, summary: RunSummary, error: BaseException | None) -> None:
    """Record how the run of `summary.run_key` ended."""
    dataset = dataset_of(collection)
    key = summary.run_key
    config = dataset.get_run_info(key).config
    config.status = "failed" if error else "stopped" if summary.stopped else "completed"
    config.error = f"{type(error).__name__}: {error}" if error else None
    config.done, config.skipped, config.failed = summary.done, summary.skipped, len(summary.failed)
    config.errors = kept_errors(summary)
    dataset.update_run_config(key, config)


def kept_errors(summary: RunSummary) -> dict[str, str]:
    """The first `ERRORS_KEPT` failures, {sample id: why}: enough to see what went wrong without
    a run record (or an App dialog) as large as a failed dataset."""
    return dict(list(summary.failed.items())[:ERRORS_KEPT])


def latest(collection: foc.SampleCollection, label_field: str | None = None) -> fors.RunInfo | None:
    """The newest SAM3 run (on `label_field`, if given), or None."""
    filters = {"label_field": label_field} if label_field else {}
    dataset = dataset_of(collection)
    keys = dataset.list_runs(method=RUN_METHOD, **filters)
    return dataset.get_run_info(max(keys)) if keys else None
