"""The Serve application: Ingress (CPU) -> SAM3Model (GPU).

`serve run serve_config.yaml` / `serve deploy` call `build_app(args)` and apply the file's
`deployments:` section themselves; `samfleet serve` reads the same file and passes that
section as `deployment_options`, so there is one config for both.
"""

from __future__ import annotations

from ray.serve import Application

from serving.config import ServiceConfig
from serving.ingress import Ingress
from serving.model_deployment import SAM3Model


def build_app(args: dict) -> Application:
    """The Serve config's `import_path`.  Serve calls it with `args` alone (it refuses builders that
    take more parameters: ray/serve/_private/api.py, call_user_app_builder_with_args_if_necessary)
    and applies the file's `deployments:` itself."""
    return application(args)


def application(args: dict, deployment_options: dict[str, dict] | None = None) -> Application:
    """The application with `deployment_options` applied here: how `samfleet serve` runs it."""
    config = ServiceConfig.model_validate(args or {}).model_dump()
    options = deployment_options or {}
    # @serve.deployment makes each class a Deployment, but mypy keeps a decorated class's own type.
    model = SAM3Model.options(**options.get("SAM3Model", {})).bind(config)  # type: ignore[attr-defined]  # a Deployment
    return Ingress.options(**options.get("Ingress", {})).bind(model, config)  # type: ignore[attr-defined]  # a Deployment
