"""The deployment files: cluster.yaml against the cluster-launcher schema shipped inside the
installed `ray` (no cloud contacted), and the KubeRay manifests against the project's own Serve
config and Serve's deploy schema."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.serve.schema import ServeDeploySchema

from serving import runner
from serving.config import ServiceConfig

REPO = Path(__file__).resolve().parents[1]
KUBERAY = REPO / "deploy/kuberay"
MODEL_DIR = "/models/sam3"  # where both cluster.yaml's containers and the GPU pods see the weights


def launcher_config() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def validated(config: dict) -> dict:
    """What `ray up` checks before contacting the cloud: defaults merged, then the schema."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def serve_config_model_limits() -> dict:
    app = runner.load_config()["applications"][0]
    (model,) = [d for d in app["deployments"] if d["name"] == runner.MODEL_DEPLOYMENT]
    return model["autoscaling_config"]


def test_cluster_yaml_validates_against_rays_schema():
    config = validated(launcher_config())
    assert config["provider"]["type"] == "aws"
    nodes = config["available_node_types"]
    head = nodes[config["head_node_type"]]
    assert "InstanceType" in head["node_config"] and not head["resources"].get("GPU")
    (gpu_type,) = [name for name in nodes if name != config["head_node_type"]]
    gpu = nodes[gpu_type]
    assert gpu["min_workers"] == 0
    assert gpu["max_workers"] == serve_config_model_limits()["max_replicas"], "one SAM3 replica per GPU node"
    assert gpu["node_config"]["InstanceType"].startswith("g"), "the worker type must be an AWS GPU instance"
    # The weights are synced to the GPU nodes' disks and mounted where the Serve config looks.
    assert any("models/sam3" in c for c in gpu["initialization_commands"])
    assert any(o.endswith(":/models:ro") for o in config["docker"]["run_options"])
    assert config["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}-")
    assert any('samfleet[serve]' in c for c in config["setup_commands"])
    deploy = config["head_start_ray_commands"][-2:]
    assert deploy[0].startswith("samfleet render-config") and f"--model {MODEL_DIR}" in deploy[0]
    assert deploy[1].startswith("serve deploy ")


@pytest.mark.parametrize("break_it", [
    lambda c: c["available_node_types"]["gpu_worker"].update(min_worker=0),  # a misspelt key
    lambda c: c["available_node_types"]["gpu_worker"].pop("node_config"),
    lambda c: c.update(head_node_type="cpu_head"),
])
def test_a_broken_cluster_yaml_is_rejected(break_it):
    config = launcher_config()
    break_it(config)
    with pytest.raises((jsonschema.ValidationError, ValueError, KeyError)):
        validated(config)


def rayservice() -> dict:
    return yaml.safe_load((KUBERAY / "rayservice.yaml").read_text())


