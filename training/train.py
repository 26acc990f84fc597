"""Three-stage training: condition VAE -> structure VAE + prior -> latent denoiser.

A run directory holds:
    config.json          model config (incl. latent_scale), training config, data manifest hash,
                         the stages finished
    weights.safetensors  all networks (prefix = module name), rewritten atomically per epoch
    state_<stage>.safetensors  optimiser moments, RNG state, epoch: what --resume needs
    log.csv              one row per epoch: stage, epoch, train/val loss, samples/s, seconds

Resume is exact: data order and augmentation are drawn from generators seeded by
(seed, stage, epoch), and the global RNG state is saved with the optimiser at each epoch end,
so a killed run resumed from its last epoch ends with the weights an uninterrupted run gives.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from cbldm.runtime.kernel import KERNEL_WIDTH
from cbldm.runtime.preprocess import D_REF, model_input, nn_distance
from cbldm.runtime.sampling import Schedule
from cbldm.training.augment import AugmentConfig, PDFAugmenter
from cbldm.training.variants import PerturbConfig
from cbldm.runtime.fileutil import atomic_write, sha256_file
from cbldm.training.dataset import load_arrays
from cbldm.training.models import CbLDM, ModelConfig, full_to_blocks, gaussian_kl, preset

STAGES = ("condition", "structure", "denoiser")
POOL_VERSION = 3  # bump when cbldm.training.variants, offrecipe or heldout(_b) change what the pool holds
TRAINED = {"condition": ("cond_vae",), "structure": ("encoder", "decoder", "prior"), "denoiser": ("unet",)}


@dataclass
class TrainConfig:
    preset: str = "edge"
    epochs: dict = field(default_factory=lambda: {"condition": 2, "structure": 20, "denoiser": 6})
    batch: dict = field(default_factory=lambda: {"condition": 64, "structure": 32, "denoiser": 64})
    lr: dict = field(default_factory=lambda: {"condition": 1e-3, "structure": 1e-3, "denoiser": 5e-4})
    # structure KL 1e-3, not 1e-5: the posterior noise teaches the decoder the tolerance that
    # sampled latents need (right-shape rate of sampled latents 43 % vs 22 %, GPU run, val)
    beta: dict = field(default_factory=lambda: {"condition": 1e-3, "structure": 1e-3})
    warmup_frac: float = 0.05
    dist_weight: float = 0.02      # points decoder: weight of the neighbour-distance loss (A)
    coord_weight: float = 0.03     # points decoder: weight of the coordinate MSE (A^2)
    weight_decay: float = 1e-4
    seed: int = 0
    augment: bool = True
    augment_cfg: dict = field(default_factory=lambda: AugmentConfig().as_dict())
    max_train: int | None = None   # cap on training samples (tests, quick runs)
    refit_head: bool = True        # mlp decoder: closed-form refit of its output layer after stage 2
    # latent noise the refit head is fitted under, as a fraction of the latents' std (0.18 is
    # the 0.6 absolute that suited the first shipped model's latents, std 3.4)
    head_noise: float = 0.18
    # structures beyond the recipe (cbldm.training.variants): each epoch draws ``epoch_size``
    # structures (default: as many as the recipe's training split) from the training shapes
    # and the extra families, perturbed, at random bond lengths; PDFs computed on the fly
    variants: bool = True
    perturb: dict = field(default_factory=lambda: PerturbConfig().as_dict())
    recipe_share: float = 0.5
    epoch_size: int | None = None
    draw_workers: int = 1

    def as_dict(self) -> dict:
        return asdict(self)


# -- batches -------------------------------------------------------------------------------

def kernels(xyz: torch.Tensor, n_atoms: torch.Tensor, t: float = KERNEL_WIDTH) -> torch.Tensor:
    """(B, 256, 3) padded coordinates -> kernel blocks (B, 4, 128, 128), computed on the fly."""
    d2 = torch.cdist(xyz, xyz).pow(2)
    idx = torch.arange(xyz.shape[1], device=xyz.device)
    mask = idx[None, :] < n_atoms[:, None]
    w = torch.exp(-d2 / t) * (mask[:, :, None] & mask[:, None, :])
    return full_to_blocks(w)


def _distance_loss(pred: torch.Tensor, xyz: torch.Tensor, n_atoms: torch.Tensor,
                   cutoff: float = 8.0) -> torch.Tensor:
    """Mean |d_pred - d_true| (A) over real atom pairs closer than ``cutoff``.

    At t = 260 A^2 the kernel moves by ~0.002 for a 0.1 A error, too flat to pin bond
    lengths; the PDF is most sensitive to exactly these near-neighbour distances.
    """
    d_true = torch.cdist(xyz, xyz)
    d_pred = torch.cdist(pred, pred)
    idx = torch.arange(xyz.shape[1], device=xyz.device)
    real = idx[None, :] < n_atoms[:, None]
    mask = real[:, :, None] & real[:, None, :] & (d_true < cutoff) & ~torch.eye(len(idx), dtype=torch.bool,
                                                                                device=xyz.device)[None]
    diff = (d_pred - d_true).abs() * mask
    return diff.sum() / mask.sum().clamp_min(1)


def _bce(p: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE on probabilities, in fp32: autocast refuses it in bf16 (the decoder's occupancy is a
    probability because the exported graph returns one)."""
    with torch.autocast(p.device.type, enabled=False):
        return F.binary_cross_entropy(p.float().clamp(1e-6, 1 - 1e-6), target.float())


