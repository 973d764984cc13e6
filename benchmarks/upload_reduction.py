"""Reduced uploads against original ones, from a client behind a slow uplink: bytes sent per
image, end-to-end images/s, the ingress's CPU per request and the client's CPU to reduce.

    python benchmarks/upload_reduction.py [--uplink-mbit 20] [--images 16] [--concurrency 4] [--megapixels 12]
                                          [--instances 20] [--forward-ms 30]

The service runs the SAM3 output double (serving/output_double.py: full-size SAM3's processors,
so the model's input side is 1008 as /v1/info reports it; a GPU-like pause per batch and
`--instances` synthetic instances per image) behind the real ingress.  The client is the SDK
(`segment_many`, `upload="reduced"` then `upload="original"`, same photos, same run), talking
through a loopback proxy that passes at most `--uplink-mbit` from client to service, shared by
all connections as an office uplink is (answers come back unshaped).  Masks come back at the
photo's size either way.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import tempfile
import time

from common import PHOTO_SIZES, photo, running_service

import httpx

from sdk import AsyncClient, calls
from sdk.images import upload_bytes
from serving.output_double import build_output_double

CHUNK = 64 * 1024
MODES = ("reduced", "original")
INGRESS_STAGES = ("decode", "preprocess", "postprocess", "encode")


class ShapedUplink:
    """A loopback TCP proxy to `port` carrying at most `mbit` Mbit/s from clients to the service,
    all connections sharing it, and counting those bytes."""

    def __init__(self, port: int, mbit: float):
        self.port = port
        self.bytes_per_s = mbit * 1e6 / 8
        self.uploaded = 0
        self._free_at = 0.0  # when the link has sent everything queued on it
        self._connections: set[asyncio.Task] = set()

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc) -> None:
        self._server.close()
        for connection in self._connections:  # the client's kept-alive connections end with it
            connection.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _connection(self, client_reader, client_writer) -> None:
        self._connections.add(asyncio.current_task())
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            await asyncio.gather(
                self._pipe(client_reader, upstream_writer, shaped=True), self._pipe(upstream_reader, client_writer)
            )
        finally:
            for writer in (client_writer, upstream_writer):
                writer.close()

    async def _pipe(self, reader, writer, shaped: bool = False) -> None:
        while data := await reader.read(CHUNK):
            if shaped:
                await self._send_time(len(data))
            writer.write(data)
            await writer.drain()
        writer.close()  # one side hung up: so does the other

    async def _send_time(self, size: int) -> None:
        """Wait until `size` more bytes have gone over the link, after everything queued before."""
        self.uploaded += size
        now = asyncio.get_running_loop().time()
        self._free_at = max(self._free_at, now) + size / self.bytes_per_s
        await asyncio.sleep(self._free_at - now)


def ingress_cpu_ms(url: str, image: bytes, prompt: str, reduce_to: int | None, count: int = 5) -> dict[str, float]:
    """Median CPU ms per ingress stage (its Server-Timing header) for the request the SDK sends."""
    call = calls.segment(image, prompt, reduce_to=reduce_to)
    stages: dict[str, list[float]] = {}
    with httpx.Client(base_url=url, timeout=300) as http:
        for _ in range(count):
            response = http.post(call.path, **call.kwargs)
            response.raise_for_status()
            for name, ms in re.findall(r"(\w+);dur=([\d.]+)", response.headers["server-timing"]):
                stages.setdefault(name, []).append(float(ms))
    return {name: statistics.median(stages.get(name, [0.0])) for name in INGRESS_STAGES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uplink-mbit", type=float, default=20.0)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--megapixels", type=int, default=12, choices=sorted(PHOTO_SIZES))
    parser.add_argument("--instances", type=int, default=20, help="instances the double answers per image")
    parser.add_argument("--forward-ms", type=float, default=30.0, help="the double's time per forward pass")
    args = parser.parse_args()

    original = photo(args.megapixels)
    photos = [original] * args.images
    prompt = f"{args.instances} things"
    model = str(build_output_double(tempfile.mkdtemp(), args.forward_ms))
    results = {}
    with running_service(model, replicas=1) as url:
        port = httpx.URL(url).port
        with httpx.Client(base_url=url) as http:
            side = http.get("/v1/info").json()["input_size"]
        for mode in MODES:
            reduce_to = side if mode == "reduced" else None
            started = time.process_time()
            sent = upload_bytes(original, reduce_to)
            reduce_ms = (time.process_time() - started) * 1000
            shaped = ShapedUplink(port, args.uplink_mbit)
            images_per_s = asyncio.run(run_shaped(shaped, mode, photos, prompt, args))
            results[mode] = {
                "bytes": len(sent.data),
                "uploaded_per_image": shaped.uploaded / args.images,
                "images_per_s": images_per_s,
                "client_ms": reduce_ms,
                "ingress_ms": ingress_cpu_ms(url, original, prompt, reduce_to),
            }
    report(args, original, side, results)


async def run_shaped(shaped: ShapedUplink, mode: str, photos: list[bytes], prompt: str, args) -> float:
    """Images/s of `segment_many` through `shaped` (which counts the bytes it carried)."""
    async with shaped as shaped_url, AsyncClient(shaped_url, upload=mode, timeout=600) as client:
        await client.info()  # the SDK asks once per client; not part of the timing
        uploaded_before, started = shaped.uploaded, time.perf_counter()
        items = [item async for item in client.segment_many(photos, prompt, concurrency=args.concurrency,
                                                             progress=False)]
        elapsed = time.perf_counter() - started
        shaped.uploaded -= uploaded_before
    failed = [str(item.error) for item in items if not item.ok]
    if failed:
        raise SystemExit(f"{mode}: {len(failed)} of {len(items)} images failed, e.g. {failed[0]}")
    return len(items) / elapsed


def report(args, original: bytes, side: int, results: dict) -> None:
    width, height = PHOTO_SIZES[args.megapixels]
    print(f"{args.images} photos of {width}x{height} (JPEG {len(original) / 2**20:.2f} MB), uplink "
          f"{args.uplink_mbit:g} Mbit/s, {args.concurrency} in flight, SAM3 output double ({args.forward_ms:g} ms per "
          f"batch, {args.instances} instances), model input side {side}")
    print(f"{'upload':>9}{'KB sent/img':>13}{'img/s':>8}{'client ms':>11}  ingress CPU ms: "
          + "".join(f"{s:>12}" for s in INGRESS_STAGES) + f"{'total':>9}")
    for mode, r in results.items():
        ingress = r["ingress_ms"]
        print(f"{mode:>9}{r['uploaded_per_image'] / 1024:13.0f}{r['images_per_s']:8.2f}{r['client_ms']:11.1f}  "
              f"{'':16}" + "".join(f"{ingress[s]:12.1f}" for s in INGRESS_STAGES) + f"{sum(ingress.values()):9.1f}")
    reduced, whole = results["reduced"], results["original"]
    print(f"reduced vs original: {whole['uploaded_per_image'] / reduced['uploaded_per_image']:.1f}x fewer bytes "
          f"sent, {reduced['images_per_s'] / whole['images_per_s']:.1f}x the images/s, "
          f"{sum(whole['ingress_ms'].values()) / sum(reduced['ingress_ms'].values()):.1f}x less ingress CPU")


if __name__ == "__main__":
    main()
