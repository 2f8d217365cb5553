"""torchsde adapter: sdeint for learned steppers, SDEs as steppers, DICE as a torchsde SDE."""

import math

import numpy as np
import pytest
import torch
import torchsde
from steppers import ALL_STEPPERS

from slift_plugin import (
    DICE,
    MLP,
    CheckpointError,
    PotentialMLP,
    Stepper,
    StochasticLifting,
    rollout,
    save_stepper,
)
from slift_plugin.adapters.torchsde import (
    GridBrownian,
    SDEStepper,
    dice_sde,
    integrate_sde,
    sdeint,
)
from slift_plugin.systems import Lorenz63SDE, OrnsteinUhlenbeckSDE, ou_transition_moments


def lifting(d=2, dt=0.1):
    torch.manual_seed(0)
    return StochasticLifting(MLP(d, d, label_dim=3, hidden=16, depth=2), (d,), dt=dt)


def test_sdeint_layout_seeding_and_agreement_with_rollout():
    sl = lifting()
    y0 = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    ts = torch.tensor([0.0, 0.1, 0.3, 0.4])  # multiples of dt, one skipped
    a = sdeint(sl, y0, ts, seed=3, method="srk", dt=1e-3)  # torchsde options are ignored
    assert a.shape == (4, 6, 2) and a.dtype == y0.dtype
    torch.testing.assert_close(a[0], y0)
    torch.testing.assert_close(sdeint(sl, y0, ts, seed=3), a)
    assert not torch.allclose(sdeint(sl, y0, ts, seed=4)[1:], a[1:])
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    torch.testing.assert_close(sdeint(sl, y0, ts, generator=g1), sdeint(sl, y0, ts, generator=g2))
    ens = rollout(sl, y0, 4, seed=3)
    torch.testing.assert_close(a.transpose(0, 1), torch.as_tensor(ens.values)[:, [0, 1, 3, 4]])


def test_sdeint_flattens_field_states():
    from slift_plugin.adapters.neuralop import lifted_operator

    torch.manual_seed(0)
    net = lifted_operator(
        "fno", state_channels=2, label_dim=2, n_modes=(4,), hidden_channels=8, n_layers=1
    )
    sl = StochasticLifting(net, (2, None), dt=0.5)
    y0 = torch.randn(3, 2 * 16)
    out = sdeint(sl, y0, torch.tensor([0.0, 0.5, 1.0]), seed=0, grid_shape=(16,))
    assert out.shape == (3, 3, 32)
    ens = rollout(sl, y0.reshape(3, 2, 16), 2, seed=0)
    torch.testing.assert_close(out[-1], torch.as_tensor(ens.values[:, -1]).reshape(3, 32))
    with pytest.raises(ValueError, match="grid_shape"):
        sdeint(sl, y0, torch.tensor([0.0, 0.5]))


@pytest.mark.parametrize(
    "y0, ts, match",
    [
        (torch.zeros(4, 2), torch.tensor([0.0, 0.15]), "multiples of the stepper's trained step"),
        (torch.zeros(4, 2), torch.tensor([0.0, 0.2, 0.1]), "increasing multiples"),
        (torch.zeros(4, 2), torch.tensor([0.0]), "at least two times"),
        (torch.zeros(2), torch.tensor([0.0, 0.1]), "shape \\(batch, state_size\\)"),
        (torch.zeros(4, 3), torch.tensor([0.0, 0.1]), "state size 3"),
    ],
    ids=["off-grid", "decreasing", "one-time", "rank", "state-size"],
)
def test_sdeint_bad_input(y0, ts, match):
    with pytest.raises(ValueError, match=match):
        sdeint(lifting(), y0, ts, seed=0)


