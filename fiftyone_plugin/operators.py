"""The plugin's operators: forms (resolve_input) and glue from the App or the delegated executor
to `segment` and `curation`, which hold the work."""

from __future__ import annotations

from pathlib import Path

import fiftyone as fo
import fiftyone.core.media as fom
import fiftyone.operators as foo
import fiftyone.operators.types as types

from fiftyone_plugin import curation
from fiftyone_plugin.background import Background
from fiftyone_plugin.delegation import DELEGATE_ABOVE, IMAGES_PER_VIDEO, too_large_for_the_app
from fiftyone_plugin.prompts import split_list
from fiftyone_plugin.runs import kept_errors
from fiftyone_plugin.segment import (
    REFINE_IMAGES_ONLY,
    RunSummary,
    SegmentRun,
    Service,
    refine_with_keypoints,
    segment_collection,
)
from fiftyone_plugin.video import labels_path
from sdk.video import DEFAULT_VIDEO_ATTEMPTS

DEFAULT_FIELD = "sam3"
EXPORT_FORMATS: dict[str, list[curation.ExportFormat]] = {"both": ["coco", "png"], "coco": ["coco"], "png": ["png"]}


def service(ctx) -> Service:
    """The plugin secrets (SAMFLEET_URL / SAMFLEET_API_KEY, which FiftyOne reads from the
    environment by default), or the form's URL.  The secret key goes to the secret URL only: any
    user of a shared App could otherwise have the team's key sent to a server of their choosing.
    Another URL is called without a key ("" also stops the SDK reading SAMFLEET_API_KEY itself)."""
    secret_url, typed_url = ctx.secret("SAMFLEET_URL"), ctx.params.get("url")
    if typed_url and typed_url.rstrip("/") != (secret_url or "").rstrip("/"):
        return Service(url=typed_url, api_key="")
    return Service(url=secret_url, api_key=ctx.secret("SAMFLEET_API_KEY"))


def detections_fields(ctx) -> list[str]:
    """Detections fields, frame-level ones (where video labels go) as `frames.<name>`."""
    if not ctx.dataset:
        return []
    fields = list(ctx.dataset.get_field_schema(embedded_doc_type=fo.Detections))
    if ctx.dataset.media_type == fom.VIDEO:
        fields += [labels_path(name) for name in ctx.dataset.get_frame_field_schema(embedded_doc_type=fo.Detections)]
    return sorted(fields)


def label_field_input(inputs: types.Object, ctx, default: str = DEFAULT_FIELD) -> None:
    fields = detections_fields(ctx)
    if fields:
        # In a video dataset "segment with SAM3" writes `default` on the frames.
        chosen = next((f for f in (default, labels_path(default)) if f in fields), fields[0])
        inputs.enum("label_field", fields, default=chosen, label="Label field", view=types.AutocompleteView())
    else:
        inputs.str("label_field", default=default, label="Label field")


def reload_app(ctx) -> None:
    if not ctx.delegated and ctx.executor is not None:
        ctx.trigger("reload_dataset")


def segment_run(params: dict) -> SegmentRun:
    """The form's values as a run; bad input raises here, before any request."""
    return SegmentRun(
        prompts=split_list(params.get("prompts")),
        negative_prompts=split_list(params.get("negative_prompts")),
        label_field=params.get("label_field") or DEFAULT_FIELD,
        threshold=params.get("threshold", 0.5),
        overwrite=params.get("overwrite", False),
        concurrency=params.get("concurrency", 8),
        upload=params.get("upload", "reduced"),
        chunk_size=params.get("chunk_size", 64),
        video_attempts=params.get("video_attempts", DEFAULT_VIDEO_ATTEMPTS),
        mask_dir=Path(params["mask_dir"]) if params.get("mask_dir") else None,
    )


def progress_update(done: int, failed: int, total: int) -> dict:
    return {
        "progress": (done + failed) / max(total, 1),
        "label": f"{done} of {total} samples labelled, {failed} failed",
    }


def run_outcome(summary: RunSummary) -> dict:
    return {
        "done": summary.done,
        "skipped": summary.skipped,
        "failed": len(summary.failed),
        "errors": kept_errors(summary),
        "stopped": summary.stopped,
        "run_key": summary.run_key,
    }


