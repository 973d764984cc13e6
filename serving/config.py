"""Service configuration: the `args` of the Serve application, validated in one place."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from sdk.schema import Limits

DEFAULT_MODEL = "facebook/sam3"


class BatchingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Concurrent requests that share one forward pass; see benchmarks/ for how it was chosen.
    max_batch_size: int = Field(default=8, gt=0)
    batch_wait_timeout_s: float = Field(default=0.01, ge=0)


class StatusConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Once `/v1/status` has been asked, each ingress replica scrapes every node's metrics
    # endpoint this often; rates cover the last `window_s`.
    sample_interval_s: float = Field(default=5.0, gt=0)
    window_s: float = Field(default=60.0, gt=0)


class AuthConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Empty: no authentication (a service on loopback or behind an authenticating proxy).
    # Otherwise every route but /healthz needs `Authorization: Bearer KEY` whose hash is listed;
    # `samfleet new-api-key` makes a key and its hash.
    api_key_hashes: list[Annotated[str, StringConstraints(pattern=r"^sha256:[0-9a-f]{64}$")]] = Field(
        default_factory=list
    )


class ServiceConfig(BaseModel):
    """The `args:` block of the Serve config (`serve_config.yaml`)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(default=DEFAULT_MODEL, description="Hugging Face model id or local folder")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="auto: bfloat16 on GPU (float16 where bf16 is unsupported), float32 on CPU"
    )
    limits: Limits = Field(default_factory=Limits)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    status: StatusConfig = Field(default_factory=StatusConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    model_roots: list[str] = Field(
        default_factory=list,
        description="When set, `model` must be a folder inside one of these (symlinks resolved): "
        "no hub downloads, no loading from elsewhere on the host.",
    )

    @model_validator(mode="after")
    def _model_inside_roots(self) -> ServiceConfig:
        if not self.model_roots:
            return self
        where = Path(self.model).resolve()
        if not any(where.is_relative_to(Path(root).resolve()) for root in self.model_roots):
            raise ValueError(f"model {self.model!r} is not inside the allowed model_roots {self.model_roots}")
        return self

    concurrent_decodes: int = Field(
        default=2,
        gt=0,
        description="images each ingress replica decodes and resizes at a time; each holds a decoded photo "
        "(36 MB at 12 MP) and its resize buffers, so this bounds the ingress's memory whatever the load",
    )
    concurrent_videos: int = Field(
        default=2,
        gt=0,
        description="videos each SAM3 replica tracks at a time, beside its image batches; each holds its "
        "tracking state on the GPU (the memory of every tracked object, growing with the frames), so more "
        "would only share the same GPU; a video beyond this is answered 503 overloaded with Retry-After",
    )
    text_cache_entries: int = Field(
        default=1024,
        ge=0,
        description="text prompts whose encoded features each SAM3 replica keeps (LRU, ~16 KB each for SAM3 "
        "in bfloat16): a batch job's repeated prompt is encoded once; 0 disables",
    )
    embedding_cache_mb: float = Field(
        default=1024,
        ge=0,
        description="memory per SAM3 replica for image embeddings kept for later point/box prompts; 0 disables",
    )