class Data:
    """One split in memory. Structures are stored in the networks' frame: scaled so the
    first-shell peak of their own clean PDF sits at D_REF (see cbldm.runtime.preprocess)."""

    def __init__(self, root: Path | None, split: str, limit: int | None = None, arrays=None):
        self.split = split
        if arrays is None:
            arr = load_arrays(root, split=split)
            if limit is not None:
                arr = arr.subset(np.arange(min(limit, len(arr))))
            xyz, n, pdf, self.type = arr.xyz, arr.n_atoms, arr.pdf, arr.type
        else:
            xyz, n, pdf = arrays
            self.type = None
        d = nn_distance(pdf, strict=False)
        if not np.all(np.isfinite(d)):  # no clean first peak: the structure's own bond length
            from cbldm.training.variants import nn_length

            bad = np.flatnonzero(~np.isfinite(d))
            d[bad] = [nn_length(xyz[i, :n[i]]) for i in bad]
        self.d = torch.from_numpy(d)
        self.xyz = torch.from_numpy(xyz.astype(np.float32)) * (D_REF / self.d.float())[:, None, None]
        self.n_atoms = torch.from_numpy(n.astype(np.int64))
        self.pdf = torch.from_numpy(pdf.astype(np.float32))

    @classmethod
    def from_structures(cls, structures: list[np.ndarray], split: str, pdf_calc) -> "Data":
        """Drawn structures (A): padded, their clean PDFs from ``pdf_calc`` (a TorchPDF)."""
        n = np.array([len(x) for x in structures], np.int64)
        xyz = np.zeros((len(structures), 256, 3), np.float32)
        for i, x in enumerate(structures):
            xyz[i, :len(x)] = x
        pdf = torch.cat([pdf_calc(torch.from_numpy(xyz[lo:lo + 256]), torch.from_numpy(n[lo:lo + 256])).cpu()
                         for lo in range(0, len(n), 256)]).numpy()
        return cls(None, split, arrays=(xyz, n, pdf))

    def __len__(self) -> int:
        return len(self.n_atoms)


