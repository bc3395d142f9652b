"""Diffusion: schedules, samplers against an exact noise predictor, and a trained head that
recovers a bimodal 1-D distribution."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from galaxy_assets.emulator import EmulatorConfigError
from galaxy_assets.emulator.diffusion import (
    SCHEDULES,
    DiffusionSchedule,
    interpolate_quantiles,
    knot_noise,
    make_betas,
    noise_prediction_loss,
    sample,
    sampling_timesteps,
)
from galaxy_assets.emulator.model import DiffusionHead


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("steps", [50, 200, 1000])
def test_schedules_end_in_pure_noise(name, steps):
    betas = make_betas(name, steps)
    assert betas.shape == (steps,)
    assert torch.all(betas > 0) and torch.all(betas < 1)
    ab = torch.cumprod(1 - betas, 0)
    assert torch.all(ab[1:] < ab[:-1])
    assert ab[-1] < 1e-3
    assert ab[0] > 0.99


def test_sigmoid_ramp_and_unknown_schedule():
    betas = make_betas("sigmoid", 1000)
    # slow start and end, fast middle: the sigmoid profile
    assert betas[1] - betas[0] < betas[500] - betas[499]
    with pytest.raises(EmulatorConfigError, match="unknown diffusion schedule"):
        make_betas("quadratic", 100)


def test_sampling_timesteps():
    sched = DiffusionSchedule.build("sigmoid", 1000)
    assert sampling_timesteps(sched, None) == list(range(999, -1, -1))
    for spacing in ("lambda", "time"):
        ts = sampling_timesteps(sched, 20, spacing)
        assert ts[0] == 999 and ts[-1] == 0
        assert all(a > b for a, b in zip(ts, ts[1:], strict=False))
        assert 15 <= len(ts) <= 20
    with pytest.raises(EmulatorConfigError):
        sampling_timesteps(sched, 10, "log")


def test_knots_and_quantile_interpolation():
    z = knot_noise(64)
    assert z.shape == (64,) and torch.all(z[1:] > z[:-1])
    assert z[0] == -4.5 and z[-1] == 4.5
    # a linear map is reproduced exactly, also beyond the outer knots
    ends = (2.0 + 3.0 * z)[None, :]
    u = torch.tensor([[-6.0, -1.234, 0.0, 0.5, 5.0]])
    torch.testing.assert_close(interpolate_quantiles(z, ends, u), 2.0 + 3.0 * u)


def _exact_eps(sched: DiffusionSchedule, mean: float, sd: float):
    """The exact E[eps | x_t] of data ~ N(mean, sd^2)."""

    def eps_fn(x: torch.Tensor, t: int) -> torch.Tensor:
        ab = float(sched.alpha_bar[t])
        return math.sqrt(1 - ab) * (x - math.sqrt(ab) * mean) / (ab * sd * sd + 1 - ab)

    return eps_fn


@pytest.mark.parametrize(("mean", "sd"), [(0.7, 0.3), (-1.0, 1.5), (0.0, 0.08)])
@pytest.mark.parametrize(
    "kwargs",
    [
        {"solver": "ddpm"},
        {"solver": "dpm++2m", "steps": 25},
        {"solver": "dpm++2m", "steps": 25, "knots": 128},
    ],
)
def test_samplers_reproduce_a_gaussian_with_the_exact_noise(mean, sd, kwargs):
    sched = DiffusionSchedule.build("sigmoid", 1000)
    gen = torch.Generator().manual_seed(0)
    x = sample(_exact_eps(sched, mean, sd), sched, 4, 1500, generator=gen, **kwargs)
    x = x.double().numpy().ravel()
    assert abs(x.mean() - mean) < 0.05 * sd + 4 * sd / math.sqrt(x.size)
    tol = 0.1 if kwargs["solver"] == "ddpm" and sd < 0.1 else 0.035  # DDPM's noise floor
    assert abs(x.std() / sd - 1) < tol


def test_few_step_ddim_is_too_narrow_which_is_why_it_is_not_the_default():
    sched = DiffusionSchedule.build("sigmoid", 1000)
    gen = torch.Generator().manual_seed(0)
    eps = _exact_eps(sched, 0.0, 0.3)
    ddim = sample(eps, sched, 2, 3000, solver="ddim", steps=25, spacing="time", generator=gen)
    dpm = sample(eps, sched, 2, 3000, steps=25, generator=gen)
    assert float(ddim.std()) / 0.3 < 0.95 < float(dpm.std()) / 0.3


def test_stochastic_samplers_refuse_knots():
    sched = DiffusionSchedule.build("linear", 100)
    with pytest.raises(EmulatorConfigError, match="deterministic"):
        sample(_exact_eps(sched, 0, 1), sched, 1, 10, solver="ddim", eta=1.0, knots=32)
    with pytest.raises(EmulatorConfigError, match="unknown sampler"):
        sample(_exact_eps(sched, 0, 1), sched, 1, 10, solver="euler")


def _mixture(n: int, gen: torch.Generator) -> torch.Tensor:
    upper = torch.rand(n, generator=gen) < 0.5
    return torch.where(upper, 1.5, -1.5) + 0.3 * torch.randn(n, generator=gen)


def test_trained_ddpm_recovers_a_bimodal_distribution():
    """A tiny head trained for a few seconds on an equal mixture of N(±1.5, 0.3²).

    Plain DDPM sampling passes a two-sample KS test against fresh draws. The fast default
    sampler (a deterministic ODE solver) is held to what it delivers with a head this
    small: the right mode weights and nothing between the modes, its modes a few % too wide
    (see the diffusion module docstring), so a KS distance below 0.07 (0.048 here).
    """
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    sched = DiffusionSchedule.build("sigmoid", 1000)
    head = DiffusionHead(d_cond=4, hidden=32, n_layers=2, time_dim=16)
    cond = torch.zeros(1, 4)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    n_steps = 1500
    lr_sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, n_steps)
    for _ in range(n_steps):
        x0 = _mixture(512, gen)[None, :]
        loss = noise_prediction_loss(lambda x, t: head(x, t, cond), sched, x0, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        lr_sched.step()
    reference = _mixture(2000, torch.Generator().manual_seed(999)).numpy()
    c_shift = head.cond_shift(cond)
    t_shift = head.time_shift(torch.arange(sched.steps))
    draws = {}
    with torch.no_grad():
        for name, kwargs in (("ddpm", {"solver": "ddpm"}), ("fast", {"steps": 25, "knots": 128})):
            draws[name] = sample(
                lambda x, t: head.mlp(x, c_shift + t_shift[t]),
                sched,
                1,
                2000,
                generator=torch.Generator().manual_seed(1),
                **kwargs,
            ).numpy()[0]
    assert stats.ks_2samp(draws["ddpm"], reference).pvalue > 0.05
    assert stats.ks_2samp(draws["fast"], reference).statistic < 0.07
    for x in draws.values():
        assert 0.45 < np.mean(x > 0) < 0.55
        assert np.mean(np.abs(x) < 0.5) < 0.05  # almost nothing between the modes
        assert abs(np.mean(x[x > 0]) - 1.5) < 0.1 and abs(np.mean(x[x < 0]) + 1.5) < 0.1
