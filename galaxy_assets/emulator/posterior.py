"""Posteriors from a trained emulator: samples, summaries, a multimodality flag, joint draws.

* :func:`sample_posterior` — ``n_samples`` draws of one label for every row of a frame,
  conditioned on whatever inputs each row has (optionally restricted to ``inputs``). The
  requested label's own column is never an input, even when the frame carries it.
* :func:`gaussian_posterior` — the baseline head's mean and standard deviation.
* :func:`posterior_summaries` — per galaxy and label: ``<label>_median``, ``<label>_p16``,
  ``<label>_p84`` and ``<label>_multimodal``, the filterable columns of the search table.
* :func:`joint_posterior` — joint draws of several labels by chaining conditionals:
  ``p(a, b | x) = p(a | x) p(b | x, a)``: each draw of the first label becomes an input of
  the next label's query, and so on.

Rows with no known input are skipped and counted (``skipped_ids``), never sampled from the
prior.

**Multimodality flag** (:func:`multimodality`). Per galaxy, a one- and a two-component
Gaussian mixture are fitted to (up to ``max_samples`` of) the samples by EM, vectorised over
galaxies. A posterior is flagged multimodal when all three hold:

1. the two-component fit wins by the Bayesian information criterion by more than
   ``bic_threshold`` (10: "very strong" evidence on the Kass & Raftery scale);
2. the smaller component carries at least ``min_weight`` (10%) of the probability, so a
   handful of tail samples is not a second mode;
3. the fitted mixture density really dips between the two means: its minimum there is
   below ``dip_threshold`` (0.8) times the lower of the two peak heights. A skewed or
   heavy-tailed but unimodal posterior can prefer two components by BIC; it has no dip.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import torch

from galaxy_assets.emulator.errors import EmulatorConfigError, EmulatorDataError
from galaxy_assets.emulator.model import PropertyEmulator
from galaxy_assets.emulator.tokenizer import TokenBatch

log = logging.getLogger(__name__)

__all__ = [
    "GaussianPosterior",
    "JointSamples",
    "Multimodality",
    "PosteriorSamples",
    "PosteriorSummary",
    "gaussian_posterior",
    "joint_posterior",
    "multimodality",
    "posterior_summaries",
    "sample_posterior",
    "summary_columns",
]

DEFAULT_N_SAMPLES = 1000
ENCODE_BATCH = 2048
CHUNK_ROWS = 1 << 14  # galaxies x trajectories per sampler call (keeps the MLP in cache)


# --------------------------------------------------------------------------- results
@dataclass
class PosteriorSamples:
    """Draws of ``label`` (its own units): ``samples`` ``(G, S)`` for ``object_ids`` ``(G,)``;
    ``skipped_ids``: rows with no known input; ``inputs``: the columns allowed as inputs;
    ``n_infinite``: infinite input values treated as missing (``on_infinite="mask"``)."""

    label: str
    object_ids: np.ndarray
    samples: np.ndarray
    inputs: tuple[str, ...]
    skipped_ids: np.ndarray
    n_infinite: int = 0

    def __len__(self) -> int:
        return int(self.samples.shape[0])

    def quantiles(self, q: Sequence[float]) -> np.ndarray:
        """``(G, len(q))`` quantiles of every galaxy's samples."""
        if len(self) == 0:
            return np.zeros((0, len(q)))
        return np.quantile(self.samples, np.asarray(q), axis=1).T

    def summary(self, **multimodality_kwargs: Any) -> pl.DataFrame:
        """``object_id``, ``<label>_median``, ``_p16``, ``_p84``, ``_multimodal``."""
        qs = self.quantiles([0.5, 0.16, 0.84])
        flag = multimodality(self.samples, **multimodality_kwargs).flag
        names = summary_columns(self.label)
        return pl.DataFrame(
            {
                "object_id": self.object_ids.astype(str),
                names[0]: qs[:, 0],
                names[1]: qs[:, 1],
                names[2]: qs[:, 2],
                names[3]: flag,
            },
            schema={
                "object_id": pl.Utf8,
                names[0]: pl.Float64,
                names[1]: pl.Float64,
                names[2]: pl.Float64,
                names[3]: pl.Boolean,
            },
        )


@dataclass
class GaussianPosterior:
    """The baseline head's posterior of ``label``: ``mean`` and ``std`` (its own units)."""

    label: str
    object_ids: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    inputs: tuple[str, ...]
    skipped_ids: np.ndarray