def test_sde_stepper_reproduces_the_exact_ou_transition():
    sde = OrnsteinUhlenbeckSDE(theta=1.0, center=0.5, sigma=0.5)
    stepper = SDEStepper(sde, 1, dt=0.5, dt_internal=0.01)
    n = 20_000
    ens = rollout(stepper, torch.tensor([1.5]), 1, n, seed=0, chunk_size=4096)
    y = ens.isel(time=1, channel=0).values.astype(np.float64)
    mean, var = ou_transition_moments(1.5, 0.5, 1.0, 0.5, 0.5)
    # Euler at h=0.01 is biased by O(h) ~ 1%; sampling error of the mean ~0.002
    assert abs(y.mean() - mean) < 4 * math.sqrt(var / n) + 0.01 * abs(mean)
    assert abs(y.var() / var - 1) < 4 * math.sqrt(2 / n) + 0.02
    again = rollout(stepper, torch.tensor([1.5]), 1, n, seed=0, chunk_size=1000)
    np.testing.assert_array_equal(again.values, ens.values)  # fixed seed, any chunking


def test_sde_stepper_rejects_incompatible_sdes():
    class Weird(torch.nn.Module):
        noise_type, sde_type = "weird", "ito"

    with pytest.raises(ValueError, match="noise_type"):
        SDEStepper(Weird(), 2, dt=0.1, dt_internal=0.01)
    strat = OrnsteinUhlenbeckSDE()
    strat.sde_type = "stratonovich"
    with pytest.raises(ValueError, match="Ito"):
        SDEStepper(strat, 1, dt=0.1, dt_internal=0.01)
    with pytest.raises(ValueError, match="integer"):
        SDEStepper(Lorenz63SDE(), 3, dt=0.1, dt_internal=0.03)
    with pytest.raises(ValueError, match="method"):
        SDEStepper(Lorenz63SDE(), 3, dt=0.1, dt_internal=0.01, method="srk")


def dice_model(sigma):
    torch.manual_seed(0)
    dice = DICE(PotentialMLP(2, hidden=16, depth=2), (2,), sigma=sigma, dt=0.2, n_substeps=4)
    return dice


@pytest.mark.parametrize("sigma", [0.0, 0.4])
def test_dice_sde_matches_rollout_with_shared_increments(sigma):
    dice = dice_model(sigma)
    x0 = torch.randn(8, 2, generator=torch.Generator().manual_seed(1))
    h = dice.dt / dice.n_substeps
    noise = torch.randn(8, dice.n_substeps, 2, generator=torch.Generator().manual_seed(2))
    stepped = dice.step(x0, noise if sigma else None, t=0.0)
    bm = GridBrownian(0.0, h, noise.transpose(0, 1))
    ys = torchsde.sdeint(
        dice_sde(dice), x0, torch.tensor([0.0, dice.dt]), bm=bm, method="euler", dt=h
    )
    torch.testing.assert_close(ys[-1], stepped, rtol=1e-5, atol=1e-6)


def test_dice_sde_adjoint_gradient_matches_backprop():
    """sdeint_adjoint's gradient converges to backprop through the solver as h -> 0.

    The adjoint solves its own backward SDE, so at a finite step the two differ by the
    discretisation error: the test checks the size of that gap and that it shrinks with h.
    """
    dice = dice_model(0.3)
    sde = dice_sde(dice)
    x0 = torch.randn(5, 2, generator=torch.Generator().manual_seed(1))
    ts = torch.tensor([0.0, 0.2])
    last = f"{len(dice.potential.net) - 1}.bias"  # never reaches grad_x s: left out
    params = [p for n, p in sde.named_parameters() if not n.endswith(last)]

    def gap(n_steps):
        h = 0.2 / n_steps
        noise = torch.randn(n_steps, 5, 2, generator=torch.Generator().manual_seed(3))

        def grads(integrate, **extra):
            bm = GridBrownian(0.0, h, noise)
            ys = integrate(sde, x0, ts, bm=bm, method="euler", dt=h, **extra)
            return torch.cat(
                [g.flatten() for g in torch.autograd.grad((ys[-1] ** 2).sum(), params)]
            )

        direct = grads(torchsde.sdeint)
        adjoint = grads(torchsde.sdeint_adjoint, adjoint_params=params)
        assert direct.abs().sum() > 0
        return float((adjoint - direct).norm() / direct.norm())

    coarse, fine = gap(4), gap(40)
    assert fine < 0.05, (coarse, fine)
    assert fine < coarse / 3, (coarse, fine)


