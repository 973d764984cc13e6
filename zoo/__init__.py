"""samfleet's remote zoo model source: SAM3 on a samfleet cluster as a FiftyOne zoo model.

    foz.register_zoo_model_source("https://github.com/<org>/samfleet")
    model = foz.load_zoo_model("samfleet/sam3", url="http://gpu-cluster:8000", api_key=..., classes=["car"])
    dataset.apply_model(model, "sam3", batch_size=16)

FiftyOne copies this folder into its model zoo directory and imports this file from there, so
it imports the model from the installed `samfleet` package (`fiftyone_plugin.model`) rather
than holding any code of its own.
"""

import json
import os

MEDIA_TYPES = {"samfleet/sam3": "image", "samfleet/sam3-video": "video"}


def download_model(model_name, model_path):
    """No weights to download: the cluster holds them.  Writes a small marker where FiftyOne
    expects the model, so that it counts as downloaded."""
    _media_type(model_name)
    os.makedirs(os.path.dirname(model_path), exist_ok=True)
    with open(model_path, "w") as f:
        json.dump({"model": model_name, "weights": "on the samfleet cluster (SAMFLEET_URL)"}, f)


def load_model(model_name, model_path, **kwargs):
    """The model; `kwargs` configure it (`fiftyone_plugin.model.SamfleetModelConfig`: url,
    api_key, classes, confidence_thresh, negative_prompts, upload)."""
    from fiftyone_plugin.model import SamfleetModel

    return SamfleetModel.of(media_type=_media_type(model_name), **kwargs)


def resolve_input(model_name, ctx):
    """The App's "Apply zoo model" form for this model: the service and the classes (the API
    key comes from SAMFLEET_API_KEY where the operator runs, not from a form)."""
    import fiftyone.operators.types as types

    inputs = types.Object()
    inputs.str("url", label="samfleet URL", description="The service; empty: SAMFLEET_URL", required=False)
    inputs.list(
        "classes",
        types.String(),
        required=True,
        label="Classes",
        description="Text prompts: SAM3 finds every instance of each",
        view=types.AutocompleteView(multiple=True),
    )
    return types.Property(inputs)


def _media_type(model_name):
    if model_name not in MEDIA_TYPES:
        raise ValueError(f"unknown model {model_name!r}: this source has {sorted(MEDIA_TYPES)}")
    return MEDIA_TYPES[model_name]
