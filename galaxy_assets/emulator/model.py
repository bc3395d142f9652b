"""The property emulator: a transformer over catalogue tokens with a denoising-diffusion head.

After Leung, Bovy & Speagle (2024). One file, read top to bottom:

1. :class:`ColumnTokens` turns a row into tokens. A known value ``z`` (standardised, see
   :mod:`.tokenizer`) of column ``c`` becomes ``activation(w_c * z + b_c)``, with ``w_c`` and
   ``b_c`` learned vectors of that column; an unknown value is padding. The *query* token is
   the requested column's name embedding, with no value.
2. :class:`Block` s (pre-norm transformer encoder layers: self-attention + MLP) read the
   sequence ``[query, value_1 … value_C]``; padding is masked out of attention as a key, so
   no unknown slot ever reaches the query. The final query position, after a LayerNorm, is
   the *condition* ``c`` of the head.
3. :class:`DiffusionHead`: a residual MLP over the noisy scalar ``x_t`` whose every layer adds
   a projection of the timestep embedding and a projection of ``c``; it predicts the noise
   (:mod:`.diffusion` has the schedule, the loss and the sampler).
4. :class:`GaussianHead`: the baseline, a mean and a log-variance from the same ``c``,
   trained by Gaussian negative log-likelihood. By default it reads ``c`` through a
   stop-gradient, so the encoder is shaped by the diffusion loss alone and the baseline
   is a probe of the very same features (``baseline_gradient=True`` lets its loss train the
   encoder too).

**No leak.** :meth:`PropertyEmulator.condition` removes the requested column from the
inputs itself (its ``known`` flag cleared and its value zeroed) whatever the caller passes,
so a label's own value can never be an input when that label is asked for.

The whole model is described by a JSON-able :class:`EmulatorConfig` (sizes, schedule,
sampler defaults, the tokenizer's vocabulary, medians and scales, and the feature recipe of
the table it was trained on); :func:`build_from_config` rebuilds it, which is what the
MLflow registry calls (``CODE_REF``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from galaxy_assets.emulator.diffusion import SCHEDULES, SOLVERS, DiffusionSchedule, sample
from galaxy_assets.emulator.errors import EmulatorConfigError, UnknownLabelError
from galaxy_assets.emulator.tokenizer import Tokenizer

if TYPE_CHECKING:
    from galaxy_assets.tracking import TrackedRun, Tracker

log = logging.getLogger(__name__)

__all__ = [
    "CODE_REF",
    "DEFAULT_KNOTS",
    "DEFAULT_SAMPLING_STEPS",
    "DEFAULT_SOLVER",
    "REGISTERED_NAME",
    "Block",
    "ColumnTokens",
    "DiffusionHead",
    "EmulatorConfig",
    "GaussianHead",
    "PropertyEmulator",
    "build_from_config",
    "load_emulator",
    "log_emulator",
]

CODE_REF = "galaxy_assets.emulator.model:build_from_config"
REGISTERED_NAME = "property-emulator"
# Sampler defaults, chosen with benchmarks/bench_emulator.py so that 1,000 samples for each
# of 10,000 galaxies take under a minute on 2 CPU cores: DPM-Solver++(2M) over 25 of the
# 1000 training steps (evenly spaced in log-SNR), 128 stratified trajectories per galaxy
# (see diffusion.sample). Plain DDPM (all 1000 steps, every sample) stays available.
DEFAULT_SOLVER = "dpm++2m"
DEFAULT_SAMPLING_STEPS = 25
DEFAULT_KNOTS = 128
SAMPLER_KEYS = ("solver", "steps", "eta", "knots", "spacing")
_ACTIVATIONS = {"gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh, "relu": nn.ReLU}
_LOGVAR_RANGE = (-14.0, 8.0)


@dataclass
class EmulatorConfig:
    """Everything needed to rebuild a :class:`PropertyEmulator` (JSON-able).

    ``tokenizer``: :meth:`Tokenizer.to_config`; ``targets``: the columns trained as
    outputs (the only ones a posterior may be asked for); encoder sizes ``d_model``,
    ``n_layers``, ``n_heads``, ``d_ff``, ``dropout``; ``token_activation``; head sizes
    ``head_hidden``, ``head_layers``, ``time_dim``; the diffusion ``schedule`` and its
    ``diffusion_steps``; sampler defaults ``sampling_solver``, ``sampling_steps``,
    ``sampling_eta``, ``sampling_knots``, ``sampling_spacing`` (see
    :func:`galaxy_assets.emulator.diffusion.sample`); ``clip_margin``: denoised estimates are kept within the training
    range of the target widened by this fraction of it on each side (None: unbounded);
    ``baseline_gradient``: let the Gaussian head's loss train the encoder; ``features``: the
    recipe that built the input columns (:class:`galaxy_assets.emulator.data.FeatureSpec`),
    kept so inference rebuilds the same inputs.
    """

    tokenizer: dict[str, Any]
    targets: list[str]
    d_model: int = 64
    n_layers: int = 3
    n_heads: int = 4
    d_ff: int = 128
    dropout: float = 0.0
    token_activation: str = "gelu"
    head_hidden: int = 64
    head_layers: int = 3
    time_dim: int = 32
    schedule: str = "sigmoid"
    diffusion_steps: int = 1000
    sampling_solver: str = DEFAULT_SOLVER
    sampling_steps: int | None = DEFAULT_SAMPLING_STEPS
    sampling_eta: float = 0.0
    sampling_knots: int | None = DEFAULT_KNOTS
    sampling_spacing: str = "lambda"
    clip_margin: float | None = 0.25
    baseline_gradient: bool = False
    features: dict[str, Any] | None = None
    format_version: int = 1

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise EmulatorConfigError(
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}"
            )
        if self.token_activation not in _ACTIVATIONS:
            raise EmulatorConfigError(
                f"token_activation={self.token_activation!r}; use one of {list(_ACTIVATIONS)}"
            )
        if self.schedule not in SCHEDULES:
            raise EmulatorConfigError(
                f"unknown diffusion schedule {self.schedule!r}; use one of {list(SCHEDULES)}"
            )
        for name in ("d_model", "n_layers", "n_heads", "d_ff", "head_hidden", "time_dim"):
            if int(getattr(self, name)) < 1:
                raise EmulatorConfigError(f"{name}={getattr(self, name)}; it must be >= 1")
        if self.sampling_solver not in SOLVERS:
            raise EmulatorConfigError(
                f"sampling_solver={self.sampling_solver!r}; use one of {list(SOLVERS)}"
            )
        if self.head_layers < 0:
            raise EmulatorConfigError(f"head_layers={self.head_layers}; it must be >= 0")
        columns = list(self.tokenizer.get("columns", []))
        unknown = [t for t in self.targets if t not in columns]
        if not self.targets or unknown:
            raise EmulatorConfigError(
                f"targets {unknown or '[]'} are not columns of the tokenizer {columns}; "
                "targets must be a non-empty subset of the table's columns"
            )

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> EmulatorConfig:
        known = {f.name for f in fields(cls)}
        extra = sorted(set(config) - known)
        if extra:
            raise EmulatorConfigError(
                f"emulator config has unknown keys {extra}; it was written by another "
                f"galaxy-assets version (known keys: {sorted(known)})"
            )
        return cls(**dict(config))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- tokens
class ColumnTokens(nn.Module):
    """Value tokens ``act(w_c * z + b_c)`` and query tokens ``name_c`` for ``n_columns``."""

    def __init__(self, n_columns: int, d_model: int, activation: str = "gelu") -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_columns, d_model))
        self.bias = nn.Parameter(0.1 * torch.randn(n_columns, d_model))
        self.name = nn.Embedding(n_columns, d_model)
        self.act = _ACTIVATIONS[activation]()

    def values(self, z: torch.Tensor) -> torch.Tensor:
        """``(N, C)`` standardised values → ``(N, C, d)`` tokens (one per column)."""
        return self.act(z.unsqueeze(-1) * self.weight + self.bias)

    def query(self, target: torch.Tensor) -> torch.Tensor:
        """``(N,)`` column ids → ``(N, 1, d)`` query tokens."""
        return self.name(target).unsqueeze(1)


# --------------------------------------------------------------------------- encoder
class SelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
        """``x`` ``(N, L, d)``; ``attend`` ``(N, L)`` bool: which keys may be attended to."""
        n, length, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        shape = (n, length, self.n_heads, d // self.n_heads)
        q, k, v = (y.view(shape).transpose(1, 2) for y in (q, k, v))
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attend[:, None, None, :],
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.proj(y.transpose(1, 2).reshape(n, length, d))


class Block(nn.Module):
    """Pre-norm transformer encoder layer: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), attend)
        return x + self.mlp(self.ln2(x))


