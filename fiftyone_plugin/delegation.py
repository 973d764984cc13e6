"""When "segment with SAM3" leaves the App for a delegated executor.

An immediate run lives inside the App's request.  FiftyOne ends a plain immediate operator after
`fo.config.operator_timeout` (600 s by default: about 9,000 images at today's rate); this one
streams its progress (generator execution), which that limit does not cut, but it still ends
with the browser tab that started it (closed, reloaded) and with the App server.  What it
finished is kept either way, yet a large run is better queued for a delegated executor
(`fiftyone delegated launch`), which runs it to the end, lists it in the App's Runs, and leaves
the App free.  So a target view larger than `DELEGATE_ABOVE` images is delegated without asking;
the form's "Run in the background above" field changes the limit for one run.
"""

from __future__ import annotations

import fiftyone.core.collections as foc
import fiftyone.core.media as fom

DELEGATE_ABOVE = 2000  # images: a few minutes' work at the service's rate
# A video is tracked frame by frame for each prompt: a short clip is a hundred frames or more.
IMAGES_PER_VIDEO = 100


def work_size(view: foc.SampleCollection) -> int:
    """The view's size in images (a video counting `IMAGES_PER_VIDEO`)."""
    return len(view) * (IMAGES_PER_VIDEO if view.media_type == fom.VIDEO else 1)


def too_large_for_the_app(view: foc.SampleCollection, limit: int = DELEGATE_ABOVE) -> bool:
    return work_size(view) > limit