def slot_normal_equations(x: torch.Tensor, y: torch.Tensor, n: torch.Tensor):
    """Normal equations of per-slot least squares: slot k fits y[:, k] on x over the rows
    that have an atom k (n > k). Returns Grams (slots, f, f) and right-hand sides (slots, f, c).

    Grams are summed over structure sizes from the largest down (one f x f product per
    distinct size, not one per slot); padding targets are zero, so the right-hand sides
    need no mask."""
    slots, f = y.shape[1], x.shape[1]
    rhs = torch.einsum("nf,nkc->kfc", x, y)
    gram = torch.zeros(slots, f, f, dtype=x.dtype)
    acc = torch.zeros(f, f, dtype=x.dtype)
    values = torch.unique(n)
    for j in range(len(values) - 1, -1, -1):
        sel = x[n == values[j]]
        acc = acc + sel.T @ sel
        lo = int(values[j - 1]) if j > 0 else 0
        gram[lo:int(values[j])] = acc  # slots lo..v-1 are real for every n >= v
    return gram, rhs


# -- checkpoints -----------------------------------------------------------------------------

def save_weights(model: CbLDM, path: Path) -> None:
    tensors = {f"{name}.{k}": v.detach().cpu().contiguous()
               for name, mod in model.modules().items()
               for k, v in getattr(mod, "module", mod).state_dict().items()}  # through DDP wrappers
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata={"format": "cbldm-weights/1"}))


def load_weights(model: CbLDM, path: Path, strict: bool = True) -> None:
    tensors = load_file(str(path))
    for name, mod in model.modules().items():
        sd = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")}
        mod.load_state_dict(sd, strict=strict)


def _save_state(path: Path, opt: torch.optim.Optimizer, epoch: int, step: int) -> None:
    sd = opt.state_dict()
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # the noise of the training steps on a GPU comes from the CUDA generator: without its
        # state a resumed GPU run draws other noise than an uninterrupted one
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    for pid, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"opt.{pid}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    meta = {"param_groups": json.dumps(sd["param_groups"]), "epoch": str(epoch), "step": str(step)}
    atomic_write(path, lambda p: save_file({k: v.contiguous() for k, v in tensors.items()}, str(p), metadata=meta))


def _load_state(path: Path, opt: torch.optim.Optimizer) -> tuple[int, int]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return int(meta["epoch"]), int(meta["step"])


def _lr_at(step: int, total: int, base: float, warmup_frac: float) -> float:
    warm = max(1, int(total * warmup_frac))
    if step < warm:
        return base * (step + 1) / warm
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))


# -- the run ---------------------------------------------------------------------------------

