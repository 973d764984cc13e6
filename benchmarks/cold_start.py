"""Cold start of a SAM3 replica from a node-local copy of the weights (one run, ratios).

    python benchmarks/cold_start.py [--full-dir .cache/sam3-full-random] [--device cpu] [--drop-caches]

A new replica on a node that already holds the weights (the cluster's weights cache, see
README "Operating on a cluster") pays: process start + imports + `from_pretrained` from local
disk.  This measures, for the tiny model and for the FULL-SIZE SAM3 architecture with random
weights (same files sizes and tensors as facebook/sam3, built here once; masks meaningless):

  - load:  `serving.model_loader.load_sam3` in this process (detector + tracker + processors);
  - serve: `runner.start` of the whole service on an embedded Ray until /healthz answers
           (Ray start, Ingress and SAM3Model replicas constructed).

Downloading the 3.4 GB checkpoint cannot be measured here (no network); at 100-500 MB/s from
a hub or object store it adds 7-35 s per node, which is what the cache saves on every scale-up.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import REPO, free_port, model_or_tiny


def drop_page_cache() -> None:
    """Make the next read come from the disk, as on a node that just booted (needs root)."""
    import os

    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("1\n")


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def load_seconds(model: str, device: str) -> float:
    import gc

    from serving.config import ServiceConfig
    from serving.model_loader import load_sam3

    loaded = []
    seconds = timed(lambda: loaded.append(load_sam3(ServiceConfig(model=model, device=device))))
    del loaded
    gc.collect()
    return seconds


def serve_seconds(model: str, device: str) -> float:
    from serving import runner

    settings = runner.load_settings(model=model, device=device, port=free_port())
    try:
        return timed(lambda: runner.start(settings))
    finally:
        runner.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full-dir", type=Path, default=REPO / ".cache/sam3-full-random")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--drop-caches", action="store_true",
                   help="drop the OS page cache before each measurement (root): disk reads, not memory")
    args = p.parse_args()

    from serving.tiny_model import FULL_SIZE_NOTICE, build_random_model, is_tiny_model

    if not is_tiny_model(args.full_dir):
        print(f"building {args.full_dir} once: {FULL_SIZE_NOTICE}", flush=True)
        print(f"  built in {timed(lambda: build_random_model(args.full_dir, full_size=True)):.1f} s", flush=True)
    checkpoint_gb = sum(f.stat().st_size for f in args.full_dir.iterdir()) / 1e9
    tiny = model_or_tiny(None)
    rows = []
    for name, model in (("tiny", tiny), ("full-size", str(args.full_dir))):
        if args.drop_caches:
            drop_page_cache()
        load = load_seconds(model, args.device)
        if args.drop_caches:
            drop_page_cache()
        serve = serve_seconds(model, args.device)
        rows.append((name, load, serve))
        print(f"{name:>9}: load_sam3 {load:6.1f} s | service start to healthy {serve:6.1f} s", flush=True)
    (_, tiny_load, tiny_serve), (_, full_load, full_serve) = rows
    cache = "dropped before each measurement" if args.drop_caches else "warm: the files were just written or read"
    print(f"full-size checkpoint: {checkpoint_gb:.2f} GB on local disk (page cache {cache})")
    print(f"full-size / tiny: load x{full_load / tiny_load:.1f}, service start x{full_serve / tiny_serve:.1f}; "
          f"weights load is {full_load / full_serve:.0%} of the full-size service start")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
