"""Time to annotate N images through the FiftyOne operator vs. `Client.segment_many` directly.

    python benchmarks/plugin_vs_sdk.py [--model DIR_OR_ID] [--images 500] [--concurrency 8]

Starts samfleet in this process (embedded Ray) and, unless FIFTYONE_DATABASE_URI is set, a
private mongod on loopback (`.ci/fetch-mongod` puts one in .cache/).  Both paths send the same
images with the same prompt and concurrency; the operator also builds the FiftyOne labels and
writes them to the database.  Defaults to the tiny random model on CPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from common import SAMPLES, free_port, model_or_tiny, running_service

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import fiftyone_env  # noqa: E402  (the tests' mongod helper: one way to start it)

PROMPT = "cat"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    state, port = Path(tempfile.mkdtemp(prefix="samfleet-bench-")), free_port()
    mongod = fiftyone_env.start_mongod(state / "db", port) if fiftyone_env.configure(state, port) else None
    (state / "plugins").mkdir(parents=True)
    (state / "plugins" / "samfleet").symlink_to(Path(__file__).resolve().parents[1] / "fiftyone_plugin")
    import fiftyone as fo
    import fiftyone.operators as foo

    from fiftyone_plugin.operators import SegmentWithSam3
    from sdk import Client

    model = model_or_tiny(args.model)
    paths = [str(SAMPLES[i % len(SAMPLES)]) for i in range(args.images)]
    try:
        with running_service(model) as url:
            with Client(url) as client:
                list(client.segment_many(paths[: len(SAMPLES)], PROMPT, progress=False))  # warm up
                started = time.perf_counter()
                items = list(client.segment_many(paths, PROMPT, concurrency=args.concurrency, progress=False))
                sdk_s = time.perf_counter() - started
            assert all(item.ok for item in items)

            ds = fo.Dataset(overwrite=True)
            ds.add_samples([fo.Sample(filepath=p) for p in paths])
            uri = f"@samfleet/sam3/{SegmentWithSam3().config.name}"
            started = time.perf_counter()
            execution = foo.execute_operator(uri, dataset=ds, params={
                "prompts": PROMPT, "url": url, "concurrency": args.concurrency})
            result = execution.result
            operator_s = time.perf_counter() - started
            assert result and result.get("done") == args.images, (execution.error, result)
    finally:
        if mongod is not None:
            fiftyone_env.stop(mongod)
    print(f"model: {model}   images: {args.images}   concurrency: {args.concurrency}   prompt: {PROMPT!r}")
    print(f"{'':28}{'seconds':>9}{'img/s':>9}{'vs SDK':>9}")
    print(f"{'sdk segment_many':28}{sdk_s:9.2f}{args.images / sdk_s:9.2f}{'1.00':>9}")
    print(f"{'FiftyOne operator':28}{operator_s:9.2f}{args.images / operator_s:9.2f}{sdk_s / operator_s:9.2f}")


if __name__ == "__main__":
    main()
