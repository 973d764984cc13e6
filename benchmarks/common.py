"""What every benchmark needs: the repo on sys.path, a free loopback port, the model to measure,
photos of camera sizes, and a samfleet service started in this process (embedded Ray) for the
length of a `with`."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

SAMPLES = sorted((REPO / "examples/images").glob("*.jpg"))
PHOTO_SIZES = {1: (1152, 864), 12: (4000, 3000)}


def photo(megapixels: int) -> bytes:
    """A JPEG of about `megapixels` MP: the sample images side by side, upscaled, with noise."""
    import numpy as np
    from PIL import Image

    width, height = PHOTO_SIZES[megapixels]
    strip = np.concatenate([np.asarray(Image.open(p).convert("RGB").resize((512, 512))) for p in SAMPLES], axis=1)
    picture = np.asarray(Image.fromarray(strip).resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    noisy = picture + np.random.default_rng(0).normal(0, 4, picture.shape)
    buffer = io.BytesIO()
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_or_tiny(model: str | None) -> str:
    """`model`, or a fresh tiny random SAM3 (meaningless masks, real compute path) when None."""
    from serving.tiny_model import build_tiny_model

    return model or str(build_tiny_model(Path(tempfile.mkdtemp()) / "tiny-sam3"))


@contextlib.contextmanager
def running_service(model: str, replicas: int | None = None, *, ingress_replicas: int | None = None,
                    **args) -> Iterator[str]:
    """URL of samfleet serving `model` with the packaged Serve config on a free port; `replicas`
    (`ingress_replicas`) fixes the number of SAM3 (ingress) replicas instead of autoscaling,
    `args` override application args."""
    from serving import runner

    settings = runner.load_settings(model=model, port=free_port())
    settings.args.update(args)
    for deployment, count in ((runner.MODEL_DEPLOYMENT, replicas), ("Ingress", ingress_replicas)):
        if count:
            options = settings.deployment_options[deployment]
            options.pop("autoscaling_config")
            options["num_replicas"] = count
    runner.start(settings)
    try:
        yield settings.url
    finally:
        runner.stop()


class Sampler:
    """`sample()` every `interval_s` in a background thread for as long as the `with` block
    lasts (the timelines the fleet benchmarks record while they change the fleet)."""

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        raise NotImplementedError