@dataclass
class PosteriorSummary:
    """Summary columns of several labels (one row per galaxy that had any input) and the
    ids of the rows skipped for having none."""

    frame: pl.DataFrame
    labels: tuple[str, ...]
    n_rows: int
    skipped_ids: np.ndarray

    @property
    def n_skipped(self) -> int:
        return int(len(self.skipped_ids))

    def metadata(self) -> dict[str, Any]:
        out: dict[str, Any] = {"galaxies": self.frame.height, "skipped": self.n_skipped}
        for label in self.labels:
            col = f"{label}_multimodal"
            if col in self.frame.columns and self.frame.height:
                out[f"{label}_multimodal_fraction"] = float(self.frame[col].mean() or 0.0)
        return out


@dataclass
class JointSamples:
    """Joint draws ``samples`` ``(G, S, L)`` of ``labels`` (chained conditionals)."""

    labels: tuple[str, ...]
    object_ids: np.ndarray
    samples: np.ndarray
    skipped_ids: np.ndarray


def summary_columns(label: str) -> tuple[str, str, str, str]:
    """The search-table columns of one label: median, 16th and 84th percentile, flag."""
    return (f"{label}_median", f"{label}_p16", f"{label}_p84", f"{label}_multimodal")


# --------------------------------------------------------------------------- inputs
def _ids(frame: pl.DataFrame, id_column: str) -> np.ndarray:
    if id_column not in frame.columns:
        raise EmulatorDataError(
            f"frame has no id column {id_column!r} (columns: {frame.columns[:10]}…); pass "
            "id_column="
        )
    return frame.get_column(id_column).cast(pl.Utf8).fill_null("").to_numpy().astype(str)


def _allowed_inputs(
    model: PropertyEmulator, frame: pl.DataFrame, inputs: Sequence[str] | None, drop: Sequence[str]
) -> list[str]:
    if inputs is None:
        allowed = [c for c in model.columns if c in frame.columns]
    else:
        unknown = [c for c in inputs if c not in model.tokenizer]
        if unknown:
            raise EmulatorConfigError(
                f"inputs {unknown} are not columns the emulator knows ({list(model.columns)})"
            )
        allowed = [c for c in inputs if c in frame.columns]
    return [c for c in allowed if c not in drop]


def _encode(
    model: PropertyEmulator,
    frame: pl.DataFrame,
    drop: Sequence[str],
    inputs: Sequence[str] | None,
    id_column: str,
    on_infinite: str,
) -> tuple[np.ndarray, TokenBatch, np.ndarray, np.ndarray, tuple[str, ...], int]:
    """ids, tokens of the kept rows, kept mask, skipped ids, allowed inputs, infinities."""
    from galaxy_assets.emulator.tokenizer import values_matrix

    ids = _ids(frame, id_column)
    allowed = _allowed_inputs(model, frame, inputs, drop)
    _, n_inf = values_matrix(frame, allowed, on_infinite=on_infinite, source="posterior input")
    batch = model.tokenizer.encode(
        frame, use=allowed, drop=list(drop), on_infinite=on_infinite, source="posterior input"
    )
    keep = batch.known.any(dim=1).numpy()
    if not keep.all():
        log.info("%d of %d rows have no known input; skipped", int((~keep).sum()), len(keep))
    kept = TokenBatch(batch.values[keep], batch.known[keep])
    return ids, kept, keep, ids[~keep], tuple(allowed), n_inf


@torch.no_grad()
def _conditions(model: PropertyEmulator, batch: TokenBatch, target: int) -> torch.Tensor:
    dev = model.device
    out = []
    for start in range(0, len(batch), ENCODE_BATCH):
        v = batch.values[start : start + ENCODE_BATCH].to(dev)
        k = batch.known[start : start + ENCODE_BATCH].to(dev)
        t = torch.full((v.shape[0],), target, dtype=torch.long, device=dev)
        out.append(model.condition(v, k, t))
    if not out:
        return torch.zeros((0, model.config.d_model), device=dev)
    return torch.cat(out)


def row_noise(ids: Sequence[str], label: str, seed: int, n_samples: int) -> torch.Tensor:
    """``(len(ids), n_samples)`` standard normal draws, each row from its own generator seeded
    by the galaxy's id, the label and ``seed``: a galaxy's draws (with a deterministic solver,
    its whole posterior) do not depend on which galaxies share its frame or shard."""
    import hashlib

    out = torch.empty((len(ids), int(n_samples)), dtype=torch.float32)
    gen = torch.Generator()
    for i, oid in enumerate(ids):
        digest = hashlib.blake2b(f"{int(seed)}\x1f{label}\x1f{oid}".encode(), digest_size=8)
        gen.manual_seed(int.from_bytes(digest.digest(), "little") & ((1 << 63) - 1))
        out[i] = torch.randn(int(n_samples), generator=gen)
    return out