# --------------------------------------------------------------------------- heads
def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding ``(…, dim)`` of integer steps ``t`` (…)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t.float().unsqueeze(-1) * freqs
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class DiffusionHead(nn.Module):
    """Noise predictor ``eps(x_t, t, c)``: a residual MLP of width ``hidden``.

    ``h = silu(W_in x + s_0)``, then for each layer ``h = h + silu(W_l h + s_l)``, and
    ``eps = W_out h``, where each shift ``s_l = P_l c + Q_l tau(t)`` adds a projection of the
    condition and of the timestep embedding ``tau(t)``.
    """

    def __init__(self, d_cond: int, hidden: int, n_layers: int, time_dim: int) -> None:
        super().__init__()
        self.hidden, self.n_layers, self.time_dim = hidden, n_layers, time_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU())
        self.time_proj = nn.Linear(hidden, hidden * (n_layers + 1))
        self.cond_proj = nn.Linear(d_cond, hidden * (n_layers + 1))
        self.inp = nn.Linear(1, hidden)
        self.layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(n_layers))
        self.out = nn.Linear(hidden, 1)

    def cond_shift(self, cond: torch.Tensor) -> torch.Tensor:
        """``(N, d)`` → per-layer shifts ``(N, 1, n_layers + 1, hidden)``."""
        return self.cond_proj(cond).view(cond.shape[0], 1, self.n_layers + 1, self.hidden)

    def time_shift(self, t: torch.Tensor) -> torch.Tensor:
        """Integer steps ``(…)`` → per-layer shifts ``(…, n_layers + 1, hidden)``."""
        tau = self.time_mlp(timestep_embedding(t, self.time_dim))
        return self.time_proj(tau).view(*t.shape, self.n_layers + 1, self.hidden)

    def mlp(self, x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """``x`` ``(G, S)`` and shifts broadcastable to ``(G, S, n_layers + 1, hidden)``."""
        w_in = self.inp.weight[:, 0]
        h = F.silu(torch.addcmul(shift[:, :, 0, :] + self.inp.bias, x.unsqueeze(-1), w_in))
        for i, layer in enumerate(self.layers):
            u = F.linear(h, layer.weight) + (shift[:, :, i + 1, :] + layer.bias)
            h = h + F.silu(u)
        return F.linear(h, self.out.weight, self.out.bias).squeeze(-1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """``x``, ``t`` ``(N, R)`` (R noise draws per condition), ``cond`` ``(N, d)`` → ``(N, R)``."""
        return self.mlp(x, self.cond_shift(cond) + self.time_shift(t))


class GaussianHead(nn.Module):
    """Baseline head: mean and log-variance of the standardised label from the condition."""

    def __init__(self, d_cond: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_cond, hidden), nn.SiLU(), nn.Linear(hidden, 2))

    def forward(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.net(cond).unbind(-1)
        return mean, logvar.clamp(*_LOGVAR_RANGE)


def gaussian_nll(mean: torch.Tensor, logvar: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean Gaussian negative log-likelihood (without the constant)."""
    return torch.mean(0.5 * (logvar + (x - mean) ** 2 * torch.exp(-logvar)))


# --------------------------------------------------------------------------- model
class PropertyEmulator(nn.Module):
    """Transformer encoder + DDPM head + Gaussian baseline head (see the module docstring)."""

    def __init__(self, config: EmulatorConfig) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = Tokenizer.from_config(config.tokenizer)
        n_columns = len(self.tokenizer)
        self.tokens = ColumnTokens(n_columns, config.d_model, config.token_activation)
        self.blocks = nn.ModuleList(
            Block(config.d_model, config.n_heads, config.d_ff, config.dropout)
            for _ in range(config.n_layers)
        )
        self.ln_f = nn.LayerNorm(config.d_model)
        self.head = DiffusionHead(
            config.d_model, config.head_hidden, config.head_layers, config.time_dim
        )
        self.baseline = GaussianHead(config.d_model, config.head_hidden)
        self.schedule = DiffusionSchedule.build(config.schedule, config.diffusion_steps)
        target_mask = torch.zeros(n_columns, dtype=torch.bool)
        target_mask[self.tokenizer.indices(config.targets)] = True
        self.register_buffer("target_mask", target_mask, persistent=False)

    # ------------------------------------------------------------------ basics
    @property
    def columns(self) -> tuple[str, ...]:
        return self.tokenizer.columns

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(self.config.targets)

    @property
    def device(self) -> torch.device:
        return self.ln_f.weight.device

    def target_index(self, label: str) -> int:
        """Token id of a requested label; :class:`UnknownLabelError` when the model was never
        trained to predict it."""
        if label not in self.tokenizer:
            raise UnknownLabelError(
                f"the emulator never saw a column {label!r}; it predicts {list(self.targets)}"
            )
        if label not in self.config.targets:
            raise UnknownLabelError(
                f"column {label!r} was only an input of this emulator, never a training "
                f"target; it predicts {list(self.targets)}. Train with {label!r} in targets"
            )
        return self.tokenizer.index(label)

    def config_dict(self) -> dict[str, Any]:
        return self.config.to_dict()

    # ------------------------------------------------------------------ encoder
    def condition(
        self, values: torch.Tensor, known: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        """The head's condition ``(N, d)`` for rows ``values``/``known`` ``(N, C)`` asking for
        column ids ``target`` ``(N,)``. The target's own slot is always removed first."""
        n = values.shape[0]
        own = F.one_hot(target, len(self.tokenizer)).bool()
        known = known & ~own
        values = torch.where(known, values, torch.zeros_like(values))
        x = torch.cat([self.tokens.query(target), self.tokens.values(values)], dim=1)
        attend = torch.cat([torch.ones(n, 1, dtype=torch.bool, device=x.device), known], dim=1)
        for block in self.blocks:
            x = block(x, attend)
        return self.ln_f(x[:, 0])

    # ------------------------------------------------------------------ training
    def losses(
        self,
        values: torch.Tensor,
        known: torch.Tensor,
        target: torch.Tensor,
        x0: torch.Tensor,
        *,
        repeats: int = 4,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """``diffusion`` (noise-prediction MSE, ``repeats`` noise draws per row) and
        ``gaussian`` (the baseline's NLL) for standardised target values ``x0`` ``(N,)``."""
        cond = self.condition(values, known, target)
        x0r = x0.unsqueeze(1).expand(-1, repeats)
        t = torch.randint(0, self.schedule.steps, x0r.shape, generator=generator)
        noise = torch.randn(x0r.shape, generator=generator)
        t, noise = t.to(x0.device), noise.to(x0.device)
        x_t = self.schedule.add_noise(x0r, t, noise)
        diffusion = torch.mean((self.head(x_t, t, cond) - noise) ** 2)
        mean, logvar = self.baseline(cond if self.config.baseline_gradient else cond.detach())
        return {"diffusion": diffusion, "gaussian": gaussian_nll(mean, logvar, x0)}

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def gaussian(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Baseline mean and standard deviation (standardised units) for conditions ``cond``."""
        mean, logvar = self.baseline(cond)
        return mean, torch.exp(0.5 * logvar)

    def sampler_settings(self, **overrides: Any) -> dict[str, Any]:
        """The sampler settings: the config's defaults with ``overrides`` (``solver``,
        ``steps``, ``eta``, ``knots``, ``spacing``) applied."""
        bad = sorted(set(overrides) - set(SAMPLER_KEYS))
        if bad:
            raise EmulatorConfigError(f"unknown sampler settings {bad}; use {list(SAMPLER_KEYS)}")
        c = self.config
        settings = {
            "solver": c.sampling_solver,
            "steps": c.sampling_steps,
            "eta": c.sampling_eta,
            "knots": c.sampling_knots,
            "spacing": c.sampling_spacing,
        }
        settings.update(overrides)
        if settings["solver"] == "ddpm" or (
            settings["solver"] == "ddim" and float(settings["eta"]) > 0
        ):
            if "knots" not in overrides:
                settings["knots"] = None  # knots need a deterministic sampler
        return settings

    @torch.no_grad()
    def sample(
        self,
        cond: torch.Tensor,
        target: int,
        n_samples: int,
        *,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        **sampler: Any,
    ) -> torch.Tensor:
        """Standardised samples ``(G, n_samples)`` of column ``target`` given ``cond`` ``(G, d)``.

        ``sampler``: overrides of :meth:`sampler_settings`; ``noise``: the draws' starting
        noise (see :func:`diffusion.sample`).
        """
        settings = self.sampler_settings(**sampler)
        c_shift = self.head.cond_shift(cond)
        t_shift = self.head.time_shift(torch.arange(self.schedule.steps, device=cond.device))

        def eps_fn(x: torch.Tensor, t: int) -> torch.Tensor:
            return self.head.mlp(x, c_shift + t_shift[t])

        clip = None
        if self.config.clip_margin is not None:
            lo = float(self.tokenizer.lows[target])
            hi = float(self.tokenizer.highs[target])
            pad = self.config.clip_margin * max(hi - lo, 1e-6)
            dev = cond.device
            clip = (torch.tensor(lo - pad, device=dev), torch.tensor(hi + pad, device=dev))
        return sample(
            eps_fn,
            self.schedule,
            cond.shape[0],
            n_samples,
            solver=settings["solver"],
            steps=settings["steps"],
            eta=float(settings["eta"]),
            knots=settings["knots"],
            spacing=settings["spacing"],
            clip=clip,
            generator=generator,
            device=cond.device,
            noise=noise,
        )


def count_parameters(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def build_from_config(config: Mapping[str, Any] | EmulatorConfig) -> PropertyEmulator:
    """Rebuild an (untrained) :class:`PropertyEmulator` from its config; the registry's
    loader (``CODE_REF``) — the weights come from the logged state dict."""
    cfg = config if isinstance(config, EmulatorConfig) else EmulatorConfig.from_dict(config)
    return PropertyEmulator(cfg)


def new_config(
    tokenizer: Tokenizer,
    targets: Sequence[str],
    *,
    features: Mapping[str, Any] | None = None,
    **sizes: Any,
) -> EmulatorConfig:
    """An :class:`EmulatorConfig` for a fitted ``tokenizer``; ``sizes`` override defaults."""
    known = {f.name for f in fields(EmulatorConfig)} - {"tokenizer", "targets", "features"}
    bad = sorted(set(sizes) - known)
    if bad:
        raise EmulatorConfigError(f"unknown model settings {bad}; known: {sorted(known)}")
    return EmulatorConfig(
        tokenizer=tokenizer.to_config(),
        targets=list(targets),
        features=dict(features) if features is not None else None,
        **sizes,
    )


# --------------------------------------------------------------------------- registry
def log_emulator(run: TrackedRun, model: PropertyEmulator, name: str = "model") -> str:
    """Log ``model`` in an MLflow run (state dict + config); returns the artifact path."""
    return run.log_torch_model(name, model.state_dict(), model.config_dict(), CODE_REF)


def load_emulator(
    tracker: Tracker,
    alias_or_version: str | int = "champion",
    *,
    name: str = REGISTERED_NAME,
    device: str = "cpu",
) -> tuple[PropertyEmulator, int]:
    """The registered emulator at an alias or version, in eval mode: ``(model, version)``."""
    mv = tracker.resolve_version(name, alias_or_version)
    module, _ = tracker.load_torch_artifact(
        mv.source, device=device, what=f"{name} version {mv.version}"
    )
    if not isinstance(module, PropertyEmulator):
        raise EmulatorConfigError(
            f"{name} version {mv.version} is a {type(module).__name__}, not a property "
            "emulator; it was registered under the wrong name"
        )
    return module, int(mv.version)
