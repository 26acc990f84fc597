"""A finished training run: its networks rebuilt from config.json + weights, and as numpy callables.

Shared by export (``cbldm.export``) and evaluation (``cbldm.training.evaluate``), so neither
imports the other.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cbldm.runtime.sampling import SamplerConfig


class RunError(RuntimeError):
    pass


@dataclass
class RunBundle:
    model: object   # CbLDM
    config: dict


def load_run(run: Path) -> RunBundle:
    from cbldm.training.models import CbLDM, ModelConfig
    from cbldm.training.train import load_weights

    run = Path(run)
    cfg_path = run / "config.json"
    if not cfg_path.exists():
        raise RunError(f"{run}: no config.json (not a cbldm-train run directory)")
    cfg = json.loads(cfg_path.read_text())
    missing = [s for s in ("condition", "structure", "denoiser") if s not in cfg.get("stages_done", [])]
    if missing:
        raise RunError(f"{run}: stages not trained yet: {', '.join(missing)}")
    model = CbLDM(ModelConfig.from_dict(cfg["model"]))
    load_weights(model, run / "weights.safetensors")
    return RunBundle(model.eval(), cfg)


def default_sampler(run: Path) -> SamplerConfig:
    """The shipped sampler settings: the run's sweep choice (sampler.json) when there is one,
    with the x0 clip of the run's latents where the settings give none."""
    path = Path(run) / "sampler.json"
    cfg = SamplerConfig(**json.loads(path.read_text())["sampler"]) if path.exists() else SamplerConfig()
    if cfg.clip is None:
        clip = json.loads((Path(run) / "config.json").read_text())["model"].get("latent_clip")
        cfg = dataclasses.replace(cfg, clip=clip)
    return cfg


class TorchNetworks:
    """The four exported entry points, run in PyTorch, as numpy callables (the pipeline's
    ``Networks``)."""

    def __init__(self, run: Path, device: str = "cpu"):
        import torch

        from cbldm.training.models import ConditionGraph, DecoderGraph, PriorGraph, UNetGraph

        self.torch = torch
        bundle = load_run(run)
        self.config = bundle.config
        m = bundle.model.to(device)
        self.model, self.device = m, device
        self.graphs = {"condition": ConditionGraph(m).eval(), "prior": PriorGraph(m).eval(),
                       "unet": UNetGraph(m).eval(), "decoder": DecoderGraph(m).eval()}

    def _run(self, name, *arrays):
        t = self.torch
        with t.no_grad():
            args = [t.from_numpy(np.ascontiguousarray(a)).to(self.device) for a in arrays]
            out = self.graphs[name](*args)
        return tuple(o.float().cpu().numpy() for o in out) if isinstance(out, tuple) else out.float().cpu().numpy()

    def condition(self, pdf):
        return self._run("condition", pdf.astype(np.float32))

    def prior(self, pdf):
        return self._run("prior", pdf.astype(np.float32))

    def unet(self, x, t, cond):
        return self._run("unet", x.astype(np.float32), t.astype(np.int64), cond.astype(np.float32))

    def decoder(self, z):
        return self._run("decoder", z.astype(np.float32))