def render_config(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sdk.cli", "render-config", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def test_rayservice_serves_the_projects_serve_config():
    embedded = yaml.safe_load(rayservice()["spec"]["serveConfigV2"])
    assert embedded == runner.load_config(host="0.0.0.0", model=MODEL_DIR)
    deploy = ServeDeploySchema.model_validate(embedded)
    assert [app.name for app in deploy.applications] == [runner.APP_NAME]
    # render-config is how the README says to regenerate it.
    rendered = render_config("--host", "0.0.0.0", "--model", MODEL_DIR)
    assert rendered.returncode == 0, rendered.stderr
    assert yaml.safe_load(rendered.stdout) == embedded


def test_render_config_names_what_is_wrong_with_a_bad_config(tmp_path):
    config = runner.load_config()
    config["applications"][0]["args"]["batching"]["max_batch_size"] = 0
    bad = tmp_path / "serve.yaml"
    bad.write_text(yaml.safe_dump(config))
    refused = render_config("--config", str(bad))
    assert refused.returncode == 1 and not refused.stdout
    assert refused.stderr.startswith(f"samfleet render-config: {bad}: invalid application args")
    assert "batching.max_batch_size" in refused.stderr and "Traceback" not in refused.stderr
    missing = render_config("--config", str(tmp_path / "absent.yaml"))
    assert missing.returncode == 1 and "No such file" in missing.stderr


def test_rayservice_autoscales_a_gpu_worker_group_with_the_shared_weights():
    manifest = rayservice()
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayService")
    cluster = manifest["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["rayVersion"] == ray.__version__
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    (group,) = cluster["workerGroupSpecs"]
    assert group["minReplicas"] == 0
    assert group["maxReplicas"] == serve_config_model_limits()["max_replicas"]
    pod = group["template"]["spec"]
    (worker,) = pod["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["image"] == head["image"]
    (mount,) = worker["volumeMounts"]
    assert MODEL_DIR.startswith(mount["mountPath"] + "/") and mount["readOnly"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    claim = volume["persistentVolumeClaim"]["claimName"]

    pvc, job = yaml.safe_load_all((KUBERAY / "weights-pvc.yaml").read_text())
    assert (pvc["kind"], pvc["metadata"]["name"]) == ("PersistentVolumeClaim", claim)
    assert "ReadWriteMany" in pvc["spec"]["accessModes"], "every GPU pod mounts the same weights"
    download = job["spec"]["template"]["spec"]
    assert download["volumes"][0]["persistentVolumeClaim"]["claimName"] == claim
    (container,) = download["containers"]
    assert f"--local-dir {MODEL_DIR}" in container["args"][0]
    assert container["volumeMounts"][0]["mountPath"] == mount["mountPath"]


def test_a_machine_without_gpus_runs_one_replica_per_deployment_with_every_core():
    gpu_config = runner.load_settings()
    assert runner.fit_to_cluster(copy.deepcopy(gpu_config), gpus_available=1, cpu_cores=2) == []

    settings = copy.deepcopy(gpu_config)
    (note,) = runner.fit_to_cluster(settings, gpus_available=0, cpu_cores=6)
    assert "1 replica(s) using 6 cores each" in note
    model, ingress = (settings.deployment_options[name] for name in ("SAM3Model", "Ingress"))
    assert model["ray_actor_options"] == {"num_gpus": 0, "num_cpus": 6}  # Ray gives its torch 6 threads
    assert settings.args["device"] == "cpu"
    for options in (model, ingress):
        assert options["num_replicas"] == 1 and "autoscaling_config" not in options

    fixed = copy.deepcopy(gpu_config)  # a config that fixes its replicas keeps them
    fixed.deployment_options["SAM3Model"].pop("autoscaling_config")
    fixed.deployment_options["SAM3Model"]["num_replicas"] = 2
    runner.fit_to_cluster(fixed, gpus_available=0, cpu_cores=6)
    assert fixed.deployment_options["SAM3Model"]["num_replicas"] == 2
    assert fixed.deployment_options["SAM3Model"]["ray_actor_options"]["num_cpus"] == 3  # the cores shared out


# The tracking rate the grace periods are sized for (serving/serve_config.yaml says why).
PLANNED_VIDEO_FRAMES_PER_S = 22.8


def test_replicas_being_stopped_have_time_to_finish_the_longest_video():
    """A longer max_video_frames or more concurrent_videos without a longer grace would cut videos
    at every rollout and downscale again (issue 20; tests/test_fleet_lifecycle.py shows it)."""
    app = runner.load_config()["applications"][0]
    grace = {d["name"]: d["graceful_shutdown_timeout_s"] for d in app["deployments"]}
    args = ServiceConfig.model_validate(app["args"])
    longest_video_s = args.limits.max_video_frames / (PLANNED_VIDEO_FRAMES_PER_S / args.concurrent_videos)
    assert grace[runner.MODEL_DEPLOYMENT] >= longest_video_s
    assert grace["Ingress"] > grace[runner.MODEL_DEPLOYMENT]  # it relays the stream, then encodes
