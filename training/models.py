"""The three CbLDM networks: condition VAE, structure VAE with conditional prior, latent U-Net.

Shapes (B = batch):
    PDF        (B, 6, 500)   G(r)/max, six 5-A segments
    cond z     (B, 2, 125)   condition-VAE latent; its mean is the U-Net's context
    kernel     (B, 4, 128, 128)  W = exp(-d^2/260), 256 x 256 as four blocks
    latent     (B, 1, 16, 16)    structure-VAE latent
Fixes of the reference (METHOD.md): log-variances are free (no softplus forcing sigma >= 1);
the U-Net's cross-attention sees ``ctx_tokens`` tokens (25 r-segments of the condition
latent), not one token that softmax turns into a constant.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from cbldm.runtime.kernel import KERNEL_WIDTH

LOGVAR_MIN, LOGVAR_MAX = -20.0, 10.0


@dataclass
class ModelConfig:
    preset: str = "edge"
    # condition VAE (1-D)
    cond_channels: int = 32
    # structure VAE (2-D); the stem patchifies 128 -> 128 / stem, then halves to 16
    stem: int = 4
    enc_channels: tuple[int, ...] = (32, 64)
    enc_blocks: int = 1
    encoder: str = "rowmlp"   # "rowmlp": per-row features -> MLP; "conv": 2-D conv (paper preset)
    decoder: str = "mlp"      # "mlp": MLP -> xyz, occupancy -> W; "conv": pixels (paper preset)
    dec_channels: tuple[int, ...] = (64, 32)
    dec_blocks: int = 1
    mlp_hidden: int = 512     # rowmlp encoder / mlp decoder width
    row_features: int = 8     # rowmlp encoder: features kept per atom slot
    prior_hidden: tuple[int, ...] = (128, 256, 512)
    # latent U-Net
    unet_channels: int = 48
    unet_mult: tuple[int, ...] = (1, 2)
    unet_blocks: int = 1
    ctx_tokens: int = 25
    ctx_dim: int = 64
    heads: int = 4
    # the condition also enters every ResBlock, added to the time embedding (as class labels
    # do in conditional diffusion); off in runs made before it existed
    unet_global_cond: bool = False
    # filled in after stage 2: 1 / std of the training latents, and the range of the scaled
    # latents (the samplers clip their x0 estimates to it)
    latent_scale: float = 1.0
    latent_clip: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for k, v in known.items():
            if isinstance(v, list):
                known[k] = tuple(v)
        return cls(**known)


PRESETS = {
    # the prior carries most of the identification (prior-only sampling already picks the
    # right shape for 55 % of validation PDFs, measured on the shipped model): it gets width
    "edge": ModelConfig(unet_global_cond=True, prior_hidden=(256, 512, 512)),
    # the reference's sizes: encoder ~6.7 M, decoder ~8.7 M, a large U-Net
    "paper": ModelConfig(preset="paper", encoder="conv", decoder="conv", cond_channels=64, stem=1, enc_channels=(64, 128, 128, 256),
                         enc_blocks=2, dec_channels=(256, 256, 128, 64), dec_blocks=3,
                         unet_channels=192, unet_mult=(1, 2, 4), unet_blocks=2, ctx_dim=256, heads=8,
                         unet_global_cond=True),
    # for tests: seconds to train
    "tiny": ModelConfig(preset="tiny", cond_channels=8, enc_channels=(8, 16), dec_channels=(16, 8),
                        dec_blocks=1, mlp_hidden=32, row_features=2,
                        prior_hidden=(32, 32), unet_channels=16, unet_mult=(1, 2), ctx_dim=16, heads=2,
                        unet_global_cond=True),
}


def preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r} ({', '.join(PRESETS)})")
    return ModelConfig.from_dict(PRESETS[name].as_dict())


def _groups(c: int) -> int:
    for g in (32, 16, 8, 4, 2, 1):
        if c % g == 0 and c // g >= 2:
            return g
    return 1


def gaussian_kl(mu_q, logvar_q, mu_p=None, logvar_p=None):
    """KL(q || p) per sample, summed over latent dims; p = N(0, I) when not given."""
    if mu_p is None:
        mu_p = torch.zeros_like(mu_q)
        logvar_p = torch.zeros_like(logvar_q)
    kl = 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp() - 1.0)
    return kl.flatten(1).sum(1)


class Attention(nn.Module):
    """Multi-head attention (fused SDPA; both ONNX exporters lower it to MatMul/Softmax)."""

    def __init__(self, dim: int, heads: int, ctx_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(ctx_dim or dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim)

    def forward(self, x, ctx=None):  # x (B, N, dim), ctx (B, M, ctx_dim)
        b, n, d = x.shape
        ctx = x if ctx is None else ctx
        q = self.q(x).view(b, n, self.heads, -1).transpose(1, 2)
        k, v = self.kv(ctx).chunk(2, dim=-1)
        k = k.view(b, ctx.shape[1], self.heads, -1).transpose(1, 2)
        v = v.view(b, ctx.shape[1], self.heads, -1).transpose(1, 2)
        return self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


# -- condition VAE (1-D) ---------------------------------------------------------------

class ResBlock1d(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(_groups(c_in), c_in), nn.Conv1d(c_in, c_out, 3, padding=1)
        self.n2, self.c2 = nn.GroupNorm(_groups(c_out), c_out), nn.Conv1d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x):
        h = self.c1(F.silu(self.n1(x)))
        return self.skip(x) + self.c2(F.silu(self.n2(h)))


class SelfAttention1d(nn.Module):
    def __init__(self, c: int, heads: int = 4):
        super().__init__()
        self.norm, self.attn = nn.GroupNorm(_groups(c), c), Attention(c, heads)

    def forward(self, x):  # (B, C, L)
        return x + self.attn(self.norm(x).transpose(1, 2)).transpose(1, 2)


class ConditionVAE(nn.Module):
    """PDF (B, 6, 500) -> latent (B, 2, 125) mean and log-variance; decoder back to (B, 6, 500)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c = cfg.cond_channels
        self.encoder = nn.Sequential(
            nn.Conv1d(6, c, 7, padding=3), ResBlock1d(c, c),
            nn.Conv1d(c, 2 * c, 4, stride=2, padding=1), ResBlock1d(2 * c, 2 * c),   # 500 -> 250
            SelfAttention1d(2 * c),
            nn.Conv1d(2 * c, 2 * c, 4, stride=2, padding=1), ResBlock1d(2 * c, 2 * c),  # 250 -> 125
            nn.GroupNorm(_groups(2 * c), 2 * c), nn.SiLU(), nn.Conv1d(2 * c, 4, 3, padding=1))
        self.decoder = nn.Sequential(
            nn.Conv1d(2, 2 * c, 3, padding=1), ResBlock1d(2 * c, 2 * c), SelfAttention1d(2 * c),
            nn.ConvTranspose1d(2 * c, 2 * c, 4, stride=2, padding=1), ResBlock1d(2 * c, c),  # -> 250
            nn.ConvTranspose1d(c, c, 4, stride=2, padding=1), ResBlock1d(c, c),  # -> 500
            nn.GroupNorm(_groups(c), c), nn.SiLU(), nn.Conv1d(c, 6, 3, padding=1))

    def encode(self, pdf):
        mu, logvar = self.encoder(pdf).chunk(2, dim=1)  # (B, 2, 125) each
        return mu, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)

    def forward(self, pdf):
        mu, logvar = self.encode(pdf)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return self.decoder(z), mu, logvar


