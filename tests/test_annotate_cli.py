"""`samfleet annotate` as a user runs it: a real process against the real service."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

import sdk.annotate
import sdk.coco
from compare import assert_results_match
from conftest import wait_for
from flaky_proxy import FlakyProxy, FrontDoor
from sdk.annotate import COCO_NAME, WATCH_ATTEMPTS, AnnotationRequest, FolderAnnotator
from sdk.calls import segment_params
from sdk.manifest import MANIFEST_NAME, Fingerprint, Manifest, ManifestMismatch, OutputBusy, write_atomic
from sdk.results import Result
from sdk.transport import Settings

REPO = Path(__file__).resolve().parents[1]
N_IMAGES = 100  # enough for a kill at a quarter to land mid-run at concurrency 16
PROMPT = ["--prompt", "thing", "--threshold", "0.0"]


def annotate(service: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "sdk.cli", "annotate", *map(str, args), "--url", service]


def run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def write_images(folder: Path, count: int, seed: int = 0, start: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(start, start + count):
        path = folder / f"part{i % 3}" / f"img{i:03d}.{'png' if i % 2 else 'jpg'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((40 + i % 7 * 6, 56, 3)) * 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def manifest_records(out: Path) -> list[dict]:
    path = out / MANIFEST_NAME
    if not path.exists():
        return []
    lines = path.read_text().splitlines()[1:]
    return [json.loads(line) for line in lines if line.endswith("}")]


def done_files(out: Path) -> list[str]:
    return [r["file"] for r in manifest_records(out) if r["status"] == "done"]


def load_results(out: Path) -> dict[str, Result]:
    return {p.relative_to(out / "results").as_posix()[:-5]: Result.model_validate_json(p.read_bytes())
            for p in sorted((out / "results").rglob("*.json"))}


def assert_outputs_consistent(out: Path, files: list[str], categories: list[str]) -> None:
    """Every image has its result and PNG, and the COCO file says exactly what the results say."""
    results = load_results(out)
    assert sorted(results) == sorted(files)
    assert not list(out.rglob("*.partial")), "a half-written file was left behind"
    coco = COCO(str(out / "annotations.coco.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == categories
    images = coco.loadImgs(coco.getImgIds())
    assert [img["file_name"] for img in images] == sorted(files)
    for img in images:
        result = results[img["file_name"]]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
        assert len(anns) == len(result.instances)
        ids = np.asarray(Image.open(out / "masks" / f"{img['file_name']}.png"))
        np.testing.assert_array_equal(ids, result.label_image())
        painted = np.zeros_like(ids)  # the COCO masks, painted best-last, give the PNG back
        for k, ann in reversed(list(enumerate(anns, start=1))):
            painted[coco.annToMask(ann).astype(bool)] = k
        np.testing.assert_array_equal(painted, ids)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    files = [p.relative_to(src).as_posix() for p in write_images(src, N_IMAGES)]
    (src / "part1" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut off here")
    (src / "notes.txt").write_text("not an image: ignored")
    (src / ".hidden.png").write_bytes(b"half-copied")
    return src, files


@pytest.fixture(scope="module")
def uninterrupted(service, folder, tmp_path_factory):
    src, files = folder
    out = tmp_path_factory.mktemp("uninterrupted")
    done = run(annotate(service, src, "--out", out, *PROMPT, "--concurrency", "16"))
    return out, done


def test_folder_run_reports_progress_and_the_broken_image(uninterrupted, folder):
    out, done = uninterrupted
    src, files = folder
    assert done.returncode == 1, done.stderr  # 1: some images failed
    assert f"{N_IMAGES + 1}/{N_IMAGES + 1}" in done.stderr  # the progress bar reached the end
    assert "MEANINGLESS" in done.stderr
    assert f"done {N_IMAGES}, skipped 0 (finished earlier), failed 1" in done.stdout
    assert "failed part1/broken.jpg: HTTP 422 invalid_image" in done.stdout
    assert_outputs_consistent(out, files, ["thing"])


def resumable_run(service: str, src: Path, out: Path) -> list[str]:
    """The command the interrupted-run tests stop and then run again, unchanged."""
    return annotate(service, src, "--out", out, *PROMPT, "--concurrency", "16", "--no-progress")


def stopped_partway(out: Path) -> int:
    """How many images a stopped run finished (each recorded once)."""
    finished = len(set(done_files(out)))
    assert 0 < finished < N_IMAGES, "the stop came too late (or too early) to test anything"
    return finished


def assert_resumes(service: str, folder, uninterrupted, out: Path, finished_before: int) -> None:
    """The same command, run again, does exactly the images left, and the outputs are complete."""
    src, files = folder
    again = run(resumable_run(service, src, out))
    assert f"done {N_IMAGES - finished_before}, skipped {finished_before}" in again.stdout, again.stdout
    assert sorted(done_files(out)) == sorted(files), "each image is recorded done exactly once"
    assert_outputs_consistent(out, files, ["thing"])
    reference = load_results(uninterrupted[0])
    for file, result in load_results(out).items():
        assert_results_match(result, reference[file])


def test_killed_run_resumes_without_loss_or_duplicates(service, folder, uninterrupted, tmp_path):
    out = tmp_path / "out"
    first = subprocess.Popen(resumable_run(service, folder[0], out), cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: len(done_files(out)) >= N_IMAGES // 4, 120, "a quarter of the images", interval_s=0.1)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert_resumes(service, folder, uninterrupted, out, stopped_partway(out))


def test_service_stopped_mid_run_then_the_same_command_resumes(service, folder, uninterrupted, tmp_path):
    """The service dies mid-batch: the CLI ends with an error that says how to resume, keeping what
    finished; run again once a service is up, it finishes the rest.  The CLI reaches the shared
    service through a front door that dies as a killed service does for its clients (every open
    connection reset, then connections refused); a real service killed with every one of its
    processes, Ray's included, is test_fiftyone_plugin's delegated-run test."""
    out = tmp_path / "out"
    with FrontDoor(service) as doomed:
        running = subprocess.Popen(resumable_run(doomed.url, folder[0], out), cwd=REPO, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: len(done_files(out)) >= N_IMAGES // 4, 120, "a quarter of the images", interval_s=0.1)
            doomed.kill()
            # The SDK's retries give up (its own bound on that, connect timeouts included), the run ends.
            _, stderr = running.communicate(timeout=Settings().unreachable_after_s() + 30)
        finally:
            running.kill()
    assert running.returncode == 1, stderr
    assert "finished images are kept; run the same command again to resume" in stderr, stderr
    assert doomed.url in stderr, stderr
    assert_resumes(service, folder, uninterrupted, out, stopped_partway(out))


def model_replicas() -> list[dict]:
    """The SAM3Model replica actors (the service's Ray runs in this test process)."""
    import ray

    return [a for a in ray.util.list_named_actors(all_namespaces=True) if "SAM3Model" in a["name"]]


def kill_model_replica() -> str:
    import ray

    (replica, *_) = model_replicas()
    ray.kill(ray.get_actor(replica["name"], namespace=replica["namespace"]), no_restart=True)
    return replica["name"]


@pytest.mark.fleet  # a replica lost and replaced: `make test-fleet`
def test_model_replica_killed_mid_run_is_replaced_and_every_image_done_once(service, folder, uninterrupted, tmp_path):
    """Requests the dead replica held come back 503 `replica_lost`; the SDK retries them on the
    replica Serve starts instead; the run finishes as if nothing happened."""
    src, files = folder
    out = tmp_path / "out"
    cmd = annotate(service, src, "--out", out, *PROMPT, "--concurrency", "16", "--no-progress")
    running = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: len(done_files(out)) >= N_IMAGES // 4, 120, "a quarter of the images", interval_s=0.1)
    killed = kill_model_replica()
    stdout, stderr = running.communicate(timeout=600)
    assert len(done_files(out)) > N_IMAGES // 4
    assert f"done {N_IMAGES}, skipped 0" in stdout and "failed 1" in stdout, (stdout, stderr)
    assert sorted(done_files(out)) == sorted(files), "each image is recorded done exactly once"
    assert_outputs_consistent(out, files, ["thing"])
    reference = load_results(uninterrupted[0])
    for file, result in load_results(out).items():
        assert_results_match(result, reference[file])
    assert killed not in [a["name"] for a in model_replicas()]


def test_rerun_skips_everything_and_keeps_outputs(service, folder, uninterrupted):
    out, _ = uninterrupted
    src, _ = folder
    before = (out / "annotations.coco.json").read_bytes()
    again = run(annotate(service, src, "--out", out, *PROMPT, "--no-progress"))
    assert f"done 0, skipped {N_IMAGES}" in again.stdout
    assert "failed part1/broken.jpg" in again.stdout  # failures are retried on a re-run, and fail again
    assert (out / "annotations.coco.json").read_bytes() == before


def test_other_parameters_refuse_the_same_output_folder(service, folder, uninterrupted):
    out, _ = uninterrupted
    src, _ = folder
    other = run(annotate(service, src, "--out", out, "--prompt", "other thing"))
    assert other.returncode == 2
    assert "holds results of another run" in other.stderr


def test_points_mode_and_formats(service, tmp_path):
    src = tmp_path / "src"
    files = [p.relative_to(src).as_posix() for p in write_images(src, 3)]
    png_only = run(annotate(service, src, "--out", tmp_path / "png", "--point", "20,20", "--negative-point", "5,5",
                            "--box", "2,2,50,38", "--format", "png"))
    assert png_only.returncode == 0, png_only.stderr
    assert not (tmp_path / "png" / "annotations.coco.json").exists()
    for file, result in load_results(tmp_path / "png").items():
        assert [i.label for i in result.instances] == ["object"]
        assert (tmp_path / "png" / "masks" / f"{file}.png").is_file()
    coco_only = run(annotate(service, src, "--out", tmp_path / "coco", "--point", "20,20", "--format", "coco"))
    assert coco_only.returncode == 0, coco_only.stderr
    assert not (tmp_path / "coco" / "masks").exists()
    assert len(COCO(str(tmp_path / "coco" / "annotations.coco.json")).getImgIds()) == len(files)


def test_several_prompts_tiling_and_reference_image(service, client, tmp_path):
    """Each option reaches the service: the CLI writes what the SDK gets for the same request."""
    src = tmp_path / "src"
    files = [p.relative_to(src).as_posix() for p in write_images(src, 2)]
    reference = write_images(tmp_path / "ref", 1, seed=9)[0]
    out = tmp_path / "out"
    done = run(annotate(service, src, "--out", out, "--prompt", "cat", "--prompt", "dog", "--threshold", "0.1",
                        "--tile-size", "64", "--tile-overlap", "16", "--negative-prompt", "tree"))
    assert done.returncode == 0, done.stderr
    assert_outputs_consistent(out, files, ["cat", "dog"])
    for file, result in load_results(out).items():
        expected = client.segment(src / file, ["cat", "dog"], threshold=0.1, negative_prompts=["tree"],
                                  tiling={"tile_size": 64, "overlap": 16})
        # The CLI's two images (and their tiles) may share batches; the SDK's request runs alone.
        assert_results_match(result, expected)
    by_reference = run(annotate(service, src, "--out", tmp_path / "ref-out", "--reference-image", reference,
                                "--reference-box", "5,5,30,30", "--threshold", "0.1"))
    assert by_reference.returncode == 0, by_reference.stderr
    for file, result in load_results(tmp_path / "ref-out").items():
        expected = client.segment(src / file, reference_image=reference, reference_boxes=[[5, 5, 30, 30]], threshold=0.1)
        assert_results_match(result, expected)
    alone = run(annotate(service, src, "--out", tmp_path / "o", "--reference-box", "5,5,30,30"))
    assert alone.returncode == 2 and "go together" in alone.stderr


def test_usage_errors(service, tmp_path):
    both = run(annotate(service, tmp_path, "--out", tmp_path / "o", "--prompt", "x", "--point", "1,1"))
    assert both.returncode == 2 and "either --prompt" in both.stderr
    bad_box = run(annotate(service, tmp_path, "--out", tmp_path / "o", "--exemplar", "1,2,3"))
    assert bad_box.returncode == 2 and "4 comma-separated numbers" in bad_box.stderr
    missing = run(annotate(service, tmp_path / "nope", "--out", tmp_path / "o", "--prompt", "x"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    down = run([*annotate(service, tmp_path, "--out", tmp_path / "o", "--prompt", "x")[:-1], "http://127.0.0.1:9"])
    assert down.returncode == 2 and "cannot reach samfleet" in down.stderr


def test_watch_annotates_images_as_they_arrive(service, tmp_path):
    src, out = tmp_path / "inbox", tmp_path / "out"
    first = [p.relative_to(src).as_posix() for p in write_images(src, 2)]
    watcher = subprocess.Popen(annotate(service, src, "--out", out, *PROMPT, "--watch", "--interval", "0.2"),
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(done_files(out)) == 2, 60, "the first images", interval_s=0.1)
        later = [p.relative_to(src).as_posix() for p in write_images(src, 3, seed=1, start=10)]
        wait_for(lambda: len(done_files(out)) == 5, 60, "the images dropped in later", interval_s=0.1)
        watcher.send_signal(signal.SIGTERM)  # what a process manager sends
        stdout, stderr = watcher.communicate(timeout=60)
    finally:
        watcher.kill()
    assert watcher.returncode == 0, stderr
    assert "done 5" in stdout
    assert_outputs_consistent(out, first + later, ["thing"])


def test_laptop_install_has_the_cli_without_torch_or_ray(service, tmp_path):
    """`pip install samfleet` (no extras) into a fresh venv: annotate works against the service,
    and the service commands say what to install instead of crashing."""
    venv = tmp_path / "laptop"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = run([str(venv / "bin/python"), "-m", "pip", "install", "-q", str(REPO)], timeout=600)
    assert install.returncode == 0, install.stderr
    probe = run([str(venv / "bin/python"), "-c", "import importlib.util as u; "
                 "print([m for m in ('torch', 'ray', 'transformers', 'cv2', 'fastapi') if u.find_spec(m)])"])
    assert probe.stdout.strip() == "[]", "the SDK install pulled service dependencies"
    src = tmp_path / "src"
    write_images(src, 2)
    laptop = subprocess.run([str(venv / "bin/samfleet"), "annotate", str(src), "--out", str(tmp_path / "out"),
                             "--prompt", "x", "--url", service], capture_output=True, text=True, timeout=300)
    assert laptop.returncode == 0, laptop.stderr
    assert len(done_files(tmp_path / "out")) == 2
    serve = subprocess.run([str(venv / "bin/samfleet"), "serve"], capture_output=True, text=True, timeout=60)
    assert serve.returncode == 2 and "pip install 'samfleet[serve]'" in serve.stderr


def test_manifest_ignores_a_line_cut_short_by_a_kill(tmp_path):
    run_spec = {"request": "segment", "params": {"prompt": "x"}, "model": "m"}
    manifest = Manifest(tmp_path, run_spec)
    manifest.record_done("a.jpg", Fingerprint(1, 2), instances=3)
    manifest.close()
    with (tmp_path / MANIFEST_NAME).open("a") as f:
        f.write('{"file": "b.jpg", "status": "do')  # the process died mid-write
    reopened = Manifest(tmp_path, run_spec)
    assert reopened.is_done("a.jpg", Fingerprint(1, 2)) and not reopened.done.get("b.jpg")
    assert not reopened.is_done("a.jpg", Fingerprint(1, 3)), "an edited file is done again"
    reopened.record_done("b.jpg", Fingerprint(5, 6), instances=0)
    reopened.close()
    assert Manifest(tmp_path, run_spec).is_done("b.jpg", Fingerprint(5, 6))
    with pytest.raises(ManifestMismatch):
        Manifest(tmp_path, {**run_spec, "params": {"prompt": "y"}})


def failed_records(out: Path, file: str) -> list[dict]:
    return [r for r in manifest_records(out) if r["file"] == file and r["status"] == "failed"]


def rewrite_header(out: Path, run: dict) -> None:
    lines = (out / MANIFEST_NAME).read_text().splitlines(keepends=True)
    (out / MANIFEST_NAME).write_text(json.dumps({"run": run}, sort_keys=True) + "\n" + "".join(lines[1:]))


def test_a_run_started_by_an_older_version_resumes(service, tmp_path):
    """A header written before a schema field existed (here: every parameter, defaults included,
    but negative_containment, as a version without it wrote) resumes; a changed parameter does not."""
    src, out = tmp_path / "src", tmp_path / "out"
    files = [p.relative_to(src).as_posix() for p in write_images(src, 3)]
    first = run(annotate(service, src, "--out", out, *PROMPT, "--no-progress"))
    assert first.returncode == 0, first.stderr
    run_spec = json.loads((out / MANIFEST_NAME).read_text().splitlines()[0])["run"]
    older = segment_params("thing", threshold=0.0).model_dump(mode="json")
    del older["negative_containment"]
    rewrite_header(out, {**run_spec, "params": older})
    again = run(annotate(service, src, "--out", out, *PROMPT, "--no-progress"))
    assert again.returncode == 0, again.stderr
    assert f"done 0, skipped {len(files)}" in again.stdout
    changed = run(annotate(service, src, "--out", out, "--prompt", "thing", "--threshold", "0.3"))
    assert changed.returncode == 2
    assert "holds results of another run: params.threshold was 0.0, now 0.3" in changed.stderr, changed.stderr


def test_another_reference_image_refuses_resuming(service, tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    write_images(src, 2)
    reference = write_images(tmp_path / "ref", 1, seed=9)[0]
    cmd = annotate(service, src, "--out", out, "--reference-image", reference, "--reference-box", "5,5,30,30",
                   "--no-progress")
    assert run(cmd).returncode == 0
    assert "done 0, skipped 2" in run(cmd).stdout  # the same reference image resumes
    write_images(tmp_path / "ref", 1, seed=10)  # another picture under the same name
    other = run(cmd)
    assert other.returncode == 2, other.stdout
    assert "holds results of another run: reference_image_sha256 was" in other.stderr, other.stderr


def test_a_second_run_on_the_same_output_folder_fails_fast(service, tmp_path):
    """While one run writes to --out (here a --watch that never ends), another is refused at
    once; the lock dies with its process, even a SIGKILLed one."""
    src, out = tmp_path / "src", tmp_path / "out"
    write_images(src, 2)
    cmd = annotate(service, src, "--out", out, *PROMPT, "--no-progress")
    first = subprocess.Popen([*cmd, "--watch", "--interval", "0.2"], cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: len(done_files(out)) == 2, 60, "the first run's images", interval_s=0.1)
        started = time.monotonic()
        second = run(cmd, timeout=60)
        assert second.returncode == 2, second.stdout
        assert f"another samfleet annotate is writing to {out}" in second.stderr, second.stderr
        assert time.monotonic() - started < 30
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    after = run(cmd)
    assert after.returncode == 0 and "done 0, skipped 2" in after.stdout, after.stderr


def test_manifest_locks_its_folder_and_temp_files_are_unique(tmp_path):
    run_spec = {"request": "segment", "params": {"prompt": "x"}, "model": "m"}
    holder = Manifest(tmp_path, run_spec)
    with pytest.raises(OutputBusy, match=f"another samfleet annotate is writing to {tmp_path}"):
        Manifest(tmp_path, run_spec)
    holder.close()
    Manifest(tmp_path, run_spec).close()  # released with the holder
    # Another writer's half-written file of the same path is not written into nor renamed away.
    theirs = tmp_path / ".result.json.partial"
    theirs.write_bytes(b"another writer, midway")
    write_atomic(tmp_path / "result.json", b"mine")
    assert (tmp_path / "result.json").read_bytes() == b"mine"
    assert theirs.read_bytes() == b"another writer, midway"
    assert [p.name for p in tmp_path.glob("*.partial")] == [theirs.name]  # and mine is gone


def watching(service_url: str, src: Path, out: Path) -> subprocess.Popen:
    cmd = annotate(service_url, src, "--out", out, *PROMPT, "--concurrency", "1", "--no-progress", "--watch",
                   "--interval", "0.2")
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# The client tries a call 1 + max_retries times before an image fails (Retry-After: 0, so at once).
CALLS_PER_ATTEMPT = 1 + Settings().retry.max_retries


def test_watch_retries_images_that_failed_transiently_not_refused_ones(service, tmp_path):
    """Sequential (concurrency 1, files in name order): /v1/info, a_broken (422, refused), then
    b_flaky answered 503 on every retry of its first two attempts (the first run's, the first
    watch round's), forwarded on its third."""
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    Image.fromarray((np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)).save(src / "b_flaky.png")
    (src / "a_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut off here")
    script = ["forward", "forward"] + [503] * (2 * CALLS_PER_ATTEMPT)
    with FlakyProxy(service, script, retry_after="0") as proxy:
        watcher = watching(proxy.url, src, out)
        try:
            wait_for(lambda: "b_flaky.png" in done_files(out), 60, "b_flaky.png, retried by --watch", interval_s=0.1)
            time.sleep(2)  # ten more rounds
            watcher.send_signal(signal.SIGTERM)
            stdout, stderr = watcher.communicate(timeout=60)
        finally:
            watcher.kill()
    assert not proxy.script
    flaky = failed_records(out, "b_flaky.png")
    assert len(flaky) == 2 and all(r["transient"] and "HTTP 503" in r["error"] for r in flaky), flaky
    broken = failed_records(out, "a_broken.jpg")
    assert len(broken) == 1 and not broken[0]["transient"] and "HTTP 422" in broken[0]["error"], broken
    assert "done 1" in stdout and "failed 1" in stdout, (stdout, stderr)


def test_watch_retries_a_transient_failure_a_bounded_number_of_times(service, tmp_path):
    """Every attempt of the first WATCH_ATTEMPTS fails 503; the next would succeed, but is not made."""
    src, out = tmp_path / "src", tmp_path / "out"
    write_images(src, 1)
    script = ["forward"] + [503] * (WATCH_ATTEMPTS * CALLS_PER_ATTEMPT)
    with FlakyProxy(service, script, retry_after="0") as proxy:
        watcher = watching(proxy.url, src, out)
        try:
            wait_for(lambda: len(manifest_records(out)) == WATCH_ATTEMPTS, 60, "every attempt", interval_s=0.1)
            time.sleep(2)  # ten more rounds
            watcher.send_signal(signal.SIGTERM)
            stdout, stderr = watcher.communicate(timeout=60)
        finally:
            watcher.kill()
    assert not proxy.script and len(proxy.calls) == 1 + WATCH_ATTEMPTS * CALLS_PER_ATTEMPT
    assert [r["status"] for r in manifest_records(out)] == ["failed"] * WATCH_ATTEMPTS
    assert "done 0" in stdout and "failed 1" in stdout, (stdout, stderr)


def test_watch_rewrites_coco_only_for_new_results_and_converts_each_once(client, tmp_path, monkeypatch):
    """In-process: rounds that add results rewrite the COCO file, a round whose only image fails
    does not, each result is converted to COCO once in all, and the file at the end is the one a
    run from scratch over the same results writes."""
    src, out = tmp_path / "src", tmp_path / "out"
    write_images(src, 2)
    request = AnnotationRequest("segment", {"prompt": "thing", "threshold": 0.0})
    annotator = FolderAnnotator(client, src, out, request, progress=False)
    conversions, coco_writes = [], []
    rle_of, write = sdk.coco.rle_of, sdk.annotate.write_atomic
    monkeypatch.setattr(sdk.coco, "rle_of", lambda mask: conversions.append(1) or rle_of(mask))

    def recording_write(path: Path, data: bytes) -> None:
        if path.name == COCO_NAME:
            coco_writes.append(sorted(annotator.manifest.done))
        write(path, data)

    monkeypatch.setattr(sdk.annotate, "write_atomic", recording_write)
    rounds = [
        lambda: write_images(src, 2, seed=1, start=10),
        lambda: None,
        lambda: (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut off here"),
        lambda: None, lambda: None, lambda: None,
    ]

    def stop() -> bool:
        if not rounds:
            return True
        rounds.pop(0)()
        return False

    try:
        annotator.run()
        annotator.watch(interval_s=0.05, stop=stop)
    finally:
        annotator.close()
    assert len(annotator.manifest.done) == 4 and "broken.jpg" in annotator.manifest.failed
    assert coco_writes[0] == sorted(annotator.manifest.done)[:2] and coco_writes[-1] == sorted(annotator.manifest.done)
    assert all(a != b for a, b in zip(coco_writes, coco_writes[1:])), f"rewritten with nothing new: {coco_writes}"
    instances = sum(len(result.instances) for result in load_results(out).values())
    assert instances and len(conversions) == instances, "a result converted to COCO more than once"
    watched = (out / COCO_NAME).read_bytes()
    monkeypatch.undo()
    (out / COCO_NAME).unlink()
    again = FolderAnnotator(client, src, out, request, progress=False)
    try:
        again.run()
    finally:
        again.close()
    assert (out / COCO_NAME).read_bytes() == watched