class Trainer:
    def __init__(self, run: Path, data_root: Path, tcfg: TrainConfig, resume: bool = False,
                 device: str | None = None, log=print, model_overrides: dict | None = None):
        self.run, self.data_root, self.log = Path(run), Path(data_root), log
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.rank, self.world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        if self.world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            if self.device.type == "cuda":
                self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
                torch.cuda.set_device(self.device)
        cfg_path = self.run / "config.json"
        manifest_hash = sha256_file(self.data_root / "manifest.json")
        if cfg_path.exists():
            if not resume:
                raise FileExistsError(f"{self.run} already holds a run; pass --resume to continue it")
            saved = json.loads(cfg_path.read_text())
            if saved["data"]["manifest_sha256"] != manifest_hash:
                raise ValueError(f"{self.data_root} is not the dataset {self.run} was trained on")
            self.tcfg = TrainConfig(**saved["train"])
            self.mcfg = ModelConfig.from_dict(saved["model"])
            self.done = saved["stages_done"]
        else:
            self.tcfg, self.done = tcfg, []
            self.mcfg = ModelConfig.from_dict({**preset(tcfg.preset).as_dict(), **(model_overrides or {})})
        torch.manual_seed(self.tcfg.seed)
        self.model = CbLDM(self.mcfg).to(self.device)
        if (self.run / "weights.safetensors").exists():
            load_weights(self.model, self.run / "weights.safetensors")
        self.manifest_hash = manifest_hash
        self.sched = Schedule()
        self.abar = torch.tensor(self.sched.abar, dtype=torch.float32, device=self.device)
        self.train_recipe = Data(self.data_root, "train", self.tcfg.max_train)
        self.train = self.train_recipe
        self.val = Data(self.data_root, "val", None if self.tcfg.max_train is None else max(8, self.tcfg.max_train // 10))
        self.pool = self._pool() if self.tcfg.variants else None
        self.aug = PDFAugmenter(AugmentConfig(**self.tcfg.augment_cfg)) if self.tcfg.augment else None
        self.amp = self.device.type == "cuda"

    # -- structures beyond the recipe ---------------------------------------------------
    def _pool(self):
        """Training shapes of the recipe plus the extra families, minus every validation/test
        shape and every structure of the out-of-recipe test set (cbldm.training.variants)."""
        from cbldm.training.dataset import load_arrays, shape_of
        from cbldm.training.offrecipe import excluded_keys
        from cbldm.training.variants import base_pool, load_pool, shape_key

        def one_per_shape(split):
            arr = load_arrays(self.data_root, split=split)
            shapes = np.array([shape_of(x.decode()) for x in arr.name])
            _, first = np.unique(shapes, return_index=True)
            return [arr.xyz[i, :arr.n_atoms[i]].astype(float) for i in first], shapes[first].tolist()

        # ~20 s to build (shape keys of 17k clusters): cached beside the data, keyed by what
        # it depends on; the cache holds arrays only (no pickle)
        key = hashlib.sha256(json.dumps([self.manifest_hash, self.tcfg.seed, self.tcfg.recipe_share,
                                         POOL_VERSION]).encode()).hexdigest()[:16]
        cache = self.data_root / f"pool-{key}.npz"
        if cache.exists():
            pool = load_pool(cache)
        else:
            train_xyz, train_names = one_per_shape("train")
            held = {shape_key(x) for s in ("val", "test") for x in one_per_shape(s)[0]}
            pool = base_pool(train_xyz, train_names, held | excluded_keys(), seed=self.tcfg.seed,
                             recipe_share=self.tcfg.recipe_share)
            # what the cache stores (float32): a fresh pool and a cached one draw identically
            pool.xyz = [x.astype(np.float32).astype(np.float64) for x in pool.xyz]
            if not self.rank:
                atomic_write(cache, lambda p: np.savez(
                    open(p, "wb"), xyz=np.concatenate(pool.xyz).astype(np.float32), n=np.array([len(x) for x in pool.xyz]),
                    names=np.array(pool.names), family=pool.family, weight=pool.weight))
        self.log(f"structure pool: {pool.summary()}")
        return pool

    def _draw(self, stage: str, epoch: int) -> Data:
        """This epoch's training structures: a function of (seed, stage, epoch) only, so a
        resumed run draws what an uninterrupted one did."""
        from cbldm.training.torchpdf import TorchPDF
        from cbldm.training.variants import draw_structures

        if not hasattr(self, "_tpdf"):
            self._tpdf = TorchPDF(device=self.device)
        t0 = time.perf_counter()
        n = self.tcfg.epoch_size or len(self.train_recipe)
        seed = self.tcfg.seed * 1_000_003 + STAGES.index(stage) * 10_007 + epoch + 7
        xs, _ = draw_structures(self.pool, n, seed, PerturbConfig(**self.tcfg.perturb),
                                workers=self.tcfg.draw_workers)
        data = Data.from_structures(xs, "train", self._tpdf)
        self.log(f"{stage} epoch {epoch + 1}: drew {n} structures in {time.perf_counter() - t0:.1f} s")
        return data

    # -- bookkeeping ------------------------------------------------------------------
    def _save_config(self) -> None:
        if self.rank:
            return
        self.run.mkdir(parents=True, exist_ok=True)
        doc = {"format": "cbldm-run/1", "model": self.mcfg.as_dict(), "train": self.tcfg.as_dict(),
               "data": {"root": str(self.data_root), "manifest_sha256": self.manifest_hash},
               "stages_done": self.done, "param_counts": self.model.param_counts(),
               "schedule": self.sched.as_dict(), "torch": torch.__version__}
        atomic_write(self.run / "config.json", lambda p: p.write_text(json.dumps(doc, indent=1)))

    def _log_row(self, row: dict) -> None:
        if self.rank:
            return
        path = self.run / "log.csv"
        new = not path.exists()
        with open(path, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)

    # -- losses -------------------------------------------------------------------------
    def _batch(self, data: Data, idx: torch.Tensor, gen: torch.Generator | None):
        g = data.pdf[idx]
        d = data.d[idx].numpy()
        clean = torch.from_numpy(model_input(g.numpy(), d)[0])
        if self.aug is not None and gen is not None:
            g_aug = self.aug(g, gen).numpy()
            # the augmented PDF's own peak, as at the beamline (the clean one if it has none)
            d_aug = nn_distance(g_aug, strict=False)
            pdf = torch.from_numpy(model_input(g_aug, np.where(np.isfinite(d_aug), d_aug, d))[0])
        else:
            pdf = clean
        dev = self.device
        return (clean.to(dev), pdf.to(dev), data.xyz[idx].to(dev), data.n_atoms[idx].to(dev),
                idx, data.split)

    def _loss(self, stage: str, batch, beta: float):
        pdf_clean, pdf, xyz, n, idx, split = batch
        m = self.model
        if stage == "condition":
            rec, mu, logvar = m.cond_vae(pdf)
            kl = gaussian_kl(mu, logvar).mean() / mu[0].numel()
            return F.l1_loss(rec, pdf) + 0.1 * F.mse_loss(rec, pdf) + beta * kl
        if stage == "structure":
            with torch.no_grad():
                cond = m.cond_vae.encode(pdf)[0]
            w = kernels(xyz, n)
            mu_q, lv_q = m.encoder(w, cond)
            z = mu_q + torch.randn_like(mu_q) * (0.5 * lv_q).exp()
            mu_p, lv_p = m.prior(pdf)
            kl = gaussian_kl(mu_q, lv_q, mu_p, lv_p).mean() / mu_q[0].numel()
            loss = F.mse_loss(m.decoder(z), w) + beta * kl
            if hasattr(m.decoder, "points"):
                pts, occ = m.decoder.points(z)
                real = (torch.arange(pts.shape[1], device=pts.device)[None] < n[:, None]).float()
                # direct targets: canonical order and the builders' orientation fix them
                coord = (((pts - xyz) ** 2).sum(-1) * real).sum() / real.sum()
                loss = loss + self.tcfg.coord_weight * coord \
                    + _bce(occ, real) \
                    + self.tcfg.dist_weight * _distance_loss(pts, xyz, n)
            return loss
        # denoiser: the target latent is the frozen encoder's posterior mean for the clean PDF
        with torch.no_grad():
            z0 = self._z0[split][idx].to(self.device) * self.mcfg.latent_scale
            cond = m.cond_vae.encode(pdf)[0]
        t = torch.randint(0, self.sched.T, (len(z0),), device=self.device)
        eps = torch.randn_like(z0)
        a = self.abar[t].view(-1, 1, 1, 1)
        return F.mse_loss(m.unet(a.sqrt() * z0 + (1 - a).sqrt() * eps, t, cond), eps)

    def _prefetch(self, perm: torch.Tensor, bs: int, steps: int, gen: torch.Generator):
        """Yield (idx, batch) for one epoch, preparing batch b+1 on a thread while b trains.

        On a GPU the CPU-side augmentation and preprocessing would otherwise leave the device
        idle half the time. One worker keeps the order in which ``gen`` is drawn, so the data
        (and a resumed run) stay exactly those of the serial loop."""
        from concurrent.futures import ThreadPoolExecutor

        def prep(b):
            idx = perm[(b * self.world + self.rank) * bs:(b * self.world + self.rank + 1) * bs]
            return idx, self._batch(self.train, idx, gen)

        with ThreadPoolExecutor(max_workers=1) as pool:
            nxt = pool.submit(prep, 0)
            for b in range(steps):
                cur = nxt.result()
                if b + 1 < steps:
                    nxt = pool.submit(prep, b + 1)
                yield cur

    def _set_latent_stats(self, z0: torch.Tensor) -> None:
        if self.mcfg.latent_scale == 1.0:
            self.mcfg.latent_scale = float(1.0 / z0.std().clamp_min(1e-6))
            self.log(f"latent scale 1/std = {self.mcfg.latent_scale:.4f}")
        if self.mcfg.latent_clip is None:
            self.mcfg.latent_clip = round(1.05 * float((z0 * self.mcfg.latent_scale).abs().max()), 3)
            self.log(f"sampler x0 clip +-{self.mcfg.latent_clip}")
        self.model.cfg.latent_scale = self.mcfg.latent_scale
        self.model.cfg.latent_clip = self.mcfg.latent_clip

    @torch.no_grad()
    def _encode_latents(self, data: Data) -> torch.Tensor:
        """Posterior means of the frozen structure encoder, once per stage (unscaled)."""
        m = self.model
        for mod in m.modules().values():
            mod.eval()
        zs = []
        for lo in range(0, len(data), 256):
            idx = torch.arange(lo, min(lo + 256, len(data)))
            pdf_clean, _, xyz, n, _, _ = self._batch(data, idx, None)
            zs.append(m.encoder(kernels(xyz, n), m.cond_vae.encode(pdf_clean)[0])[0].float().cpu())
        return torch.cat(zs)

    # -- one stage --------------------------------------------------------------------------
    def run_stage(self, stage: str, epochs: int | None = None, progress=None) -> None:
        if stage in self.done:
            self.log(f"{stage}: already trained in {self.run}, skipped")
            return
        for s in STAGES[: STAGES.index(stage)]:
            if s not in self.done:
                raise RuntimeError(f"stage {stage} needs {s} first")
        if epochs:  # an override is part of the run's recipe: the config records it
            self.tcfg.epochs = {**self.tcfg.epochs, stage: int(epochs)}
        epochs = self.tcfg.epochs[stage]
        si = STAGES.index(stage)
        if stage == "denoiser":
            if self.pool is not None:  # latent statistics from a draw of the training structures
                self.train = self._draw(stage, -1)
            self._z0 = {"train": self._encode_latents(self.train), "val": self._encode_latents(self.val)}
            self._set_latent_stats(self._z0["train"])
        self._save_config()
        names = TRAINED[stage]
        for name, mod in self.model.modules().items():
            mod.train(name in names)  # frozen networks stay in eval mode
            for p in mod.parameters():
                p.requires_grad_(name in names)
        params = [p for n in names for p in self.model.modules()[n].parameters()]
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            for n in names:  # gradients averaged across ranks
                setattr(self.model, n, DDP(self.model.modules()[n]))
        opt = torch.optim.AdamW(params, lr=self.tcfg.lr[stage], weight_decay=self.tcfg.weight_decay)
        # small datasets: every rank must still get a non-empty batch
        n_train = (self.tcfg.epoch_size or len(self.train_recipe)) if self.pool is not None else len(self.train)
        bs = max(1, min(self.tcfg.batch[stage], n_train // self.world))
        steps_per_epoch = max(1, n_train // (bs * self.world))
        total = steps_per_epoch * epochs
        start_epoch, step = 0, 0
        state_path = self.run / f"state_{stage}.safetensors"
        if state_path.exists():
            start_epoch, step = _load_state(state_path, opt)
            self.log(f"{stage}: resuming after epoch {start_epoch}")
        beta_max = self.tcfg.beta.get(stage, 0.0)
        for epoch in range(start_epoch, epochs):
            if self.pool is not None:
                self.train = self._draw(stage, epoch)
                if stage == "denoiser":
                    self._z0["train"] = self._encode_latents(self.train)
            gen = torch.Generator().manual_seed(self.tcfg.seed * 1_000_003 + si * 10_007 + epoch)
            perm = torch.randperm(len(self.train), generator=gen)
            t_epoch, seen, total_loss = time.perf_counter(), 0, 0.0
            batches = self._prefetch(perm, bs, steps_per_epoch, gen)
            for b in range(steps_per_epoch):
                idx, batch = next(batches)
                beta = beta_max * min(1.0, step / max(1, 0.3 * total))
                for g in opt.param_groups:
                    g["lr"] = _lr_at(step, total, self.tcfg.lr[stage], self.tcfg.warmup_frac)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                    loss = self._loss(stage, batch, beta)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                step += 1
                seen += len(idx)
                total_loss += float(loss.detach())
                if progress:
                    progress(stage, epoch, b + 1, steps_per_epoch, float(loss.detach()),
                             seen / (time.perf_counter() - t_epoch))
            val = self.validate(stage, beta_max)
            dt = time.perf_counter() - t_epoch
            self._log_row({"stage": stage, "epoch": epoch + 1, "train_loss": total_loss / steps_per_epoch,
                           "val_loss": val, "samples_per_s": seen / dt, "seconds": round(dt, 2)})
            self.log(f"{stage} epoch {epoch + 1}/{epochs}: train {total_loss / steps_per_epoch:.5g}, "
                     f"val {val:.5g}, {seen / dt:.0f} samples/s")
            if not self.rank:
                save_weights(self.model, self.run / "weights.safetensors")
                _save_state(state_path, opt, epoch + 1, step)
        for n in names:  # drop the DDP wrappers
            mod = self.model.modules()[n]
            setattr(self.model, n, getattr(mod, "module", mod))
        if stage == "structure" and hasattr(self.model.decoder, "hidden") and self.tcfg.refit_head:
            self.refit_decoder_head()
            if not self.rank:
                save_weights(self.model, self.run / "weights.safetensors")
        self.done.append(stage)
        self._save_config()
        for mod in self.model.modules().values():
            mod.eval()

    @torch.no_grad()
    def _head_features(self, data: Data, noise: float = 0.0, seed: int = 0):
        m = self.model
        feats = []
        gen = torch.Generator().manual_seed(seed)
        for lo in range(0, len(data), 256):
            idx = torch.arange(lo, min(lo + 256, len(data)))
            pdf_clean, _, xyz, n, _, _ = self._batch(data, idx, None)
            z = m.encoder(kernels(xyz, n), m.cond_vae.encode(pdf_clean)[0])[0]
            if noise:
                z = z + noise * torch.randn(z.shape, generator=gen).to(z)
            feats.append(m.decoder.hidden(z).double().cpu())
        x = torch.cat(feats)
        return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)  # bias column

    @torch.no_grad()
    def refit_decoder_head(self, lambdas=(1e-10, 1e-8, 1e-6, 1e-4, 1e-3, 1e-2),
                           require_better: bool = True) -> dict:
        """Solve the MLP decoder's output layer in closed form on the frozen features.

        SGD brings the coordinates to ~1 A in a CPU budget, then crawls; the last layer is
        linear, so its optimum for the coordinate MSE is a ridge regression. Slot k's
        coordinates are fitted on the structures that have an atom k (targets in the D_REF
        frame), its occupancy logit on all of them (+-8: m^2 > 0.99 or < 1e-6). The ridge
        strength (relative to the Gram trace) is chosen by coordinate RMSE on the
        validation split, whose shapes the networks never see (the split is by shape).
        """
        m = self.model
        for mod in m.modules().values():
            mod.eval()
        # fitted under latent noise when asked: sampled latents are never the encoder's exact
        # means, and an interpolating head amplifies the difference (0.03 -> 0.3 A, measured)
        # with drawn structures: a fixed draw of its own, so a resumed run refits identically
        fit = self._draw("structure", 10_000) if self.pool is not None else self.train  # "epoch 10001"
        noise = self.tcfg.head_noise * float(self._encode_latents(fit).std())
        x = self._head_features(fit, noise)
        xv = self._head_features(self.val, noise, seed=1)
        n, nv = fit.n_atoms, self.val.n_atoms
        y = fit.xyz.double() / m.decoder.COORD_SCALE  # (N, 256, 3)
        slots = y.shape[1]
        f = x.shape[1]
        gram, rhs = slot_normal_equations(x, y, n)
        full = x.T @ x
        occ_t = torch.where(torch.arange(slots)[None] < n[:, None], 8.0, -8.0).double()
        occ_rhs = x.T @ occ_t
        def score(w_xyz, w_occ):
            pred = torch.einsum("nf,sfc->nsc", xv, w_xyz) * m.decoder.COORD_SCALE
            real = torch.arange(slots)[None] < nv[:, None]
            err = ((pred - self.val.xyz.double()) ** 2).sum(-1)[real].mean().sqrt().item()
            count = ((xv @ w_occ > 0).sum(1) == nv).double().mean().item()
            return err, count

        # the head SGD trained, scored the same way: the refit must beat it on validation
        wh = torch.cat([m.decoder.head.weight, m.decoder.head.bias[:, None]], 1).double().cpu()  # (1024, f)
        wh = wh.view(slots, 4, -1)
        sgd = score(wh[:, :3].permute(0, 2, 1), wh[:, 3].T)
        self.log(f"decoder head as trained: validation coordinate RMSE {sgd[0]:.4f} A, "
                 f"atom count right {100 * sgd[1]:.1f} %")
        best = None
        scale = float(torch.diagonal(full).mean())
        eye = torch.eye(f, dtype=x.dtype)
        for lam in lambdas:
            reg = lam * scale * eye
            try:
                # slot by slot: the batched LU solve failed spuriously with 2 threads here
                w_xyz = torch.stack([torch.linalg.solve(gram[k] + reg, rhs[k]) for k in range(slots)])
                w_occ = torch.linalg.solve(full + reg, occ_rhs)   # (f, slots)
            except RuntimeError:  # numerically singular at this ridge: a larger one follows
                self.log(f"decoder head refit: ridge {lam:g}: singular, skipped")
                continue
            err, count = score(w_xyz, w_occ)
            self.log(f"decoder head refit: ridge {lam:g}: validation coordinate RMSE {err:.4f} A, "
                     f"atom count right {100 * count:.1f} %")
            if best is None or err < best[0]:
                best = (err, lam, w_xyz, w_occ, count)
        if best is None:
            raise RuntimeError(f"decoder head refit: singular at every ridge in {lambdas}")
        err, lam, w_xyz, w_occ, count = best
        if require_better and err >= sgd[0]:
            self.log(f"decoder head refit: best ridge {lam:g} (RMSE {err:.4f} A) does not beat the trained "
                     "head; kept the trained head")
            return {"ridge": None, "val_coord_rmse_A": sgd[0], "val_count_accuracy": sgd[1]}
        m.decoder.set_head(w_xyz, w_occ)
        self.log(f"decoder head refit: kept ridge {lam:g} (RMSE {err:.4f} A, count {100 * count:.1f} %)")
        return {"ridge": lam, "val_coord_rmse_A": err, "val_count_accuracy": count}

    @torch.no_grad()
    def validate(self, stage: str, beta: float) -> float:
        modes = {n: m.training for n, m in self.model.modules().items()}
        for m in self.model.modules().values():
            m.eval()
        losses = []
        # fixed noise, comparable across epochs; fork_rng restores every generator it touched
        # (the CPU's and the training device's), so validation never shifts training noise
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(12345)
            for lo in range(0, len(self.val), 128):
                idx = torch.arange(lo, min(lo + 128, len(self.val)))
                losses.append(float(self._loss(stage, self._batch(self.val, idx, None), beta)) * len(idx))
        for n, m in self.model.modules().items():
            m.train(modes[n])
        return sum(losses) / max(1, len(self.val))
