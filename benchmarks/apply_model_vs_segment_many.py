"""Images/s of `dataset.apply_model` with the samfleet FiftyOne model vs. `Client.segment_many`.

    python benchmarks/apply_model_vs_segment_many.py [--images 500] [--concurrency 8]
                                                     [--instances 20] [--forward-ms 30]

Writes the images once (640x480 JPEGs, each different), starts samfleet in this process with
the SAM3 output double (serving/output_double.py: `--instances` SAM3-shaped instances per image,
`--forward-ms` per forward pass) and, unless FIFTYONE_DATABASE_URI is set, a private mongod on
loopback.  Then the same images, prompt and requests in flight through: `segment_many` (results
only), `apply_model(model, batch_size=concurrency)` (FiftyOne reads each image, the model sends
its file, labels built and saved by FiftyOne), and the plugin's operator path
(`segment_collection`, the same requests, labels saved in chunks) for reference.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from common import free_port, running_service

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import fiftyone_env  # noqa: E402  (the tests' mongod helper: one way to start it)


def write_images(folder: Path, count: int) -> list[str]:
    rng = np.random.default_rng(0)
    gradient = np.linspace(0, 200, 640, dtype=np.float32)[None, :, None]
    paths = []
    for i in range(count):
        pixels = gradient + rng.normal(0, 20, (480, 640, 3))
        path = folder / f"img{i:04d}.jpg"
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--instances", type=int, default=20, help="instances the double answers per image")
    parser.add_argument("--forward-ms", type=float, default=30.0, help="the double's time per forward pass")
    args = parser.parse_args()
    state, port = Path(tempfile.mkdtemp(prefix="samfleet-bench-")), free_port()
    mongod = fiftyone_env.start_mongod(state / "db", port) if fiftyone_env.configure(state, port) else None
    import fiftyone as fo

    from fiftyone_plugin.model import SamfleetModel
    from fiftyone_plugin.segment import SegmentRun, Service, segment_collection
    from sdk import Client
    from serving.output_double import build_output_double

    (state / "images").mkdir()
    paths = write_images(state / "images", args.images)
    prompt = f"{args.instances} things"
    double = str(build_output_double(state / "double", args.forward_ms))
    seconds = {}
    try:
        with running_service(double) as url:
            with Client(url) as client:
                list(client.segment_many(paths[:16], prompt, progress=False))  # warm up
                started = time.perf_counter()
                items = list(client.segment_many(paths, prompt, concurrency=args.concurrency, progress=False))
                seconds["Client.segment_many"] = time.perf_counter() - started
            assert all(item.ok for item in items), next(item.error for item in items if not item.ok)

            ds = fo.Dataset(overwrite=True)
            ds.add_samples([fo.Sample(filepath=p) for p in paths])
            started = time.perf_counter()
            ds.apply_model(SamfleetModel.of(url=url, classes=[prompt]), "sam3", batch_size=args.concurrency,
                           progress=False)
            seconds["apply_model (samfleet model)"] = time.perf_counter() - started
            assert ds.count("sam3") == args.images, ds.count("sam3")

            run = SegmentRun(prompts=[prompt], label_field="operator", concurrency=args.concurrency)
            started = time.perf_counter()
            summary = segment_collection(ds, run, Service(url))
            seconds["operator path (segment_collection)"] = time.perf_counter() - started
            assert summary.done == args.images, summary
    finally:
        if mongod is not None:
            fiftyone_env.stop(mongod)
    print(f"{args.images} images 640x480 JPEG, {args.concurrency} in flight, SAM3 output double "
          f"({args.forward_ms:g} ms per batch, {args.instances} instances per image)")
    baseline = seconds["Client.segment_many"]
    print(f"{'':38}{'seconds':>9}{'img/s':>9}{'vs segment_many':>17}")
    for name, s in seconds.items():
        print(f"{name:38}{s:9.2f}{args.images / s:9.2f}{baseline / s:17.2f}")


if __name__ == "__main__":
    main()