# -- structure VAE (2-D) ----------------------------------------------------------------

class ResBlock2d(nn.Module):
    def __init__(self, c_in: int, c_out: int, temb: int | None = None):
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(_groups(c_in), c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.n2, self.c2 = nn.GroupNorm(_groups(c_out), c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.t = nn.Linear(temb, c_out) if temb else None
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, temb=None):
        h = self.c1(F.silu(self.n1(x)))
        if self.t is not None:
            h = h + self.t(F.silu(temb))[:, :, None, None]
        return self.skip(x) + self.c2(F.silu(self.n2(h)))


class SpatialAttention(nn.Module):
    """Self-attention over pixels, then (optionally) cross-attention to context tokens."""

    def __init__(self, c: int, heads: int, ctx_dim: int | None = None):
        super().__init__()
        self.norm, self.attn = nn.GroupNorm(_groups(c), c), Attention(c, heads)
        self.cross = Attention(c, heads, ctx_dim) if ctx_dim else None
        self.norm2 = nn.LayerNorm(c) if ctx_dim else None

    def forward(self, x, ctx=None):
        b, c, h, w = x.shape
        t = x + self.attn(self.norm(x).flatten(2).transpose(1, 2)).transpose(1, 2).view(b, c, h, w)
        if self.cross is None:
            return t
        tok = t.flatten(2).transpose(1, 2)
        tok = tok + self.cross(self.norm2(tok), ctx)
        return tok.transpose(1, 2).view(b, c, h, w)


def blocks_to_full(x):
    """(B, 4, 128, 128) -> (B, 256, 256)."""
    top = torch.cat([x[:, 0], x[:, 1]], dim=-1)
    return torch.cat([top, torch.cat([x[:, 2], x[:, 3]], dim=-1)], dim=-2)


def full_to_blocks(w):
    """(B, 256, 256) -> (B, 4, 128, 128)."""
    b = w.shape[-1] // 2
    return torch.stack([w[:, :b, :b], w[:, :b, b:], w[:, b:, :b], w[:, b:, b:]], dim=1)


class StructureEncoder(nn.Module):
    """Kernel (B, 4, 128, 128) + condition latent (B, 2, 125) -> q(z) mean, log-variance (B, 1, 16, 16)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        ch = cfg.enc_channels
        self.stem = nn.Conv2d(4, ch[0], cfg.stem, stride=cfg.stem)
        layers, size, c = [], 128 // cfg.stem, ch[0]
        for i, c_next in enumerate(ch):
            for _ in range(cfg.enc_blocks):
                layers.append(ResBlock2d(c, c_next))
                c = c_next
            if size > 16:
                layers.append(nn.Conv2d(c, c, 4, stride=2, padding=1))
                size //= 2
        if size != 16:
            raise ValueError(f"encoder reaches {size}x{size}, not 16x16: adjust stem/enc_channels")
        self.body = nn.Sequential(*layers)
        self.cond = nn.Linear(250, c)
        self.attn = SpatialAttention(c, cfg.heads)
        self.out = nn.Sequential(nn.GroupNorm(_groups(c), c), nn.SiLU(), nn.Conv2d(c, 2, 3, padding=1))

    def forward(self, kernel, cond):
        h = self.body(self.stem(kernel))
        h = h + self.cond(cond.flatten(1))[:, :, None, None]
        mu, logvar = self.out(self.attn(h)).chunk(2, dim=1)
        return mu, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)


class StructureDecoder(nn.Module):
    """Latent (B, 1, 16, 16) -> kernel blocks (B, 4, 128, 128), symmetric, in [0, 1]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        ch = cfg.dec_channels
        layers, size, c = [nn.Conv2d(1, ch[0], 3, padding=1)], 16, ch[0]
        layers += [ResBlock2d(c, c) for _ in range(cfg.dec_blocks)] + [SpatialAttention(c, cfg.heads)]
        target = 128 // cfg.stem
        for c_next in ch:
            for _ in range(cfg.dec_blocks):
                layers.append(ResBlock2d(c, c_next))
                c = c_next
            if size < target:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c, 3, padding=1)]
                size *= 2
        if size != target:
            raise ValueError(f"decoder reaches {size}, not {target}: adjust dec_channels")
        layers += [nn.GroupNorm(_groups(c), c), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.ConvTranspose2d(c, 4, cfg.stem, stride=cfg.stem) if cfg.stem > 1 \
            else nn.Conv2d(c, 4, 3, padding=1)

    def forward(self, z):
        w = torch.sigmoid(self.head(self.body(z)))
        full = blocks_to_full(w)
        return full_to_blocks(0.5 * (full + full.transpose(-1, -2)))


def pairwise_kernel(xyz, m, t: float):
    """W_ij = m_i m_j exp(-|x_i - x_j|^2 / t) as blocks (B, 4, 128, 128)."""
    sq = (xyz * xyz).sum(-1)
    d2 = (sq[:, :, None] + sq[:, None, :] - 2.0 * xyz @ xyz.transpose(1, 2)).clamp_min(0.0)
    return full_to_blocks(torch.exp(-d2 / t) * (m[:, :, None] * m[:, None, :]))


class RowMLPEncoder(nn.Module):
    """Kernel (B, 4, 128, 128) -> q(z) (B, 1, 16, 16); the condition argument is not used.

    Row i of W is atom i's view of the particle. A shared linear map reads each row into a few
    features, an MLP over all slots' features gives the latent. O(256^2) per sample: an order
    of magnitude cheaper than attention over the 256 slot tokens, which is what makes the
    structure stage fit a CPU budget. It does not read the PDF (the reference encoder does):
    in the D_REF frame one shape has one kernel whatever its bond length, but its PDFs differ
    (fixed Biso, Q-range ripples), and feeding them in spread one shape's latents by ~1/3 of
    the distance to the nearest other shape (measured), noise the decoder has to undo. The
    conditional prior still ties z to the PDF through the KL term.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        f, h = cfg.row_features, cfg.mlp_hidden
        self.row = nn.Sequential(nn.Linear(256, 4 * f), nn.SiLU(), nn.Linear(4 * f, f))
        self.net = nn.Sequential(nn.Linear(256 * f, h), nn.SiLU(), nn.Linear(h, h), nn.SiLU(),
                                 nn.Linear(h, 512))

    def forward(self, kernel, cond=None):
        feats = self.row(blocks_to_full(kernel)).flatten(1)  # (B, 256 * f)
        mu, logvar = self.net(feats).view(-1, 2, 1, 16, 16).unbind(1)
        return mu, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)


class MLPDecoder(nn.Module):
    """Latent (B, 1, 16, 16) -> kernel blocks (B, 4, 128, 128) through atom coordinates.

    An MLP gives every atom slot (canonical order) its coordinates (A, in the D_REF frame)
    and occupancy m; W = m_i m_j exp(-d^2 / t) is computed from them, so it is symmetric and
    a valid kernel by construction and the runtime's recovery reads it back exactly."""

    COORD_SCALE = 10.0  # A per output unit

    def __init__(self, cfg: ModelConfig, t: float = KERNEL_WIDTH):
        super().__init__()
        h = cfg.mlp_hidden
        self.t = t
        self.body = nn.Sequential(nn.Linear(256, h), nn.SiLU(), nn.Linear(h, h), nn.SiLU(),
                                  nn.Linear(h, h), nn.SiLU())
        self.head = nn.Linear(h, 256 * 4)

    def hidden(self, z):
        return self.body(z.flatten(1))

    def points(self, z):
        out = self.head(self.hidden(z)).view(-1, 256, 4)
        return self.COORD_SCALE * out[..., :3], torch.sigmoid(out[..., 3])

    @torch.no_grad()
    def set_head(self, w_xyz, w_occ):
        """w_xyz (256 slots, h + 1, 3), w_occ (h + 1, 256): last row the bias (closed-form refit)."""
        w = torch.cat([w_xyz, w_occ.T[:, :, None]], dim=2)  # (256, h + 1, 4)
        w = w.permute(0, 2, 1).reshape(256 * 4, -1)          # output o = slot * 4 + c
        self.head.weight.copy_(w[:, :-1].to(self.head.weight))
        self.head.bias.copy_(w[:, -1].to(self.head.bias))

    def forward(self, z):
        return pairwise_kernel(*self.points(z), self.t)


def make_decoder(cfg: ModelConfig) -> nn.Module:
    if cfg.decoder == "mlp":
        return MLPDecoder(cfg)
    if cfg.decoder == "conv":
        return StructureDecoder(cfg)
    raise ValueError(f"unknown decoder {cfg.decoder!r} (mlp, conv)")


class ConditionalPrior(nn.Module):
    """Flattened PDF (B, 3000) -> p(z | PDF) mean, log-variance (B, 1, 16, 16)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        dims = (3000, *cfg.prior_hidden)
        layers = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.SiLU()]
        layers.append(nn.Linear(dims[-1], 512))
        self.net = nn.Sequential(*layers)

    def forward(self, pdf):
        mu, logvar = self.net(pdf.flatten(1)).view(-1, 2, 1, 16, 16).unbind(1)
        return mu, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)


# -- latent denoiser --------------------------------------------------------------------

def timestep_embedding(t, dim: int):
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ContextTokens(nn.Module):
    """Condition latent (B, 2, 125) -> (B, tokens, ctx_dim): each token a contiguous r-range."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if 125 % cfg.ctx_tokens:
            raise ValueError("ctx_tokens must divide 125")
        self.tokens = cfg.ctx_tokens
        self.proj = nn.Linear(2 * 125 // cfg.ctx_tokens, cfg.ctx_dim)
        self.pos = nn.Parameter(torch.randn(cfg.ctx_tokens, cfg.ctx_dim) * 0.02)
        self.norm = nn.LayerNorm(cfg.ctx_dim)

    def forward(self, cond):
        b = cond.shape[0]
        tok = cond.view(b, 2, self.tokens, -1).permute(0, 2, 1, 3).reshape(b, self.tokens, -1)
        return self.norm(self.proj(tok) + self.pos)


class LatentUNet(nn.Module):
    """eps(x_t (B, 1, 16, 16), t (B,), cond (B, 2, 125)) -> (B, 1, 16, 16)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c0, temb = cfg.unet_channels, 4 * cfg.unet_channels
        self.c0 = c0
        self.time = nn.Sequential(nn.Linear(c0, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.ctx = ContextTokens(cfg)
        # cross-attention alone reaches the 8x8 levels only; a global embedding tells every
        # block which of the few hundred shapes it is denoising towards
        self.cond_emb = nn.Sequential(nn.Linear(250, temb), nn.SiLU(), nn.Linear(temb, temb)) \
            if cfg.unet_global_cond else None
        self.conv_in = nn.Conv2d(1, c0, 3, padding=1)
        chans = [c0 * m for m in cfg.unet_mult]
        self.down, skips, c = nn.ModuleList(), [c0], c0
        for i, ch in enumerate(chans):
            for _ in range(cfg.unet_blocks):
                attn = SpatialAttention(ch, cfg.heads, cfg.ctx_dim) if i > 0 else None
                self.down.append(nn.ModuleList([ResBlock2d(c, ch, temb), attn or nn.Identity()]))
                c = ch
                skips.append(c)
            if i < len(chans) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(c, c, 3, stride=2, padding=1)]))
                skips.append(c)
        self.mid = nn.ModuleList([ResBlock2d(c, c, temb), SpatialAttention(c, cfg.heads, cfg.ctx_dim),
                                  ResBlock2d(c, c, temb)])
        self.up = nn.ModuleList()
        for i, ch in reversed(list(enumerate(chans))):
            for _ in range(cfg.unet_blocks + 1):
                attn = SpatialAttention(ch, cfg.heads, cfg.ctx_dim) if i > 0 else None
                self.up.append(nn.ModuleList([ResBlock2d(c + skips.pop(), ch, temb), attn or nn.Identity()]))
                c = ch
            if i > 0:
                self.up.append(nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest"),
                                              nn.Conv2d(c, c, 3, padding=1)]))
        self.out = nn.Sequential(nn.GroupNorm(_groups(c), c), nn.SiLU(), nn.Conv2d(c, 1, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x, t, cond):
        emb = self.time(timestep_embedding(t, self.c0))
        if self.cond_emb is not None:
            emb = emb + self.cond_emb(cond.flatten(1))
        ctx = self.ctx(cond)
        h = self.conv_in(x)
        hs = [h]
        for layer in self.down:
            if len(layer) == 1:
                h = layer[0](h)
            else:
                h = layer[0](h, emb)
                h = layer[1](h, ctx) if isinstance(layer[1], SpatialAttention) else h
            hs.append(h)
        h = self.mid[0](h, emb)
        h = self.mid[1](h, ctx)
        h = self.mid[2](h, emb)
        for layer in self.up:
            if isinstance(layer[0], nn.Upsample):
                h = layer[1](layer[0](h))
                continue
            h = layer[0](torch.cat([h, hs.pop()], dim=1), emb)
            h = layer[1](h, ctx) if isinstance(layer[1], SpatialAttention) else h
        return self.out(h)


@dataclass
class CbLDM:
    """The networks together, plus the four inference entry points that get exported."""

    cfg: ModelConfig
    cond_vae: ConditionVAE = field(init=False)
    encoder: nn.Module = field(init=False)     # RowMLPEncoder or StructureEncoder
    decoder: nn.Module = field(init=False)     # MLPDecoder or StructureDecoder
    prior: ConditionalPrior = field(init=False)
    unet: LatentUNet = field(init=False)

    def __post_init__(self):
        self.cond_vae = ConditionVAE(self.cfg)
        encoders = {"rowmlp": RowMLPEncoder, "conv": StructureEncoder}
        if self.cfg.encoder not in encoders:
            raise ValueError(f"unknown encoder {self.cfg.encoder!r} ({', '.join(encoders)})")
        self.encoder = encoders[self.cfg.encoder](self.cfg)
        self.decoder = make_decoder(self.cfg)
        self.prior = ConditionalPrior(self.cfg)
        self.unet = LatentUNet(self.cfg)

    def modules(self) -> dict[str, nn.Module]:
        return {"cond_vae": self.cond_vae, "encoder": self.encoder, "decoder": self.decoder,
                "prior": self.prior, "unet": self.unet}

    def to(self, device):
        for m in self.modules().values():
            m.to(device)
        return self

    def eval(self):
        for m in self.modules().values():
            m.eval()
        return self

    def param_counts(self) -> dict[str, int]:
        return {k: sum(p.numel() for p in m.parameters()) for k, m in self.modules().items()}


# -- the exported graphs: what the runtime calls ----------------------------------------

class ConditionGraph(nn.Module):
    """pdf (B, 6, 500) -> cond (B, 2, 125): the condition encoder's mean."""

    def __init__(self, m: CbLDM):
        super().__init__()
        self.cond_vae = m.cond_vae

    def forward(self, pdf):
        return self.cond_vae.encode(pdf)[0]


class PriorGraph(nn.Module):
    """pdf (B, 6, 500) -> prior mean, log-variance (B, 1, 16, 16) in the diffusion's (scaled) space."""

    def __init__(self, m: CbLDM):
        super().__init__()
        self.prior = m.prior
        # plain floats: graph constants (a shared buffer would defeat the fp16 converter)
        self.scale = float(m.cfg.latent_scale)
        self.log_var_shift = 2.0 * math.log(self.scale)

    def forward(self, pdf):
        mu, logvar = self.prior(pdf)
        return mu * self.scale, logvar + self.log_var_shift


class UNetGraph(nn.Module):
    """x_t (B, 1, 16, 16), t (B,) int64, cond (B, 2, 125) -> eps."""

    def __init__(self, m: CbLDM):
        super().__init__()
        self.unet = m.unet

    def forward(self, x, t, cond):
        return self.unet(x, t, cond)


class DecoderGraph(nn.Module):
    """scaled latent (B, 1, 16, 16) -> kernel blocks (B, 4, 128, 128)."""

    def __init__(self, m: CbLDM):
        super().__init__()
        self.decoder = m.decoder
        self.scale = float(m.cfg.latent_scale)

    def forward(self, z):
        return self.decoder(z / self.scale)