@torch.no_grad()
def _sample_conditions(
    model: PropertyEmulator,
    cond: torch.Tensor,
    target: int,
    n_samples: int,
    *,
    generator: torch.Generator,
    chunk_rows: int = CHUNK_ROWS,
    noise: torch.Tensor | None = None,
    **sampler: Any,
) -> torch.Tensor:
    knots = model.sampler_settings(**sampler)["knots"]
    per_galaxy = int(knots) if knots is not None else n_samples
    chunk = max(1, chunk_rows // max(per_galaxy, 1))
    parts = [
        model.sample(cond[s : s + chunk], target, n_samples, generator=generator,
                     noise=noise[s : s + chunk] if noise is not None else None, **sampler)
        for s in range(0, cond.shape[0], chunk)
    ]
    if not parts:
        return torch.zeros((0, n_samples))
    return torch.cat(parts)


# --------------------------------------------------------------------------- sampling
def sample_posterior(
    model: PropertyEmulator,
    frame: pl.DataFrame,
    label: str,
    *,
    n_samples: int = DEFAULT_N_SAMPLES,
    inputs: Sequence[str] | None = None,
    seed: int = 0,
    id_column: str = "object_id",
    on_infinite: str = "raise",
    chunk_rows: int = CHUNK_ROWS,
    **sampler: Any,
) -> PosteriorSamples:
    """``n_samples`` draws of ``label`` for every row of ``frame`` that has a known input.

    ``inputs`` restricts the columns used as inputs (default: every column of the frame the
    model knows); ``label`` itself is always dropped. ``sampler``: ``solver``, ``steps``,
    ``eta``, ``knots``, ``spacing`` (default: the model's, see :mod:`.diffusion`; e.g.
    ``solver="ddpm"`` for plain DDPM); ``seed`` makes the draws
    reproducible (same model, frame and settings → identical samples). Each galaxy's noise is
    drawn from its id, the label and ``seed`` (:func:`row_noise`): with a deterministic solver
    (the default) its draws do not depend on the other rows of the frame. Raises
    :class:`UnknownLabelError` for a label the model was not trained to predict.
    """
    if n_samples < 1:
        raise EmulatorConfigError(f"n_samples={n_samples}; use at least 1")
    target = model.target_index(label)
    model.eval()
    ids, batch, keep, skipped, allowed, n_inf = _encode(
        model, frame, [label], inputs, id_column, on_infinite
    )
    cond = _conditions(model, batch, target)
    gen = torch.Generator(device=model.device).manual_seed(int(seed))
    z = _sample_conditions(
        model, cond, target, n_samples, generator=gen, chunk_rows=chunk_rows,
        noise=row_noise(ids[keep], label, seed, n_samples), **sampler
    )
    samples = model.tokenizer.to_physical(z, label).astype(np.float32)
    return PosteriorSamples(label, ids[keep], samples, allowed, skipped, n_inf)


def gaussian_posterior(
    model: PropertyEmulator,
    frame: pl.DataFrame,
    label: str,
    *,
    inputs: Sequence[str] | None = None,
    id_column: str = "object_id",
    on_infinite: str = "raise",
) -> GaussianPosterior:
    """The baseline head's mean and standard deviation of ``label`` (its own units)."""
    target = model.target_index(label)
    model.eval()
    ids, batch, keep, skipped, allowed, _ = _encode(
        model, frame, [label], inputs, id_column, on_infinite
    )
    cond = _conditions(model, batch, target)
    mean, std = model.gaussian(cond)
    scale = float(model.tokenizer.scales[target])
    return GaussianPosterior(
        label,
        ids[keep],
        model.tokenizer.to_physical(mean, label),
        std.detach().cpu().numpy().astype(np.float64) * scale,
        allowed,
        skipped,
    )


def posterior_summaries(
    model: PropertyEmulator,
    frame: pl.DataFrame,
    labels: Sequence[str] | None = None,
    *,
    n_samples: int = DEFAULT_N_SAMPLES,
    inputs: Sequence[str] | None = None,
    seed: int = 0,
    id_column: str = "object_id",
    on_infinite: str = "raise",
    **sampler: Any,
) -> PosteriorSummary:
    """Median, 16th/84th percentiles and the multimodality flag of each label (default: the
    model's targets) for every row with a known input: one row per galaxy, columns
    ``object_id`` then :func:`summary_columns` of each label."""
    labels = list(labels) if labels is not None else list(model.targets)
    for label in labels:
        model.target_index(label)
    ids = _ids(frame, id_column)
    # one summary row per galaxy, joined label by label on the id: a repeated or empty id
    # would multiply rows (k repeats became k² rows)
    seen, repeated = set(), []
    for oid in ids.tolist():
        if oid == "" or oid in seen:
            repeated.append(oid)
        seen.add(oid)
    if repeated:
        raise EmulatorDataError(
            f"{len(repeated)} row(s) of the frame have an empty or repeated {id_column} (e.g. "
            f"{sorted(set(repeated))[:5]}); give one row per galaxy with an id"
        )
    out = pl.DataFrame({"object_id": ids}, schema={"object_id": pl.Utf8})
    skipped_all: set[str] = set()
    for label in labels:
        # the label is part of each galaxy's noise key (row_noise): an offset by the label's
        # position made its draws change with the list of labels asked for
        post = sample_posterior(
            model,
            frame,
            label,
            n_samples=n_samples,
            inputs=inputs,
            seed=seed,
            id_column=id_column,
            on_infinite=on_infinite,
            **sampler,
        )
        skipped_all.update(post.skipped_ids.tolist())
        out = out.join(post.summary(seed=seed), on="object_id", how="left")
    skipped = np.array(sorted(skipped_all), dtype=str)
    if len(skipped):
        out = out.filter(~pl.col("object_id").is_in(pl.Series(skipped).implode()))
    return PosteriorSummary(out, tuple(labels), len(ids), skipped)


def joint_posterior(
    model: PropertyEmulator,
    frame: pl.DataFrame,
    labels: Sequence[str],
    *,
    n_samples: int = 200,
    inputs: Sequence[str] | None = None,
    seed: int = 0,
    id_column: str = "object_id",
    on_infinite: str = "raise",
    **sampler: Any,
) -> JointSamples:
    """Joint draws of ``labels`` (in this order) by chaining conditionals: draw the first
    label, then each next one with the earlier draws as extra inputs (one draw per chain).
    Costs ``n_samples`` encoder passes per galaxy and label after the first."""
    labels = list(labels)
    if len(set(labels)) != len(labels) or not labels:
        raise EmulatorConfigError(f"labels {labels} must be distinct and non-empty")
    targets = [model.target_index(label) for label in labels]
    ids, batch, keep, skipped, _, _ = _encode(model, frame, labels, inputs, id_column, on_infinite)
    g = len(batch)
    gen = torch.Generator(device=model.device).manual_seed(int(seed))
    first = _conditions(model, batch, targets[0])
    z0 = _sample_conditions(model, first, targets[0], n_samples, generator=gen, **sampler)
    draws = [z0]  # standardised, (G, S) each
    values = batch.values.repeat_interleave(n_samples, dim=0).clone()
    known = batch.known.repeat_interleave(n_samples, dim=0).clone()
    for prev, target in zip(targets[:-1], targets[1:], strict=True):
        values[:, prev] = draws[-1].reshape(-1).to(values.dtype).cpu()
        known[:, prev] = True
        cond = _conditions(model, TokenBatch(values, known), target)
        one = {**sampler, "knots": None}  # one draw per chain: integrate it directly
        z = _sample_conditions(model, cond, target, 1, generator=gen, **one)
        draws.append(z.reshape(g, n_samples))
    out = np.stack(
        [model.tokenizer.to_physical(d, lab) for d, lab in zip(draws, labels, strict=True)],
        axis=-1,
    )
    return JointSamples(tuple(labels), ids[keep], out.astype(np.float32), skipped)


# --------------------------------------------------------------------------- multimodality
@dataclass
class Multimodality:
    """Per galaxy: the flag, the BIC gain of two components over one, the dip ratio (mixture
    density minimum between the means over the lower peak), and the two-component fit."""

    flag: np.ndarray
    delta_bic: np.ndarray
    dip: np.ndarray
    weights: np.ndarray
    means: np.ndarray
    sigmas: np.ndarray


def _normal_pdf(x: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * ((x - mu) / sigma) ** 2) / (sigma * math.sqrt(2.0 * math.pi))


def _mixture_fit(x: np.ndarray, iterations: int) -> tuple[np.ndarray, ...]:
    """EM for a two-component 1-D Gaussian mixture, vectorised over rows of ``x`` (G, n)."""
    var_all = x.var(axis=1, keepdims=True)
    floor = np.maximum(var_all * 1e-4, 1e-12)
    mu = np.quantile(x, [0.25, 0.75], axis=1).T[:, :, None]  # (G, 2, 1)
    var = np.repeat(var_all[:, None, :] / 4.0 + floor[:, None, :], 2, axis=1)
    w = np.full((x.shape[0], 2, 1), 0.5)
    xs = x[:, None, :]
    for _ in range(iterations):
        logp = np.log(w) - 0.5 * np.log(2 * math.pi * var) - 0.5 * (xs - mu) ** 2 / var
        m = logp.max(axis=1, keepdims=True)
        r = np.exp(logp - m)
        r /= r.sum(axis=1, keepdims=True)
        nk = r.sum(axis=2, keepdims=True) + 1e-12
        w = nk / x.shape[1]
        mu = (r * xs).sum(axis=2, keepdims=True) / nk
        var = (r * (xs - mu) ** 2).sum(axis=2, keepdims=True) / nk + floor[:, None, :]
    logp = np.log(w) - 0.5 * np.log(2 * math.pi * var) - 0.5 * (xs - mu) ** 2 / var
    m = logp.max(axis=1)
    ll2 = (m + np.log(np.exp(logp - m[:, None, :]).sum(axis=1))).sum(axis=1)
    return w[:, :, 0], mu[:, :, 0], np.sqrt(var[:, :, 0]), ll2


def multimodality(
    samples: np.ndarray,
    *,
    max_samples: int = 300,
    iterations: int = 40,
    bic_threshold: float = 10.0,
    min_weight: float = 0.1,
    dip_threshold: float = 0.8,
    seed: int = 0,
    chunk: int = 2048,
) -> Multimodality:
    """Flag multimodal posteriors among ``samples`` ``(G, S)`` (see the module docstring)."""
    x_all = np.asarray(samples, dtype=np.float64)
    g, s = x_all.shape
    rng = np.random.default_rng(seed)
    if s > max_samples:
        cols = np.sort(rng.choice(s, size=max_samples, replace=False))
        x_all = x_all[:, cols]
    n = x_all.shape[1]
    out = {k: np.zeros(g) for k in ("delta_bic", "dip")}
    weights, means, sigmas = np.zeros((g, 2)), np.zeros((g, 2)), np.zeros((g, 2))
    flag = np.zeros(g, dtype=bool)
    if g == 0 or n < 8:
        return Multimodality(flag, out["delta_bic"], out["dip"] + 1, weights, means, sigmas)
    grid = np.linspace(0.0, 1.0, 33)[None, :]
    for start in range(0, g, chunk):
        x = x_all[start : start + chunk]
        sd = x.std(axis=1)
        ok = sd > 0
        ll1 = -0.5 * n * (np.log(2 * math.pi * np.maximum(sd**2, 1e-300)) + 1.0)
        w, mu, sig, ll2 = _mixture_fit(
            np.where(ok[:, None], x, x + rng.normal(0, 1e-9, x.shape)), iterations
        )
        dbic = (-2 * ll1 + 2 * math.log(n)) - (-2 * ll2 + 5 * math.log(n))
        lo, hi = np.minimum(mu[:, 0], mu[:, 1]), np.maximum(mu[:, 0], mu[:, 1])
        pts = lo[:, None] + (hi - lo)[:, None] * grid  # (G, 33)

        def dens(p: np.ndarray, w=w, mu=mu, sig=sig) -> np.ndarray:
            return (
                w[:, None, :] * _normal_pdf(p[:, :, None], mu[:, None, :], sig[:, None, :])
            ).sum(-1)

        d = dens(pts)
        peak = np.minimum(d[:, 0], d[:, -1])
        dip = d.min(axis=1) / np.maximum(peak, 1e-300)
        sl = slice(start, start + len(x))
        out["delta_bic"][sl], out["dip"][sl] = dbic, dip
        weights[sl], means[sl], sigmas[sl] = w, mu, sig
        flag[sl] = (
            ok & (dbic > bic_threshold) & (w.min(axis=1) >= min_weight) & (dip < dip_threshold)
        )
    return Multimodality(flag, out["delta_bic"], out["dip"], weights, means, sigmas)
