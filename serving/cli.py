"""The service's `samfleet` commands (serve, demo, make-tiny-model, make-output-double, render-config),
added to the CLI in sdk.cli.

Only the standard library is imported here at module level, so a laptop with the SDK alone can
build the parser; the commands import the service when they run."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

from serving.tiny_model import TINY_MODEL_NOTICE, build_tiny_model, is_current_tiny_model, is_tiny_model

DEFAULT_TINY_DIR = Path(".cache/tiny-sam3")


def add_service_commands(sub) -> None:
    """Add serve, demo and make-tiny-model to the `samfleet` parser (sdk.cli)."""
    serve = sub.add_parser("serve", help="run the service until interrupted")
    _service_options(serve)
    serve.add_argument("--address", help="deploy onto this existing Ray cluster instead of an embedded local one")
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser("demo", help="start the service, annotate the sample images, stop")
    _service_options(demo)
    demo.add_argument("--images", type=Path, default=Path("examples/images"))
    demo.add_argument("--prompt", default="cat")
    demo.add_argument("--threshold", type=float, default=0.5, help="minimum instance score")
    demo.add_argument("--out", type=Path, default=Path("out/demo"))
    demo.set_defaults(func=cmd_demo)

    render = sub.add_parser(
        "render-config", help="write the Serve config with overrides, for `serve deploy` or KubeRay's serveConfigV2"
    )
    _config_options(render)
    render.add_argument("--out", type=Path, help="write here instead of stdout")
    render.set_defaults(func=cmd_render_config)

    key = sub.add_parser("new-api-key", help="make an API key and the hash to list under args.auth.api_key_hashes")
    key.set_defaults(func=cmd_new_api_key)

    tiny = sub.add_parser("make-tiny-model", help="write a tiny random SAM3 checkpoint (meaningless masks)")
    tiny.add_argument("dir", type=Path)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=cmd_make_tiny_model)

    double = sub.add_parser(
        "make-output-double",
        help="write a model folder for the benchmarks' SAM3 output "
        "double (no model: synthetic instances after a simulated forward pass)",
    )
    double.add_argument("dir", type=Path)
    double.add_argument("--forward-ms", type=float, default=30.0, help="simulated GPU time per batch")
    double.add_argument("--frame-ms", type=float, default=45.0, help="simulated GPU time per video frame")
    double.set_defaults(func=cmd_make_output_double)


def cmd_new_api_key(args) -> int:
    from serving.auth import new_key

    key, digest = new_key()
    print(f"key (give it to the caller; it is not stored anywhere): {key}")
    print(f"hash (add to args.auth.api_key_hashes in the Serve config): {digest}")
    return 0


def cmd_make_tiny_model(args) -> int:
    print(f"wrote {build_tiny_model(args.dir, args.seed)}: {TINY_MODEL_NOTICE}")
    return 0


def cmd_make_output_double(args) -> int:
    from serving.output_double import NOTICE, build_output_double

    print(f"wrote {build_output_double(args.dir, args.forward_ms, args.frame_ms)}: {NOTICE}")
    return 0


def cmd_render_config(args) -> int:
    import yaml

    from serving import runner

    config = _config(runner.load_config, args, args.model)
    text = RENDERED_HEADER + yaml.safe_dump(config, sort_keys=False)
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


RENDERED_HEADER = (
    "# Written by `samfleet render-config` from samfleet's Serve config; the reasons for each\n"
    "# value are in serving/serve_config.yaml and the README.\n"
)


def _config(load, args, model: str | None):
    """`load` (runner.load_config or load_settings) with the command line's overrides; a bad
    config file ends the command with its message instead of a traceback."""
    from serving import runner

    try:
        return load(args.config, model=model, device=args.device, host=args.host, port=args.port)
    except runner.ConfigError as exc:
        raise SystemExit(f"samfleet {args.command}: {exc}") from None


def _config_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="Serve config YAML (default: the packaged serve_config.yaml)")
    p.add_argument("--model", help="model id or local folder (default: the config's; demo: the tiny model)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--host")
    p.add_argument("--port", type=int)


def _service_options(p: argparse.ArgumentParser) -> None:
    _config_options(p)


def _start(args, model: str | None) -> str:
    from serving import runner

    settings = _config(runner.load_settings, args, model)
    if is_tiny_model(settings.args.get("model", "")):
        print(f"NOTE: {TINY_MODEL_NOTICE}", flush=True)
    started = time.monotonic()
    for note in runner.start(settings, address=getattr(args, "address", None)):
        print(f"NOTE: {note}", flush=True)
    print(
        f"samfleet is serving {settings.args['model']} at {settings.url} "
        f"(ready in {time.monotonic() - started:.1f} s; API docs at {settings.url}/docs)",
        flush=True,
    )
    return settings.url


def cmd_serve(args) -> int:
    from serving import runner

    _start(args, args.model)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    try:
        while not stop:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    print("stopping samfleet", flush=True)
    runner.stop(shutdown_ray=not args.address)
    return 0


def cmd_demo(args) -> int:
    from sdk import Client
    from sdk.annotate import find_images
    from sdk.coco import CocoBuilder
    from serving import runner

    model = args.model
    if model is None:
        model = str(DEFAULT_TINY_DIR)
        if not is_current_tiny_model(model):
            build_tiny_model(model)
    images = [path for _, path in find_images(args.images)]
    if not images:
        print(f"no images in {args.images}", file=sys.stderr)
        return 1
    url = _start(args, model)
    caption = "tiny random SAM3: masks are meaningless" if is_tiny_model(model) else None
    args.out.mkdir(parents=True, exist_ok=True)
    coco = CocoBuilder()
    try:
        with Client(url) as client:
            for path in images:
                text = client.segment(path, prompt=args.prompt, threshold=args.threshold)
                text.overlay(caption=caption).save(args.out / f"{path.stem}_text.png")
                coco.add(path.name, text)
                centre = [[text.width / 2, text.height / 2]]
                clicked = client.segment_points(path, centre)
                clicked.overlay(caption=caption).save(args.out / f"{path.stem}_point.png")
                coco.add(path.name, clicked)
                print(
                    f"{path.name}: {len(text.instances)} instance(s) of {args.prompt!r}, "
                    f"point mask score {clicked.instances[0].score:.2f}",
                    flush=True,
                )
    finally:
        runner.stop()
    (args.out / "annotations.coco.json").write_text(json.dumps(coco.to_dict()))
    print(f"wrote overlays and annotations.coco.json to {args.out}/")
    if caption:
        print(f"NOTE: {TINY_MODEL_NOTICE}")
    return 0
