"""Start and stop the Serve application: on an embedded local Ray, or on an existing cluster."""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml
from pydantic import ValidationError

from serving.config import ServiceConfig

APP_NAME = "samfleet"
MODEL_DEPLOYMENT = "SAM3Model"


def default_config_path() -> Path:
    return Path(str(resources.files("serving") / "serve_config.yaml"))


@dataclass
class ServeSettings:
    """What one Serve config file says, after command-line overrides."""

    args: dict
    deployment_options: dict[str, dict]
    host: str
    port: int
    route_prefix: str
    proxy_location: str = "EveryNode"

    @property
    def url(self) -> str:
        """Where clients reach the application: under its route prefix, if it has one."""
        return f"http://{self.host}:{self.port}{self.route_prefix.rstrip('/')}"


class ConfigError(ValueError):
    """A Serve config file samfleet cannot use; the message names the file and the problem."""


def load_config(
    config_path: str | Path | None = None,
    *,
    model: str | None = None,
    device: str | None = None,
    host: str | None = None,
    port: int | None = None,
) -> dict:
    """A Serve config file as Serve reads it, with command-line overrides applied and the
    application's `args` validated (fail here, with a clear message, not in a replica)."""
    path = Path(config_path or default_config_path())
    try:
        raw = yaml.safe_load(path.read_text())
        args = _application(raw).setdefault("args", {})
    except (OSError, yaml.YAMLError, TypeError, KeyError, ValueError) as exc:
        raise ConfigError(f"{path}: not a Serve config with one application named {APP_NAME!r} ({exc})") from exc
    if model:
        args["model"] = model
    if device:
        args["device"] = device
    try:
        ServiceConfig.model_validate(args)
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid application args: {exc}") from exc
    http = raw.setdefault("http_options", {})
    if host:
        http["host"] = host
    if port:
        http["port"] = port
    return raw


def _application(raw: dict) -> dict:
    (app,) = [a for a in raw["applications"] if a.get("name", APP_NAME) == APP_NAME]
    return app


def load_settings(config_path: str | Path | None = None, **overrides) -> ServeSettings:
    raw = load_config(config_path, **overrides)
    app = _application(raw)
    options = {d["name"]: {k: v for k, v in d.items() if k != "name"} for d in app.get("deployments", [])}
    http = raw["http_options"]
    return ServeSettings(
        args=copy.deepcopy(app["args"]),
        deployment_options=options,
        host=http.get("host", "127.0.0.1"),
        port=int(http.get("port", 8000)),
        route_prefix=app.get("route_prefix", "/"),
        proxy_location=raw.get("proxy_location", "EveryNode"),
    )


def fit_to_cluster(settings: ServeSettings, gpus_available: float, cpu_cores: int) -> list[str]:
    """Adjust a GPU config to a machine without GPUs (a laptop, CI); return what changed.

    Ray runs an actor's torch with as many threads as the actor's `num_cpus` (1 in the GPU
    config), so CPU replicas share out every core.  Every deployment then runs one replica, not
    autoscaled ones: more replicas would only split the same cores, and each ingress replica
    holds its own torch and processors (about 1 GB).  An explicit `num_replicas` is kept."""
    model_opts = settings.deployment_options.setdefault(MODEL_DEPLOYMENT, {})
    actor = model_opts.setdefault("ray_actor_options", {})
    if actor.get("num_gpus", 0) == 0 or gpus_available > 0:
        return []
    settings.args["device"] = "cpu"
    for options in settings.deployment_options.values():
        if options.pop("autoscaling_config", None) is not None:
            options["num_replicas"] = 1
    replicas = model_opts.get("num_replicas", 1)
    actor.update(num_gpus=0, num_cpus=max(1, cpu_cores // replicas))
    return [
        f"no GPU on this machine: SAM3 runs on the CPU (slow), {replicas} replica(s) using "
        f"{actor['num_cpus']} cores each, no autoscaling"
    ]


def start(
    settings: ServeSettings, *, address: str | None = None, wait_s: float = 600, num_gpus: int | None = None
) -> list[str]:
    """Deploy the application (starting an embedded local Ray unless `address` is given).

    `num_gpus` declares GPUs for the embedded Ray instead of detecting them; the autoscaling
    tests declare GPUs a CPU machine does not have so that replicas schedule as on a GPU node.
    """
    import ray
    from ray import serve

    from serving.app import application

    init_ray(address=address, num_gpus=num_gpus)
    notes = (
        [] if address else fit_to_cluster(settings, ray.cluster_resources().get("GPU", 0), len(os.sched_getaffinity(0)))
    )
    serve.start(proxy_location=settings.proxy_location, http_options={"host": settings.host, "port": settings.port})
    app = application(settings.args, settings.deployment_options)
    deadline = time.monotonic() + wait_s
    serve.run(app, name=APP_NAME, route_prefix=settings.route_prefix, blocking=False)
    wait_healthy(settings.url, deadline)
    return notes


def init_ray(*, address: str | None = None, num_gpus: int | None = None) -> None:
    """Join the Ray cluster at `address`, or start an embedded local Ray (`num_gpus`: see `start`)."""
    import ray

    if address:
        ray.init(address=address)
        return
    # address="local": always a Ray of our own, never a cluster someone started with `ray start`.
    # Logical CPUs only: the deployments' replicas may share the machine's cores.
    ray.init(
        address="local",
        num_cpus=max(8, 4 * len(os.sched_getaffinity(0))),
        num_gpus=num_gpus,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        configure_logging=False,
        log_to_driver=False,
    )


def deploy_config(raw: dict) -> None:
    """What `serve deploy FILE` (and KubeRay) do with a Serve config: the controller applies it,
    so each change is judged as on a cluster: new `args` roll every replica out, a new autoscaling
    policy or grace period only reconfigures them.  (`start` deploys the application from Python
    instead, which Serve always treats as new code.)  Starts Serve with the file's HTTP options."""
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(raw)
    # The dashboard's REST endpoint behind `serve deploy` calls the same two
    # (ray/dashboard/modules/serve/serve_head.py, Ray 2.60).
    client = serve_start(http_options=config.http_options.model_dump(), proxy_location=config.proxy_location)
    client.deploy_apps(config)


def stop(*, shutdown_ray: bool = True) -> None:
    import ray
    from ray import serve

    if not ray.is_initialized():  # start() failed early; serve.shutdown() would start a Ray
        return
    serve.shutdown()
    if shutdown_ray:
        ray.shutdown()


def wait_healthy(url: str, deadline: float) -> None:
    """Return once `url`/healthz answers 200; TimeoutError after `deadline` (time.monotonic)."""
    import httpx

    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"samfleet did not become healthy at {url}")
        time.sleep(0.5)