def test_sdeint_accepts_float32_time_grids_over_long_horizons():
    sl = lifting(d=2, dt=0.05)
    ts = 0.05 * torch.arange(401, dtype=torch.float32)  # t up to 20 in float32
    out = sdeint(sl, torch.zeros(2, 2), ts, seed=0)
    assert out.shape == (401, 2, 2)
    ens = rollout(sl, torch.zeros(2, 2), 400, seed=0)
    torch.testing.assert_close(out[-1], torch.as_tensor(ens.values[:, -1]))


@pytest.mark.parametrize(
    "y0",
    [
        torch.tensor([[1, 2], [3, 4]]),  # int64: the path used to come back truncated to ints
        torch.tensor([[1.0, 2.0], [3.0, 4.0]]) * (1 + 1j),  # complex: imaginary part lost
        torch.zeros(2, 2, dtype=torch.bool),
    ],
    ids=["int64", "complex64", "bool"],
)
def test_sdeint_refuses_non_real_floating_y0(y0):
    with pytest.raises(ValueError, match=f"real floating-point tensor; got dtype {y0.dtype}"):
        sdeint(lifting(), y0, torch.tensor([0.0, 0.1, 0.2]), seed=0)


def test_sdeint_computes_in_the_stepper_dtype_and_returns_y0_dtype():
    sl = lifting()  # float32 parameters
    y0 = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = sdeint(sl, y0, torch.tensor([0.0, 0.1, 0.2]), seed=1)
    assert out.dtype == torch.float64
    # the float32 rollout, widened: the path is the stepper's, not a float64 recomputation
    expected = torch.as_tensor(rollout(sl, y0.float(), 2, seed=1).values).transpose(0, 1)
    assert expected.dtype == torch.float32
    torch.testing.assert_close(out, expected.double(), rtol=0, atol=0)


def test_sdeint_and_integrate_sde_accept_ts_as_a_list():
    sl = lifting()
    y0 = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    as_tensor = sdeint(sl, y0, torch.tensor([0.0, 0.1, 0.3]), seed=2)
    torch.testing.assert_close(sdeint(sl, y0, [0.0, 0.1, 0.3], seed=2), as_tensor)
    torch.testing.assert_close(sdeint(sl, y0, (0, 0.1, 0.3), seed=2), as_tensor)
    with pytest.raises(ValueError, match="ts must be a 1-D tensor or a list of numbers"):
        sdeint(sl, y0, [0.0, "0.1"], seed=2)
    with pytest.raises(ValueError, match="ts must be a 1-D tensor or a list of numbers"):
        sdeint(sl, y0, [0.0, True], seed=2)
    with pytest.raises(ValueError, match="at least two times"):
        sdeint(sl, y0, [0.0], seed=2)
    sde, x0 = OrnsteinUhlenbeckSDE(), torch.ones(3, 1, dtype=torch.float64)
    ts = torch.tensor([0.0, 0.1, 0.2], dtype=torch.float64)
    torch.testing.assert_close(
        integrate_sde(sde, x0, [0.0, 0.1, 0.2], dt=0.01, seed=0),
        integrate_sde(sde, x0, ts, dt=0.01, seed=0),
        rtol=0,
        atol=0,
    )