class SegmentWithSam3(foo.Operator):
    """Immediate runs are generators: FiftyOne streams their progress to the App while the work
    runs in a thread (`fiftyone_plugin.background`), and closing the stream (the tab closed,
    the operation cancelled) stops the work, keeping what finished.  Their outcome is shown in
    the App and recorded with the run on the dataset (`fiftyone_plugin.runs`), the only place a
    Python caller of `execute_operator` finds it, FiftyOne returning nothing from a generator.
    Large runs are delegated (`fiftyone_plugin.delegation`)."""

    @property
    def config(self):
        return foo.OperatorConfig(
            name="segment_with_sam3",
            label="Segment with SAM3",
            description="Find every instance of each text prompt and store instance masks",
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            execute_as_generator=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.str(
            "prompts",
            required=True,
            label="Prompts",
            description="What to find, comma separated, e.g. 'bus=red bus, person': class=prompt labels what "
            "the prompt finds with the class (a bare prompt is its own class). Videos: each prompt is tracked",
        )
        inputs.str(
            "negative_prompts",
            required=False,
            label="Negative prompts",
            description="Concepts to exclude, comma separated, e.g. 'mannequin, poster': "
            "instances overlapping theirs are dropped (images only)",
        )
        inputs.float(
            "threshold",
            default=0.5,
            min=0.0,
            max=1.0,
            label="Score threshold",
            description="Images only: video tracking uses the model's own detection thresholds",
        )
        inputs.str(
            "label_field",
            default=DEFAULT_FIELD,
            label="Label field",
            description="Videos: a frame field (frames.<name>), plus <name>_frames counting the frames done",
        )
        inputs.bool(
            "overwrite",
            default=False,
            label="Overwrite existing labels",
            description="Off: samples that already have labels in this field are skipped (resumes a failed run)",
        )
        inputs.int("concurrency", default=8, min=1, label="Concurrent images (videos)")
        inputs.enum(
            "upload",
            ["reduced", "original"],
            default="reduced",
            label="Upload",
            description="reduced: photos larger than the model's input go reduced to it (labels are still at the "
            "photo's size); original: the files as they are",
            view=types.RadioGroup(),
        )
        inputs.int(
            "chunk_size",
            default=64,
            min=1,
            label="Save every N samples",
            description="A failed run keeps every chunk saved before it",
        )
        inputs.int(
            "video_attempts",
            default=DEFAULT_VIDEO_ATTEMPTS,
            min=1,
            label="Attempts per video",
            description="Videos: a stream that breaks (model replica or connection lost) has the video tracked "
            "again from its first frame, up to this many tries in all",
        )
        inputs.str(
            "mask_dir",
            required=False,
            label="Mask folder (optional)",
            description="Store masks as PNG files here (mask_path) instead of in the database",
        )
        inputs.str(
            "url",
            required=False,
            label="Service URL",
            description="Default: the SAMFLEET_URL plugin secret. Another URL is called without the "
            "SAMFLEET_API_KEY secret (which goes to SAMFLEET_URL only)",
        )
        inputs.int(
            "delegate_above",
            default=DELEGATE_ABOVE,
            min=0,
            label="Run in the background above (images)",
            description=f"Larger runs go to a delegated executor (`fiftyone delegated launch`); a video counts "
            f"{IMAGES_PER_VIDEO} images. An immediate run ends with this browser tab",
        )
        # resolve_delegation's ctx.target_view() also opts the form into FiftyOne's dataset / view /
        # selected samples choice.
        if self.resolve_delegation(ctx):
            inputs.view(
                "delegated",
                types.Notice(
                    label=f"{len(ctx.target_view())} samples: this run will be queued for a delegated executor "
                    "(`fiftyone delegated launch`); progress shows in the Runs list"
                ),
            )
        return types.Property(inputs, view=types.View(label="Segment with SAM3"))

    def resolve_delegation(self, ctx):
        """Delegate a target view above `delegate_above` images (fiftyone_plugin.delegation says
        why); below it, leave the choice to the user."""
        limit = ctx.params.get("delegate_above")
        return too_large_for_the_app(ctx.target_view(), DELEGATE_ABOVE if limit is None else limit) or None

    def execute(self, ctx):
        run, view, where = segment_run(ctx.params), ctx.target_view(), service(ctx)
        if ctx.delegated:
            # The executor has a progress channel of its own and keeps this result with the operation.
            def progress(*report: int) -> None:
                ctx.set_progress(**progress_update(*report))

            return run_outcome(segment_collection(view, run, where, progress))
        return self._streamed(ctx, view, run, where)

    def _streamed(self, ctx, view, run: SegmentRun, where: Service):
        def work(progress, stop) -> RunSummary:
            return segment_collection(view, run, where, progress, stop)

        with Background(work, name="samfleet-run") as running:
            for report in running.reports():
                yield ctx.ops.set_progress(**progress_update(*report))
        outcome = run_outcome(running.result())
        yield ctx.ops.reload_dataset()
        yield ctx.ops.show_output(self.resolve_output(ctx).to_json(), outcome)

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("done", label="Labelled")
        outputs.int("skipped", label="Skipped (already labelled)")
        outputs.int("failed", label="Failed")
        outputs.obj("errors", label="Failures (sample id: reason)", view=types.JSONView())
        outputs.bool("stopped", label="Stopped before the end")
        outputs.str("run_key", label="Run (dataset.get_run_info)")
        return types.Property(outputs, view=types.View(label="SAM3 results"))


class RefineWithPoints(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="refine_with_points",
            label="Refine with SAM3 points",
            description="Segment one object per keypoint annotation, its points being the clicks",
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        if ctx.dataset and ctx.dataset.media_type == fom.VIDEO:
            inputs.view("video", types.Warning(label=REFINE_IMAGES_ONLY))
        schema = ctx.dataset.get_field_schema(embedded_doc_type=fo.Keypoints) if ctx.dataset else {}
        inputs.enum("keypoints_field", sorted(schema), required=True, label="Keypoints field (the clicks)")
        label_field_input(inputs, ctx)
        ctx.target_view()
        return types.Property(inputs, view=types.View(label="Refine with SAM3 points"))

    def execute(self, ctx):
        count = refine_with_keypoints(
            ctx.target_view(),
            ctx.params["keypoints_field"],
            ctx.params.get("label_field") or DEFAULT_FIELD,
            service(ctx),
        )
        reload_app(ctx)
        return {"objects": count}


def selected_labels(ctx) -> list[dict]:
    """The labels selected in the App, and in a patches view those of the selected patches."""
    return ctx.selected_labels + curation.patch_labels(ctx.view, ctx.selected)


class TagSam3Labels(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="tag_sam3_labels",
            label="Accept or reject selected labels",
            description="Tag the labels (or, in the review patches, the patches) selected in the App "
            "as accepted or rejected",
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        selected = selected_labels(ctx)
        if not selected:
            inputs.view("none", types.Warning(label="Select labels, or patches in the review view, first"))
        inputs.enum(
            "decision",
            ["accept", "reject", "clear"],
            default="accept",
            view=types.RadioGroup(),
            label=f"{len(selected)} selected label(s)",
        )
        return types.Property(inputs)

    def execute(self, ctx):
        count = curation.decide(ctx.dataset, selected_labels(ctx), ctx.params.get("decision", "accept"))
        reload_app(ctx)
        return {"tagged": count}


class ReviewSam3Labels(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="review_sam3_labels",
            label="Review SAM3 labels",
            description="Open the labels to review as patches, lowest score first; counts per prompt",
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        label_field_input(inputs, ctx)
        inputs.float(
            "max_score", default=1.0, min=0.0, max=1.0, label="Labels scoring at most", description="1: all of them"
        )
        inputs.bool(
            "undecided_only", default=True, label="Only labels not yet accepted or rejected", view=types.CheckboxView()
        )
        return types.Property(inputs, view=types.View(label="Review SAM3 labels"))

    def execute(self, ctx):
        field = ctx.params.get("label_field") or DEFAULT_FIELD
        max_score, undecided_only = ctx.params.get("max_score", 1.0), ctx.params.get("undecided_only", True)
        if ctx.executor is not None:
            ctx.ops.set_view(view=curation.review_view(ctx.dataset, field, max_score, undecided_only))
        per_prompt = curation.counts_per_prompt(ctx.dataset, field, max_score, undecided_only)
        return {"to_review": sum(c["to_review"] for c in per_prompt.values()), "per_prompt": per_prompt}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("to_review", label="Labels to review")
        outputs.obj("per_prompt", label="Instances per prompt", view=types.JSONView())
        return types.Property(outputs)


class ExportSam3Labels(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="export_sam3_labels",
            label="Export SAM3 labels",
            description="COCO instance segmentation and/or PNG masks, rejected labels left out",
            allow_delegated_execution=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        label_field_input(inputs, ctx)
        inputs.str("export_dir", required=True, label="Export folder")
        inputs.enum("format", [*EXPORT_FORMATS], default="both", label="Format", view=types.RadioGroup())
        ctx.target_view()
        return types.Property(inputs, view=types.View(label="Export SAM3 labels"))

    def execute(self, ctx):
        return curation.export_labels(
            ctx.target_view(),
            ctx.params.get("label_field") or DEFAULT_FIELD,
            ctx.params["export_dir"],
            EXPORT_FORMATS[ctx.params.get("format", "both")],
        )


OPERATORS = (SegmentWithSam3, RefineWithPoints, TagSam3Labels, ReviewSam3Labels, ExportSam3Labels)
