"""The plugin's operators: forms (resolve_input) and glue from the App or the delegated executor
to `segment` and `curation`, which hold the work."""

from __future__ import annotations

from pathlib import Path

import fiftyone as fo
import fiftyone.core.media as fom
import fiftyone.operators as foo
import fiftyone.operators.types as types

from fiftyone_plugin import curation
from fiftyone_plugin.segment import REFINE_IMAGES_ONLY, SegmentRun, Service, refine_with_keypoints, segment_collection
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


def prompts_of(text: str | None) -> list[str]:
    """Prompts are typed as "car, bus, person": a comma-separated string is what an annotator
    enters fastest in the App, and a prompt is a noun phrase, which needs no comma."""
    return [p.strip() for p in (text or "").split(",") if p.strip()]


def detections_fields(ctx) -> list[str]:
    """Detections fields, frame-level ones (where video labels go) as `frames.<name>`."""
    if not ctx.dataset:
        return []
    fields = list(ctx.dataset.get_field_schema(embedded_doc_type=fo.Detections))
    if ctx.dataset.media_type == fom.VIDEO:
        fields += [f"frames.{name}" for name in ctx.dataset.get_frame_field_schema(embedded_doc_type=fo.Detections)]
    return sorted(fields)


def label_field_input(inputs: types.Object, ctx, default: str | None = DEFAULT_FIELD) -> None:
    fields = detections_fields(ctx)
    if fields:
        # In a video dataset "segment with SAM3" writes `default` on the frames.
        chosen = next((f for f in (default, f"frames.{default}") if f in fields), fields[0])
        inputs.enum("label_field", fields, default=chosen, label="Label field", view=types.AutocompleteView())
    else:
        inputs.str("label_field", default=default, label="Label field")


def reload_app(ctx) -> None:
    if not ctx.delegated and ctx.executor is not None:
        ctx.trigger("reload_dataset")


class SegmentWithSam3(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="segment_with_sam3",
            label="Segment with SAM3",
            description="Find every instance of each text prompt and store instance masks",
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.str(
            "prompts",
            required=True,
            label="Prompts",
            description="What to find, comma separated: one label per prompt, e.g. 'red bus, person'. "
            "Videos: each prompt is tracked through the video",
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
        ctx.target_view()  # opts the form into FiftyOne's dataset / view / selected samples choice
        return types.Property(inputs, view=types.View(label="Segment with SAM3"))

    def execute(self, ctx):
        run = SegmentRun(
            prompts=prompts_of(ctx.params.get("prompts")),
            negative_prompts=prompts_of(ctx.params.get("negative_prompts")),
            label_field=ctx.params.get("label_field") or DEFAULT_FIELD,
            threshold=ctx.params.get("threshold", 0.5),
            overwrite=ctx.params.get("overwrite", False),
            concurrency=ctx.params.get("concurrency", 8),
            upload=ctx.params.get("upload", "reduced"),
            chunk_size=ctx.params.get("chunk_size", 64),
            video_attempts=ctx.params.get("video_attempts", DEFAULT_VIDEO_ATTEMPTS),
            mask_dir=Path(ctx.params["mask_dir"]) if ctx.params.get("mask_dir") else None,
        )

        def progress(done: int, failed: int, total: int) -> None:
            ctx.set_progress(
                progress=(done + failed) / max(total, 1), label=f"{done} of {total} samples labelled, {failed} failed"
            )

        summary = segment_collection(ctx.target_view(), run, service(ctx), progress)
        reload_app(ctx)
        return {
            "done": summary.done,
            "skipped": summary.skipped,
            "failed": len(summary.failed),
            "errors": dict(list(summary.failed.items())[:20]),
        }

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("done", label="Labelled")
        outputs.int("skipped", label="Skipped (already labelled)")
        outputs.int("failed", label="Failed")
        outputs.obj("errors", label="Failures (sample id: reason)", view=types.JSONView())
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


class TagSam3Labels(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="tag_sam3_labels",
            label="Accept or reject selected labels",
            description="Tag the labels selected in the App as accepted or rejected",
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        if not ctx.selected_labels:
            inputs.view("none", types.Warning(label="Select labels in the App first"))
        inputs.enum(
            "decision",
            ["accept", "reject", "clear"],
            default="accept",
            view=types.RadioGroup(),
            label=f"{len(ctx.selected_labels)} selected label(s)",
        )
        return types.Property(inputs)

    def execute(self, ctx):
        count = curation.decide(ctx.dataset, ctx.selected_labels, ctx.params.get("decision", "accept"))
        reload_app(ctx)
        return {"tagged": count}


class ReviewSam3Labels(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="review_sam3_labels",
            label="Review SAM3 labels",
            description="Save and open the 'needs review' view; counts per prompt",
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        label_field_input(inputs, ctx)
        inputs.float("min_score", default=0.5, min=0.0, max=1.0, label="Needs review below this score")
        return types.Property(inputs, view=types.View(label="Review SAM3 labels"))

    def execute(self, ctx):
        field, min_score = ctx.params.get("label_field") or DEFAULT_FIELD, ctx.params.get("min_score", 0.5)
        view = curation.save_needs_review(ctx.dataset, field, min_score)
        if ctx.executor is not None:
            ctx.ops.set_view(name=curation.NEEDS_REVIEW_VIEW)
        return {
            "needs_review_samples": len(view),
            "saved_view": curation.NEEDS_REVIEW_VIEW,
            "per_prompt": curation.counts_per_prompt(ctx.dataset, field, min_score),
        }

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("needs_review_samples", label="Samples needing review")
        outputs.str("saved_view", label="Saved view")
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
