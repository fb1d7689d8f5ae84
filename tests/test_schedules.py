import pytest
import torch

from unmask import get_schedule
from unmask.schedules import SCHEDULES

NAMES = ["loglinear", "linear", "cosine", "cosine_squared", "geometric", "polynomial"]


def test_every_name_is_registered():
    assert sorted(SCHEDULES) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_alpha_is_decreasing_from_clean_to_masked(name):
    s = get_schedule(name)
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    alpha = s.alpha(t)
    assert alpha[0] > 0.999 and alpha[-1] < 0.01
    assert (alpha[1:] <= alpha[:-1]).all()
    assert torch.allclose(s.one_minus_alpha(t), 1 - alpha, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_derivative_and_weight_match_finite_differences(name):
    s = get_schedule(name)
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    h = 1e-6
    numeric = (s.alpha(t + h) - s.alpha(t - h)) / (2 * h)
    assert torch.allclose(s.alpha_derivative(t), numeric, rtol=1e-5, atol=1e-8)
    assert torch.allclose(s.loss_weight(t), -numeric / (1 - s.alpha(t)), rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_unmask_probability(name):
    s = get_schedule(name)
    t = torch.tensor([0.9, 0.5, 0.2], dtype=torch.float64)
    sv = torch.tensor([0.8, 0.1, 0.0], dtype=torch.float64)
    expected = (s.alpha(sv) - s.alpha(t)) / (1 - s.alpha(t))
    assert torch.allclose(s.unmask_probability(t, sv), expected, rtol=1e-9)
    assert torch.all(s.unmask_probability(t, t) == 0)


@pytest.mark.parametrize("name", NAMES)
def test_time_of_alpha_inverts_alpha(name):
    s = get_schedule(name)
    t = torch.linspace(0.01, 0.99, 9, dtype=torch.float64)
    assert torch.allclose(s.time_of_alpha(s.alpha(t)), t, atol=1e-7)


def test_loglinear_is_the_papers_formula_and_safe_near_zero():
    s = get_schedule("loglinear", eps=1e-3)
    t = torch.tensor([1e-12, 0.5, 1.0], dtype=torch.float64)
    assert torch.allclose(s.alpha(t), 1 - (1 - 1e-3) * t)
    assert torch.allclose(s.loss_weight(t), 1 / t)
    # sigma and 1 - alpha keep full relative precision at tiny t (log1p / expm1).
    assert torch.allclose(s.one_minus_alpha(t[:1]), torch.tensor([(1 - 1e-3) * 1e-12], dtype=torch.float64), rtol=1e-9)
    assert torch.allclose(s.sigma(t[:1]), torch.tensor([(1 - 1e-3) * 1e-12], dtype=torch.float64), rtol=1e-6)


def test_weights_stay_finite_in_float32_near_the_ends():
    for name in NAMES:
        s = get_schedule(name)
        t = torch.tensor([1e-3, 1 - 1e-6, 1.0])
        assert torch.isfinite(s.loss_weight(t)).all(), name
        assert torch.isfinite(s.unmask_probability(t, t * 0.5)).all(), name


def test_lookup_errors_and_passthrough():
    s = get_schedule("polynomial", k=3.0)
    assert get_schedule(s) is s and s.k == 3.0
    with pytest.raises(ValueError, match="unknown schedule 'cosin'"):
        get_schedule("cosin")
    with pytest.raises(ValueError, match="bad arguments"):
        get_schedule("loglinear", sigma_max=3.0)