def test_sdeint_randomness_follows_torchsdes_conventions():
    # Fresh paths per call unless fixed; torch.manual_seed or bm's entropy fix them.
    sl = lifting()
    y0, ts = torch.zeros(64, 2), [0.0, 0.1, 0.2]
    torch.manual_seed(11)
    first, second = sdeint(sl, y0, ts), sdeint(sl, y0, ts)
    assert not torch.allclose(first[1:], second[1:])  # successive calls differ
    torch.manual_seed(11)
    torch.testing.assert_close(sdeint(sl, y0, ts), first)  # the global seed reproduces
    # bm: the same entropy gives the same ensemble, whatever the global RNG did since
    tree = dict(t0=0.0, w0=torch.zeros(64, 2), t1=0.2)
    a = sdeint(sl, y0, ts, bm=torchsde.BrownianTree(**tree, entropy=5))
    torch.manual_seed(99)
    b = sdeint(sl, y0, ts, bm=torchsde.BrownianInterval(0.0, 0.2, size=(64, 2), entropy=5))
    c = sdeint(sl, y0, ts, bm=torchsde.BrownianTree(**tree, entropy=6))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a[1:], c[1:])
    with pytest.raises(ValueError, match="cannot read an entropy from bm"):
        sdeint(sl, y0, ts, bm=object())


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"logqp": True}, ValueError, "logqp=.* is not supported: the KL term"),
        ({"extra": True}, ValueError, "extra=.* is not supported"),
        ({"extra_solver_state": (torch.zeros(1),)}, ValueError, "no solver state to resume"),
        ({"names": {"drift": "h"}}, ValueError, "renames the drift/diffusion"),
        ({"adaptive": True}, ValueError, "adaptive=True.* no error estimate"),
        ({"method": "not-a-method"}, ValueError, "method must be one of torchsde's"),
        ({"stepsize": 0.1}, TypeError, "unexpected keyword argument 'stepsize'"),
    ],
)
def test_sdeint_refuses_what_it_cannot_honour(options, error, message):
    sl = lifting()
    with pytest.raises(error, match=message):
        sdeint(sl, torch.zeros(4, 2), [0.0, 0.1], seed=0, **options)


def test_sdeint_accepts_torchsdes_integrator_options_and_defaults():
    # A torchsde call keeps working when only the import and the first argument change.
    sl = lifting()
    y0, ts = torch.zeros(4, 2), [0.0, 0.1]
    plain = sdeint(sl, y0, ts, seed=0)
    call = dict(method="euler", dt=1e-3, adaptive=False, rtol=1e-5, atol=1e-4, dt_min=1e-5)
    defaults = dict(options=None, names=None, logqp=False, extra=False, extra_solver_state=None)
    torch.testing.assert_close(sdeint(sl, y0, ts, seed=0, **call, **defaults), plain)


def test_sdeint_records_no_graph_unless_an_input_requires_grad():
    sl = lifting()  # its parameters require grad, as any trained stepper's do
    ys = sdeint(sl, torch.zeros(4, 2), [0.0, 0.1], seed=0)
    assert not ys.requires_grad and ys.grad_fn is None
    y0 = torch.zeros(4, 2, requires_grad=True)
    with torch.no_grad():
        quiet = sdeint(sl, y0, [0.0, 0.1], seed=0)
    assert not quiet.requires_grad
    torch.testing.assert_close(quiet, ys, rtol=0, atol=0)


def test_differentiable_sdeint_takes_the_sampling_path_bit_for_bit():
    """Same chunks, noise draws and dtype as rollout: equal values, not merely close.

    300 samples in chunks of 128 cover whole and partial seed blocks of rollout's noise.
    """
    sl = lifting()
    sl.train()
    y0 = torch.randn(300, 2, generator=torch.Generator().manual_seed(0))
    ts = [0.0, 0.1, 0.3, 0.4]
    plain = sdeint(sl, y0, ts, seed=5, chunk_size=128)
    ys = sdeint(sl, y0.clone().requires_grad_(), ts, seed=5, chunk_size=128)
    assert ys.requires_grad and sl.training  # the stepper's mode is handed back
    torch.testing.assert_close(ys.detach(), plain, rtol=0, atol=0)


