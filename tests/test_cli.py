"""`samfleet demo` (the README's main job) end to end, in its own process with its own Ray."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from conftest import free_port, ray_processes, wait_for_ray_exit

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.service
def test_demo_annotates_samples_and_stops_cleanly(tmp_path, tiny_model):
    before = ray_processes()
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "sdk.cli", "demo", "--model", tiny_model, "--out", str(out),
           "--port", str(free_port()), "--threshold", "0.1"]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert run.returncode == 0, run.stdout + run.stderr
    assert "MEANINGLESS" in run.stdout  # the tiny model is never passed off as a real one

    samples = sorted((REPO / "examples/images").glob("*.jpg"))
    for sample in samples:
        for kind in ("text", "point"):
            overlay = Image.open(out / f"{sample.stem}_{kind}.png")
            assert overlay.size == Image.open(sample).size
    coco = COCO(str(out / "annotations.coco.json"))
    assert len(coco.getImgIds()) == 2 * len(samples)
    assert {c["name"] for c in coco.loadCats(coco.getCatIds())} == {"cat", "object"}
    for ann in coco.loadAnns(coco.getAnnIds()):
        img = coco.loadImgs(ann["image_id"])[0]
        assert coco.annToMask(ann).shape == (img["height"], img["width"])
        assert np.isclose(coco.annToMask(ann).sum(), ann["area"])

    assert not wait_for_ray_exit(before), "the demo left Ray processes behind"


def test_make_tiny_model_command(tmp_path):
    run = subprocess.run([sys.executable, "-m", "sdk.cli", "make-tiny-model", str(tmp_path / "m")],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "MEANINGLESS" in run.stdout
    assert (tmp_path / "m" / "model.safetensors").is_file()
