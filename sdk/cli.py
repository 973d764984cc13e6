"""`samfleet` command line.  `annotate` needs only the SDK (a laptop install); `serve`, `demo` and
`make-tiny-model` come from `serving` and need the `[serve]` extra; `install-plugin` needs the
`[fiftyone]` extra."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import signal
import sys
import time
from pathlib import Path

from sdk.annotate import AnnotationRequest, FolderAnnotator
from sdk.client import AsyncClient, Client
from sdk.errors import ConnectionError, SamfleetError
from sdk.manifest import ManifestMismatch, OutputBusy
from sdk.video import DEFAULT_VIDEO_ATTEMPTS, track_with_retries, write_frames

EXTRA_OF_MODULE = {
    **dict.fromkeys(("torch", "ray", "transformers", "yaml", "safetensors", "fastapi"), "serve"),
    "fiftyone": "fiftyone",
}
EXTRA_HINT = "this command needs the [{extra}] extra: pip install 'samfleet[{extra}]' (missing module: {module})"
PLUGIN_LINK_NAME = "samfleet"


def main(argv: list[str] | None = None) -> int:
    from serving.cli import add_service_commands  # stdlib-only at import: fine on a laptop

    parser = argparse.ArgumentParser(prog="samfleet", description="SAM3 annotation service and client")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_annotate(sub)
    _add_track(sub)
    _add_status(sub)
    _add_install_plugin(sub)
    add_service_commands(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ModuleNotFoundError as exc:
        extra = EXTRA_OF_MODULE.get((exc.name or "").split(".")[0])
        if extra:
            print(EXTRA_HINT.format(extra=extra, module=exc.name), file=sys.stderr)
            return 2
        raise


def _numbers(count: int, what: str):
    def parse(text: str) -> list[float]:
        try:
            values = [float(v) for v in text.split(",")]
        except ValueError:
            values = []
        if len(values) != count:
            raise argparse.ArgumentTypeError(f"{what} must be {count} comma-separated numbers, got {text!r}")
        return values

    return parse


def _service_options(p) -> None:
    p.add_argument("--url", help="service URL (default: $SAMFLEET_URL or http://127.0.0.1:8000)")
    p.add_argument("--api-key", help="API key (default: $SAMFLEET_API_KEY)")


def _add_install_plugin(sub) -> None:
    p = sub.add_parser(
        "install-plugin",
        help="make the FiftyOne plugin (@samfleet/sam3) visible to FiftyOne",
        description="Link the installed fiftyone_plugin folder into FiftyOne's plugins directory.",
    )
    p.add_argument("--plugins-dir", type=Path, help="default: FiftyOne's plugins_dir (FIFTYONE_PLUGINS_DIR)")
    p.set_defaults(func=cmd_install_plugin)


def cmd_install_plugin(args) -> int:
    # find_spec locates the package without running its __init__ (which imports fiftyone).
    spec = importlib.util.find_spec("fiftyone_plugin")
    if spec is None or spec.origin is None:  # it ships with the SDK: only a broken install lacks it
        print("error: the fiftyone_plugin package is not installed", file=sys.stderr)
        return 2
    source = Path(spec.origin).parent
    plugins_dir = args.plugins_dir
    if plugins_dir is None:
        import fiftyone as fo

        plugins_dir = Path(fo.config.plugins_dir)
    link = plugins_dir / PLUGIN_LINK_NAME
    if link.is_symlink() and link.resolve() == source.resolve():
        print(f"{link} already points to {source}")
        return 0
    if link.exists() or link.is_symlink():
        print(f"error: {link} exists and is not a link to {source}; remove it first", file=sys.stderr)
        return 2
    plugins_dir.mkdir(parents=True, exist_ok=True)
    link.symlink_to(source, target_is_directory=True)
    print(f"linked {link} -> {source}\nFiftyOne now has the plugin @samfleet/sam3 (see `fiftyone plugins list`)")
    return 0


def _add_status(sub) -> None:
    p = sub.add_parser("status", help="replicas, requests in the system and throughput of a running service")
    _service_options(p)
    p.add_argument("--watch", type=float, metavar="SECONDS", help="refresh every SECONDS until interrupted")
    p.add_argument("--json", action="store_true", help="print the raw /v1/status JSON")
    p.set_defaults(func=cmd_status)


# The service needs two metric samples for a rate; it takes them `status.sample_interval_s` apart.
FIRST_RATE_WAIT_S = 6.0


def cmd_status(args) -> int:
    with Client(args.url, api_key=args.api_key) as client:
        try:
            status = client.status()
            if status.throughput is None and not args.json:
                time.sleep(FIRST_RATE_WAIT_S)
                status = client.status()
            while True:
                print(
                    status.model_dump_json(indent=2) if args.json else _status_table(client.settings.url, status),
                    flush=True,
                )
                if not args.watch:
                    return 0
                time.sleep(args.watch)
                status = client.status()
        except SamfleetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 0


def _status_table(url: str, status) -> str:
    def number(value):
        return "-" if value is None else f"{value:g}"

    rows = [("deployment", "status", "running", "other replicas", "in system", "waiting")]
    for d in status.deployments:
        others = ", ".join(
            f"{n} {state.lower()}" for state, n in sorted(d.replicas.items()) if state != "RUNNING" and n
        )
        rows.append(
            (d.name, d.status, str(d.replicas.get("RUNNING", 0)), others or "-", number(d.in_system), number(d.waiting))
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"samfleet at {url} (application {status.application!r})"]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    rate = status.throughput
    if rate is None:
        lines.append("throughput: not measured yet (ask again in a few seconds)")
    else:
        batch = f", {rate.mean_batch_size:.1f} requests per forward pass" if rate.mean_batch_size else ""
        lines.append(f"throughput: {rate.images_per_s:.2f} images/s over the last {rate.window_s:.0f} s{batch}")
    return "\n".join(lines)


def _add_annotate(sub) -> None:
    p = sub.add_parser(
        "annotate",
        help="annotate a folder of images (resumable; --watch for new ones)",
        description="Annotate every image under SRC and write masks/COCO to --out. "
        "A re-run with the same --out skips what is finished.",
    )
    p.add_argument("src", type=Path, help="image file or folder (searched recursively)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--prompt",
        action="append",
        default=[],
        help="what to find, e.g. 'red bus' (repeatable: several concepts, each instance labelled)",
    )
    p.add_argument(
        "--negative-prompt",
        action="append",
        default=[],
        metavar="PROMPT",
        help="a concept to exclude, e.g. 'mannequin': overlapping instances are dropped (repeatable)",
    )
    box, point = _numbers(4, "a box (x1,y1,x2,y2)"), _numbers(2, "a point (x,y)")
    p.add_argument(
        "--exemplar",
        type=box,
        action="append",
        default=[],
        metavar="X1,Y1,X2,Y2",
        help="box around an example of what to find (repeatable)",
    )
    p.add_argument(
        "--negative",
        type=box,
        action="append",
        default=[],
        metavar="X1,Y1,X2,Y2",
        help="box around an example of what NOT to find (repeatable)",
    )
    p.add_argument(
        "--reference-image",
        type=Path,
        metavar="FILE",
        help="another image showing what to find, boxed with --reference-box",
    )
    p.add_argument(
        "--reference-box",
        type=box,
        action="append",
        default=[],
        metavar="X1,Y1,X2,Y2",
        help="box on --reference-image around an example of what to find (repeatable)",
    )
    p.add_argument(
        "--tile-size",
        type=int,
        metavar="PIXELS",
        help="high-resolution mode: find small objects in large images tile by tile (e.g. 1008)",
    )
    p.add_argument(
        "--tile-overlap",
        type=int,
        default=200,
        metavar="PIXELS",
        help="pixels shared by neighbouring tiles (default 200; wider than the objects)",
    )
    p.add_argument(
        "--point",
        type=point,
        action="append",
        default=[],
        metavar="X,Y",
        help="click on the object (repeatable); segments one object per image",
    )
    p.add_argument(
        "--negative-point",
        type=point,
        action="append",
        default=[],
        metavar="X,Y",
        help="click on background to exclude (repeatable)",
    )
    p.add_argument("--box", type=box, metavar="X1,Y1,X2,Y2", help="box around the one object to segment")
    p.add_argument("--threshold", type=float, default=0.5, help="minimum instance score (default 0.5)")
    p.add_argument("--format", choices=["png", "coco", "both"], default="both")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    p.add_argument(
        "--upload",
        choices=["reduced", "original"],
        default="reduced",
        help="reduced (default): photos larger than the model's input are sent reduced to it, masks and "
        "boxes still at the photo's size; original: send the files as they are (tiling and "
        "--reference-image always do)",
    )
    p.add_argument("--watch", action="store_true", help="keep annotating new images until interrupted")
    p.add_argument("--interval", type=float, default=2.0, help="--watch polling period in seconds")
    _service_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_annotate, parser=p)


def _add_track(sub) -> None:
    p = sub.add_parser(
        "track",
        help="track objects through a video (per-frame masks with stable object ids)",
        description="Send VIDEO to /v1/video/track and write each frame's result to --out as it "
        "arrives: frames.ndjson and masks/FRAME.png (pixel value = object id).",
    )
    p.add_argument("video", type=Path, help="video file (anything FFmpeg decodes: mp4, mkv, webm, ...)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--prompt", help="what to find and track, e.g. 'red bus'")
    p.add_argument(
        "--point",
        type=_numbers(2, "a point (x,y)"),
        action="append",
        default=[],
        metavar="X,Y",
        help="a click on the object to track, on frame --frame (repeatable)",
    )
    p.add_argument(
        "--negative-point",
        type=_numbers(2, "a point (x,y)"),
        action="append",
        default=[],
        metavar="X,Y",
        help="a click on what is not the object (repeatable)",
    )
    p.add_argument("--frame", type=int, default=0, help="the frame the points are on; tracking starts there")
    p.add_argument(
        "--attempts",
        type=int,
        default=DEFAULT_VIDEO_ATTEMPTS,
        help="tries in all when the stream breaks (connection lost, model replica lost): the whole video "
        f"is tracked again from its first frame and --out rewritten (default {DEFAULT_VIDEO_ATTEMPTS})",
    )
    _service_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_track, parser=p)


def cmd_track(args) -> int:
    if not args.video.is_file():
        args.parser.error(f"{args.video} is not a file")
    if args.attempts < 1:
        args.parser.error("--attempts must be at least 1")

    async def track() -> int:
        async with AsyncClient(args.url, api_key=args.api_key) as client:
            return await track_with_retries(
                client,
                lambda frames: write_frames(frames, args.out, progress=not args.no_progress),
                args.video,
                args.prompt,
                args.point + args.negative_point,
                labels=[1] * len(args.point) + [0] * len(args.negative_point),
                frame=args.frame,
                attempts=args.attempts,
                on_retry=lambda message: print(message, file=sys.stderr, flush=True),
            )

    try:
        written = asyncio.run(track())
    except SamfleetError as exc:  # after the retries' lines, which say how many attempts it took
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{written} frames tracked; results in {args.out}/")
    return 0


def _request(args) -> AnnotationRequest:
    clicks = args.point or args.negative_point or args.box
    concept = args.prompt or args.exemplar or args.negative or args.reference_box
    if bool(clicks) == bool(concept):
        args.parser.error(
            "give either --prompt/--exemplar/--negative/--reference-box (find every instance) "
            "or --point/--negative-point/--box (segment one object)"
        )
    if bool(args.reference_image) != bool(args.reference_box):
        args.parser.error("--reference-image and --reference-box go together")
    if clicks:
        return AnnotationRequest(
            "segment_points",
            {
                "points": args.point + args.negative_point,
                "labels": [1] * len(args.point) + [0] * len(args.negative_point),
                "box": args.box,
            },
        )
    # One prompt stays a string, so a run started before prompts could be repeated still resumes.
    prompt = args.prompt[0] if len(args.prompt) == 1 else args.prompt or None
    params = {"prompt": prompt, "exemplars": args.exemplar, "negative": args.negative, "threshold": args.threshold}
    # Options added later are passed only when used (the run header leaves defaults out anyway).
    if args.negative_prompt:
        params["negative_prompts"] = args.negative_prompt
    if args.reference_image:
        params.update(reference_image=str(args.reference_image.resolve()), reference_boxes=args.reference_box)
    if args.tile_size:
        params["tiling"] = {"tile_size": args.tile_size, "overlap": args.tile_overlap}
    return AnnotationRequest("segment", params)


def cmd_annotate(args) -> int:
    request = _request(args)
    if not args.src.exists():
        args.parser.error(f"{args.src} does not exist")
    # SIGTERM (e.g. from a process manager) ends the run like Ctrl-C: finished work is kept.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    interrupted = False
    with Client(args.url, api_key=args.api_key, upload=args.upload) as client:
        try:
            annotator = FolderAnnotator(
                client, args.src, args.out, request, args.format, args.concurrency, progress=not args.no_progress
            )
        except (SamfleetError, ManifestMismatch, OutputBusy, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if annotator.info.tiny_random_model:
            print(f"NOTE: {client.settings.url} serves a tiny random SAM3: its masks are MEANINGLESS", file=sys.stderr)
        try:
            annotator.run()
            if args.watch:
                print(f"watching {args.src} for new images (Ctrl-C to stop)", file=sys.stderr)
                annotator.watch(args.interval)
        except KeyboardInterrupt:
            interrupted = True
            annotator.write_coco()  # whatever finished, so --watch's output is complete when stopped
        except ConnectionError as exc:
            print(f"error: {exc}\nfinished images are kept; run the same command again to resume", file=sys.stderr)
            return 1
        finally:
            annotator.close()
    print(annotator.summary.report())
    print(f"results in {args.out}/")
    if interrupted and not args.watch:
        print("interrupted: run the same command again to finish the rest", file=sys.stderr)
        return 130
    return 1 if annotator.summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