def conditioned_lifting_f64():
    torch.manual_seed(0)
    net = MLP(2, 2, label_dim=3, n_cond=1, hidden=16, depth=2)
    return StochasticLifting(net, (2,), n_params=1, dt=0.1).double()


def test_differentiable_sdeint_gradients_match_central_differences():
    """d/dy0, d/dmu and d/dweight of a loss on the path, against (L(+h) - L(-h)) / 2h.

    The same seed gives the same noise on both sides, so the difference quotient is that
    of one smooth function; in float64 with h = 1e-6 it is accurate to ~1e-8.
    """
    sl = conditioned_lifting_f64()
    ts, h = [0.0, 0.1, 0.2, 0.4], 1e-6
    y0 = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    mu = torch.tensor([0.7], dtype=torch.float64)
    weight = next(p for name, p in sl.named_parameters() if name.endswith("weight"))

    def loss(y, m):
        ys = sdeint(sl, y, ts, mu=m, seed=3)
        return (ys[-1] ** 2).sum() + ys[1].sum()

    y, m = y0.clone().requires_grad_(), mu.clone().requires_grad_()
    grads = torch.autograd.grad(loss(y, m), (y, m, weight))

    def central(perturb):
        with torch.no_grad():
            return (perturb(h) - perturb(-h)) / (2 * h)

    def moved(tensor, index, step):
        out = tensor.clone()
        out[index] += step
        return out

    fd_y0 = torch.stack(
        [central(lambda s, i=i: loss(moved(y0, i, s), mu)) for i in np.ndindex(*y0.shape)]
    )
    fd_mu = central(lambda s: loss(y0, mu + s))

    def with_weight(s):
        weight.data[0, 0] += s
        try:
            return loss(y0, mu)
        finally:
            weight.data[0, 0] -= s

    torch.testing.assert_close(grads[0].flatten(), fd_y0, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(grads[1], fd_mu.reshape(1), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(grads[2][0, 0], central(with_weight), rtol=1e-6, atol=1e-8)


class LinearStepper(Stepper):
    """``x_{k+1} = a x_k + b noise_k``: its gradients have a closed form."""

    def __init__(self, a: float, b: float, dtype=torch.float64) -> None:
        super().__init__((1,), dt=0.5)
        self.a = torch.nn.Parameter(torch.tensor(a, dtype=dtype))
        self.b = torch.nn.Parameter(torch.tensor(b, dtype=dtype))

    def noise_shape(self, grid_shape):
        return (1,)

    def step(self, window, noise=None, *, mu=None, t=None):
        return self.a * window + self.b * noise

    def loss(self, batch):
        raise NotImplementedError


def test_differentiable_sdeint_of_a_linear_stepper_gives_the_closed_form():
    # x_K = a^K x_0 + b S, S = sum_j a^(K-1-j) noise_j, so for L = sum_i x_K:
    # dL/dx_0 = a^K, dL/db = sum_i (x_K - a^K x_0) / b, dL/da = sum_i sum_j a^(K-1-j) x_j.
    stepper, k_steps = LinearStepper(0.8, 0.3), 4
    y0 = torch.linspace(-1, 1, 6, dtype=torch.float64).reshape(6, 1).requires_grad_()
    ys = sdeint(stepper, y0, 0.5 * torch.arange(k_steps + 1.0), seed=0)
    d_y0, d_a, d_b = torch.autograd.grad(ys[-1].sum(), (y0, stepper.a, stepper.b))
    a, b, path = 0.8, 0.3, ys.detach()
    torch.testing.assert_close(d_y0, torch.full_like(d_y0, a**k_steps))
    torch.testing.assert_close(d_b, ((path[-1] - a**k_steps * path[0]) / b).sum())
    powers = a ** torch.arange(k_steps - 1, -1, -1, dtype=torch.float64)
    torch.testing.assert_close(d_a, (powers[:, None, None] * path[:-1]).sum())


def test_differentiable_sdeint_reports_blow_ups_as_the_sampling_path_does():
    stepper = LinearStepper(1e200, 1.0)
    y0, ts = torch.ones(3, 1, dtype=torch.float64), [0.0, 0.5, 1.0]
    for x0 in (y0, y0.clone().requires_grad_()):
        with pytest.raises(FloatingPointError, match="first at step 2 .* of sample 0"):
            sdeint(stepper, x0, ts, seed=0)
    ys = sdeint(stepper, y0.clone().requires_grad_(), ts, seed=0, on_nonfinite="ignore")
    assert ys.requires_grad and not torch.isfinite(ys[-1]).any()


VECTOR_CASES = [c for c in ALL_STEPPERS if "fno" not in c.name]  # the FNO ones are fields


@pytest.mark.parametrize("case", VECTOR_CASES, ids=lambda c: c.name)
def test_differentiable_sdeint_for_every_vector_stepper(case):
    """Every Markov vector stepper differentiates with its sampling values, or is refused:
    DICE, whose step returns detached states, with a pointer to dice_sde; a stepper with
    a history, which torchsde's one-state y0 cannot start."""
    stepper = case.build()
    d = stepper.n_channels
    mu = torch.tensor([0.5]) if stepper.n_params else None
    y0 = torch.randn(4, d, generator=torch.Generator().manual_seed(0))
    ts = [0.0, stepper.dt, 2 * stepper.dt]
    y = y0.clone().requires_grad_()
    if stepper.history > 1:
        with pytest.raises(ValueError, match="needs a Markov stepper"):
            sdeint(stepper, y, ts, mu=mu, seed=0)
        return
    if stepper.requires_grad_in_step:
        with pytest.raises(ValueError, match="without a graph.*dice_sde"):
            sdeint(stepper, y, ts, mu=mu, seed=0)
        return
    ys = sdeint(stepper, y, ts, mu=mu, seed=0)
    torch.testing.assert_close(ys.detach(), sdeint(stepper, y0, ts, mu=mu, seed=0), rtol=0, atol=0)
    (grad,) = torch.autograd.grad(ys[-1].pow(2).sum(), y)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_sdeint_takes_the_path_of_a_checkpoint(tmp_path):
    # a torchsde script swaps the SDE object for a file name: load_stepper(path) rebuilds it
    sl = lifting()
    save_stepper(tmp_path / "sl.pt", sl)
    y0, ts = torch.randn(5, 2, generator=torch.Generator().manual_seed(0)), [0.0, 0.1, 0.2]
    expected = sdeint(sl, y0, ts, seed=4)
    for path in (tmp_path / "sl.pt", str(tmp_path / "sl.pt")):
        torch.testing.assert_close(sdeint(path, y0, ts, seed=4), expected, rtol=0, atol=0)
    with pytest.raises(CheckpointError):
        sdeint(tmp_path / "missing.pt", y0, ts, seed=4)


def test_sdeint_refuses_what_is_not_a_markov_stepper():
    with pytest.raises(TypeError, match="a slift Stepper or the path of its checkpoint"):
        sdeint(OrnsteinUhlenbeckSDE(), torch.zeros(4, 1), [0.0, 0.1], seed=0)
    torch.manual_seed(0)
    windowed = StochasticLifting(MLP(4, 2, label_dim=3, hidden=8), (2,), history=2, dt=0.1)
    with pytest.raises(ValueError, match="Markov stepper \\(history=1\\); got history=2"):
        sdeint(windowed, torch.zeros(4, 2), [0.0, 0.1], seed=0)


def test_differentiable_sdeint_runs_where_the_stepper_is():
    y0 = torch.zeros(4, 2, device="meta", requires_grad=True)
    with pytest.raises(ValueError, match="runs on the stepper's device \\(cpu\\); y0 is on meta"):
        sdeint(lifting(), y0, [0.0, 0.1], seed=0)
