"""Shipped exported models (data only). ``default_model_dir()`` is the one cbldm-run uses."""
from importlib import resources
from pathlib import Path


def default_model_dir() -> Path:
    return Path(str(resources.files("cbldm.models").joinpath("default")))
