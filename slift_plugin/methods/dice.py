"""DICE (Blickhan, Berman, Stuart, Peherstorfer 2025): population dynamics from snapshots.

A scalar potential ``s_theta(x, t, mu)`` defines the velocity ``v = grad_x s``. It is
trained from unpaired sample sets ``X_0 .. X_K`` at times ``t_0 < ... < t_K`` with the
discrete inverse continuity equation loss (trapezoid weights ``w_k``, gaps
``d_k = t_{k+1} - t_k``)::

    L = sum_k w_k 1/2 E_k |v(x, t_k)|^2
        - sum_{k<K} 1/2 (E_{k+1}[s(., t_k) + s(., t_{k+1})] - E_k[s(., t_k) + s(., t_{k+1})])
        + sigma^2/2 sum_k w_k E_k[laplacian_x s(x, t_k)]        (entropic variant)
        + alpha sum_k d_k/4 (E_k + E_{k+1})[s(., t_k)^2 + s(., t_{k+1})^2]   (optional)

Adding any ``c(t)`` to ``s`` leaves ``L`` unchanged exactly when ``alpha == 0``: the
boundary terms compare the same constant under two expectations, and every other term
sees only ``x``-derivatives of ``s``. Generation is Euler (Euler-Maruyama with the same
``sigma`` in the entropic variant) in physical time: one gradient evaluation per
(sub-)step.

With few snapshot times the sampled loss is unbounded below: ``s(., t_k)`` enters the
boundary term on ``X_{k+1}`` but its kinetic energy is measured on ``X_k`` only, so where
``X_{k+1}`` has mass and ``X_k`` has none the potential can grow without cost. Two
regularisers act on it (see :class:`DICE`): ``kinetic_on_neighbours`` (kinetic energy
of ``s(., t_k)`` also on ``X_{k-1}`` and ``X_{k+1}``; keeps the ``c(t)`` invariance and
tends to the same continuum loss as the gaps shrink, but bounds the loss only where the
populations of neighbouring times overlap) and ``alpha`` (a quadratic in ``s`` on every
evaluation of the boundary term: a hard bound ``L >= -sum_k 1/(alpha d_k)`` when
``sigma == 0``, but it breaks the invariance and biases the minimiser).

Fields ``(C, *grid)`` are functions on a unit domain with cell volume ``h = 1/n_points``:
the potential is a functional (the grid average of an operator's output), the velocity is
its functional derivative ``(1/h) d s / d u``, kinetic energies use the ``L2`` norm
``h sum_i v_i^2``, and the noise is space-time white (per-cell variance ``dt / h``). With
``h = 1`` this is the vector case. DICE matches marginals, not sample paths.

Scale: the potential sees standardised states, so an output that changes by order one over
a standard deviation gives velocities of order ``1 / state_std``. Where the populations move
much faster than that for part of the time (Lorenz-96's first half time unit: about 50 times
faster), the
optimiser spends its steps growing the output; ``potential_scale`` multiplies the output
by a number chosen from the data, :meth:`slift_plugin.SnapshotDataset.marginal_speed`.

Precision: the loss casts each batch to the dtype of the stepper's parameters, so a DICE
over a :class:`slift_plugin.PotentialMLP` trains and samples in float64 after
``.double()`` (the authors' regime); neuraloperator potentials refuse the cast and stay
float32.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ..protocols import Potential
from .base import NormalizedStepper

__all__ = ["DICE", "LAPLACIANS", "SCHEMES", "trapezoid_weights"]

LAPLACIANS = ("exact", "hutchinson")
#: How :meth:`DICE.step` integrates the velocity over a sub-step: explicit Euler(-Maruyama),
#: one gradient evaluation; or Heun's predictor-corrector (stochastic Heun with the same
#: noise increment in predictor and corrector, which for DICE's additive noise is
#: consistent with the Ito SDE), two.
SCHEMES = ("euler", "heun")


def trapezoid_weights(times: Tensor) -> Tensor:
    """Trapezoid quadrature weights of a sorted 1-D time grid (at least two points).

    ``w_0 = (t_1 - t_0)/2``, ``w_k = (t_{k+1} - t_{k-1})/2``, ``w_K = (t_K - t_{K-1})/2``.

    Parameters
    ----------
    times : Tensor
        The time grid ``(K+1,)``, strictly increasing, ``K >= 1``.

    Returns
    -------
    Tensor
        The weights ``w`` ``(K+1,)``, of the dtype and device of ``times``.

    Raises
    ------
    ValueError
        If ``times`` is not 1-D with at least two entries, or not strictly increasing.
    """
    if times.ndim != 1 or times.numel() < 2:
        raise ValueError(f"need a 1-D grid of at least two times, got shape {tuple(times.shape)}")
    gaps = times[1:] - times[:-1]
    if not (gaps > 0).all():
        raise ValueError(f"times must be strictly increasing, got {times.tolist()}")
    w = torch.zeros_like(times)
    w[:-1] += gaps / 2
    w[1:] += gaps / 2
    return w


def _mixed_quadrature(t: Tensor, here: Tensor, across: Tensor | None, lam: float) -> Tensor:
    """Trapezoid rule in time of a per-sample quantity ``f(x, t_k)``, mixed across gaps.

    ``here`` is ``f_k`` on ``X_k`` ``(K+1, B)``; ``across`` stacks ``f_{k+1}`` on ``X_k``
    and then ``f_k`` on ``X_{k+1}`` ``(2K, B)``. On each gap the trapezoid
    ``d_k/2 (E_k f_k + E_{k+1} f_{k+1})`` gives a ``lam`` share to
    ``d_k/2 (E_{k+1} f_k + E_k f_{k+1})``: ``lam = 0`` is the plain rule (``across``
    unused, may be None), ``lam = 0.5`` measures both ``f_k`` and ``f_{k+1}`` on the
    mixture of ``X_k`` and ``X_{k+1}``.
    """
    plain = (trapezoid_weights(t) * here.mean(1)).sum()
    if lam == 0:
        return plain
    forward, backward = across.mean(1).chunk(2)
    return (1 - lam) * plain + lam * (0.5 * (t[1:] - t[:-1]) * (forward + backward)).sum()


class DICE(NormalizedStepper):
    """DICE stepper around a potential ``s(x_normalised, t_normalised, mu_normalised)``.

    Parameters
    ----------
    potential : torch.nn.Module
        A :class:`~slift_plugin.protocols.Potential`, ``potential(x, t, cond) -> (B,)``
        with ``n_cond == n_params``: :class:`slift_plugin.PotentialMLP` for vectors,
        :func:`slift_plugin.adapters.neuralop.operator_potential` for fields.
    state_shape : tuple of int or None
        ``(d,)`` or ``(C, *grid)`` (grid entries may be ``None``).
    n_params : int
        Number of physics parameters ``mu``.
    sigma : float
        Known diffusion (0: the deterministic variant). With ``sigma > 0`` (the entropic
        variant) the loss gains ``sigma^2/2 sum_k w_k E_k[laplacian s]`` and :meth:`step`
        adds Euler-Maruyama noise of the same ``sigma``: the two belong together, the
        velocity learnt is the drift of an SDE with this diffusion.
    laplacian : str
        ``"exact"`` (one extra backward per dimension) or ``"hutchinson"`` (Rademacher
        probes, ``n_probes`` of them) for the diffusion term.
    n_probes : int
        Rademacher probes per time of the Hutchinson estimate of the Laplacian (used
        only with ``laplacian="hutchinson"`` and ``sigma > 0``).
    dt : float
        Output step for rollouts (``nan`` when unknown; :meth:`step` needs it finite).
    n_substeps : int
        Sub-steps of ``dt / n_substeps`` per output step (:attr:`evals_per_step`).
    scheme : str
        One of :data:`SCHEMES`: ``"euler"`` (one gradient evaluation per sub-step) or
        ``"heun"`` (two; second order in ``dt`` for the deterministic variant). On
        Lorenz-96 the exact drift diverges with 4 Euler sub-steps of 0.0125 and is at the
        noise floor with 2 Heun sub-steps (the same 4 evaluations); with them a trained
        DICE's ED ratio fell 20-35% at t = 1 and 2 and rose 12-28% at t = 0.25, in each
        of 3 seeds (BENCHMARKS.md, "Lorenz-96 in the bench: a broad start and 2,048
        trajectories per forcing"). At the same cost it was worse on the double well
        and on Allen-Cahn fields and equal on Vlasov, hence the default.
    kinetic_on_neighbours : float
        ``lam`` in ``[0, 1]``: on each gap ``[t_k, t_{k+1}]`` the kinetic energy of
        ``s(., t_k)`` is measured on ``(1 - lam) X_k + lam X_{k+1}`` and that of
        ``s(., t_{k+1})`` on ``(1 - lam) X_{k+1} + lam X_k`` (0: the plain trapezoid
        rule; 0.5: both on the mixture of the two populations; 1 leaves the own
        population out and does not bound anything). With ``0 < lam < 1`` the loss of
        continuous populations is bounded from below when ``X_{k+1}`` has mass where
        ``X_k`` has none, as long as the two overlap; on a minibatch with an unsampled
        gap between them it is not (use ``alpha``). It only involves ``grad_x s``, so
        the exact ``c(t)`` invariance is kept, and it changes the quadrature by
        ``O(d_k)``: the same continuum loss as the gaps shrink. It costs a double
        backward on the neighbour evaluations (about 1.5 times the work of a loss).
    alpha : float
        Weight, ``>= 0``, of ``alpha sum_k d_k/4 (E_k + E_{k+1})[s(., t_k)^2 +
        s(., t_{k+1})^2]``: the square of every potential value the boundary term uses,
        the cross-time ones included (on those an unregularised ``s`` runs away). By
        Cauchy-Schwarz the loss is then at least ``-sum_k 1/(alpha d_k)`` when
        ``sigma == 0``, for any minibatch, but the term pins the free additive ``c(t)``
        (the loss is no longer invariant to it) and biases the minimiser: on an OU
        population the sampled mean is off by 0.01-0.03 marginal std at ``alpha = 0.01``
        (0.00-0.01 without) and 0.12-0.17 at 0.1. The scale of ``s`` depends on the
        normalisation, so ``alpha`` is problem-specific.
    potential_scale : float
        ``> 0``: ``s`` is this times the potential's output, so a potential of order one
        gives velocities of order ``potential_scale / state_std``. 1 keeps the raw output;
        :meth:`slift_plugin.SnapshotDataset.marginal_speed` estimates a scale from the
        training populations. On Lorenz-96 (d = 20) that estimate (53) took the held-out
        ED ratio at t = 0.25 from 56-107 to 7-14 (BENCHMARKS.md, "DICE on Lorenz-96: the
        potential's scale and the times per batch"); on the double well and Vlasov it was
        mixed, so 1 stays the default.

    Raises
    ------
    TypeError
        If ``potential`` is not a :class:`~slift_plugin.protocols.Potential`.
    ValueError
        If ``laplacian`` is not one of :data:`LAPLACIANS`, ``sigma`` or ``alpha`` is
        negative or not finite, ``kinetic_on_neighbours`` is outside ``[0, 1]``,
        ``n_substeps`` or ``n_probes`` is below one, ``scheme`` is not one of
        :data:`SCHEMES`, ``potential.n_cond != n_params``,
        or ``state_shape``/``n_params`` is invalid for :class:`slift_plugin.Stepper`.

    Notes
    -----
    The authors' working regime (their Vlasov runs) is hundreds to thousands of snapshot
    times, batches of 256 times x 256 particles with both endpoints kept
    (:class:`slift_plugin.SnapshotDataset` with ``n_times``), a width-128 depth-6 SiLU
    :class:`slift_plugin.PotentialMLP`, Adam at 5e-4 with cosine decay for about 25k
    iterations, float64 (``.double()``) and an entropic ``sigma`` kept at sampling.
    """

    requires_grad_in_step = True  # the velocity is a gradient of the potential

    def __init__(
        self,
        potential: nn.Module,
        state_shape: tuple[int | None, ...],
        *,
        n_params: int = 0,
        sigma: float = 0.0,
        laplacian: str = "exact",
        n_probes: int = 1,
        dt: float = math.nan,
        n_substeps: int = 1,
        scheme: str = "euler",
        kinetic_on_neighbours: float = 0.0,
        alpha: float = 0.0,
        potential_scale: float = 1.0,
    ) -> None:
        super().__init__(state_shape, history=1, n_params=n_params, dt=dt)
        if laplacian not in LAPLACIANS:
            raise ValueError(f"laplacian must be one of {LAPLACIANS}, got {laplacian!r}")
        if scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
        for name, value in (("sigma", sigma), ("alpha", alpha)):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be finite and >= 0, got {value}")
        if not (math.isfinite(potential_scale) and potential_scale > 0):
            raise ValueError(f"potential_scale must be finite and > 0, got {potential_scale}")
        if not 0.0 <= kinetic_on_neighbours <= 1.0:
            raise ValueError(
                f"kinetic_on_neighbours must be in [0, 1], got {kinetic_on_neighbours}"
            )
        if int(n_substeps) < 1 or int(n_probes) < 1:
            raise ValueError(f"n_substeps and n_probes must be >= 1, got {n_substeps}, {n_probes}")
        if not isinstance(potential, Potential):
            raise TypeError(
                f"potential {type(potential).__name__} is not a slift_plugin.protocols.Potential:"
                " it needs an n_cond attribute and forward(x, t, cond) -> (B,); build it with "
                "slift_plugin.PotentialMLP or slift_plugin.adapters.neuralop.operator_potential"
            )
        if potential.n_cond != n_params:
            raise ValueError(
                f"potential is built for n_cond={potential.n_cond}, stepper has n_params={n_params}"
            )
        self.potential = potential
        self.sigma = float(sigma)
        self.laplacian = laplacian
        self.n_probes = int(n_probes)
        self.n_substeps = int(n_substeps)
        self.scheme = scheme
        self.kinetic_on_neighbours = float(kinetic_on_neighbours)
        self.alpha = float(alpha)
        self.potential_scale = float(potential_scale)

    @property
    def evals_per_step(self) -> int:  # type: ignore[override]
        """Gradient evaluations (a forward and a backward each) per output step: one per
        Euler sub-step, two per Heun sub-step."""
        return self.n_substeps * (2 if self.scheme == "heun" else 1)

    # -- normalisation --------------------------------------------------------------------
    def state_statistics_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per channel state mean and std, and the offset and scale of time.

        Returns
        -------
        dict of str to tuple of int
            ``state_mean`` and ``state_std``, each ``(C,)``, and the scalars
            ``time_offset`` and ``time_scale``, each ``()``.
        """
        c = self.n_channels
        return {"state_mean": (c,), "state_std": (c,), "time_offset": (), "time_scale": ()}

    def _adjust_normalization(self, checked: dict[str, Tensor]) -> dict[str, Tensor]:
        for i, period in enumerate(getattr(self.potential, "periods", None) or []):
            if period is not None:  # periodic coordinates reach the potential unscaled
                checked["state_mean"][i], checked["state_std"][i] = 0.0, 1.0
        return checked

    # -- potential and velocity -------------------------------------------------------------
    def cell_volume(self, x: Tensor) -> float:
        """``1/n_points`` of the grid of ``x`` (unit domain); 1 for vector states.

        Parameters
        ----------
        x : Tensor
            A batch of states ``(B, C, *grid)`` or ``(B, d)``.

        Returns
        -------
        float
            ``h = 1 / prod(grid)``, or 1.0 when ``x`` has no grid axes.
        """
        return 1.0 / math.prod(x.shape[2:]) if x.ndim > 2 else 1.0

    def potential_value(self, x: Tensor, t: Tensor | float, mu: Tensor | None = None) -> Tensor:
        """``s(x, t, mu)`` per sample, shape ``(B,)``; ``t`` scalar or ``(B,)``.

        ``x``, ``t`` and ``mu`` are standardised with the stored statistics before they
        reach the potential, whose output is multiplied by ``potential_scale``.

        Parameters
        ----------
        x : Tensor
            States ``(B, C, *grid)`` or ``(B, d)``, in physical units.
        t : Tensor or float
            Physical time, a scalar or ``(B,)``.
        mu : Tensor or None
            Physics parameters ``(B, n_params)``; None without parameters.

        Returns
        -------
        Tensor
            The potential ``(B,)``.

        Raises
        ------
        TypeError
            If ``x`` is not a tensor.
        ValueError
            If ``x`` does not fit ``state_shape`` or is an empty batch, or if ``mu`` is
            missing, unexpected or misshapen.
        """
        self.check_window(x, "x")
        cond = self.standardized_mu(mu, x.shape[0])
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        shape = (1, -1, *([1] * (x.ndim - 2)))
        xn = (x - self.state_mean.reshape(shape)) / self.state_std.reshape(shape)
        tn = (t - self.time_offset) / self.time_scale
        return self.potential_scale * self.potential(xn, tn, cond)

    def velocity(
        self, x: Tensor, t: Tensor | float, mu: Tensor | None = None, *, create_graph: bool = False
    ) -> tuple[Tensor, Tensor]:
        """``(v, s)``: the velocity ``(1/h) grad_x s`` (same shape as ``x``) and ``s``.

        Gradients are enabled inside, also under ``torch.no_grad()``.

        Parameters
        ----------
        x : Tensor
            States ``(B, C, *grid)`` or ``(B, d)``, in physical units; a leaf without
            ``requires_grad`` is detached and made to require it.
        t : Tensor or float
            Physical time, a scalar or ``(B,)``.
        mu : Tensor or None
            Physics parameters ``(B, n_params)``; None without parameters.
        create_graph : bool
            Keep the graph of the gradient, so that ``v`` can be differentiated again
            (the loss does, for the kinetic and Laplacian terms).

        Returns
        -------
        tuple of (Tensor, Tensor)
            The velocity ``v`` (the shape of ``x``, with ``h`` = :meth:`cell_volume`) and
            the potential ``s`` ``(B,)``.

        Raises
        ------
        TypeError
            If ``x`` is not a tensor.
        ValueError
            If ``x`` does not fit ``state_shape`` or is an empty batch, or if ``mu`` is
            missing, unexpected or misshapen.
        """
        with torch.enable_grad():
            if not x.requires_grad:
                x = x.detach().requires_grad_(True)
            s = self.potential_value(x, t, mu)
            (grad,) = torch.autograd.grad(s.sum(), x, create_graph=create_graph)
        return grad / self.cell_volume(x), s

    def _laplacian(self, x: Tensor, v: Tensor, generator: torch.Generator | None) -> Tensor:
        """``(1/h) sum_i d^2 s / d x_i^2`` per sample (``v`` built with create_graph)."""
        flat_v = v.reshape(v.shape[0], -1)
        if self.laplacian == "exact":
            total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
            for i in range(flat_v.shape[1]):
                (row,) = torch.autograd.grad(flat_v[:, i].sum(), x, create_graph=True)
                total = total + row.reshape(x.shape[0], -1)[:, i]
            return total  # v already carries 1/h: sum_i dv_i/dx_i = (1/h) laplacian s
        if generator is None:  # probes never come from the global RNG
            generator = torch.Generator().manual_seed(0)
        estimate = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for _ in range(self.n_probes):
            z = torch.randint(0, 2, flat_v.shape, generator=generator, device="cpu")
            z = (2 * z - 1).to(dtype=x.dtype, device=x.device)
            (hz,) = torch.autograd.grad((flat_v * z).sum(), x, create_graph=True)
            estimate = estimate + (hz.reshape(x.shape[0], -1) * z).sum(1)
        return estimate / self.n_probes

    # -- the loss -------------------------------------------------------------------------
    def examples_in(self, batch: Mapping[str, Tensor]) -> int:
        """Particles per time of a snapshot batch ``x`` ``(n_times, B, *state)``: ``B``.

        Parameters
        ----------
        batch : Mapping[str, Tensor]
            A snapshot batch as :meth:`loss` receives it.

        Returns
        -------
        int
            ``B``, the size of the second axis of ``batch["x"]``.
        """
        return int(batch["x"].shape[1])

    def _batch_inputs(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(x, t, mu)`` of a snapshot batch, checked and cast to the parameters' dtype.

        The cast is what lets a float64 stepper train on a float32 dataset (and the
        reverse): the velocity is a gradient with respect to ``x``, so ``x`` must already
        carry the precision the stepper computes in.
        """
        device, dtype = self.param_device_dtype()
        x = batch["x"].to(device=device, dtype=dtype)
        t = batch["t"].to(device=device, dtype=dtype)
        if x.ndim < 3 or t.ndim != 1 or x.shape[0] != t.shape[0]:
            raise ValueError(
                "x must be (n_times, batch, *state) with n_times = len(t) and t 1-D, got x "
                f"{tuple(x.shape)} and t {tuple(t.shape)}"
            )
        mu = batch.get("mu")
        return x, t, None if mu is None else mu.to(device=device, dtype=dtype)

    def _terms(
        self,
        x: Tensor,
        t: Tensor,
        mu: Tensor | None,
        *,
        kinetic: bool,
        laplacian: bool = False,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Per-sample ``s``, ``1/2 h |v|^2`` and ``(1/h) laplacian s`` of ``x`` at ``t``.

        ``x`` is ``(n, B, *state)``, ``t`` is ``(n,)``; every output is ``(n, B)``. All
        ``n`` times go through the potential in one batch of ``n B`` states: with the
        hundreds of times per batch of the authors' regime a loop over times would be
        Python-bound. ``kinetic`` asks for ``energy`` (with the graph for a double
        backward), ``laplacian`` also for ``laplacian``.
        """
        n, b = x.shape[:2]
        flat = x.reshape(n * b, *x.shape[2:]).detach().requires_grad_(kinetic)
        times = t.repeat_interleave(b)
        mu_b = None if mu is None else mu.reshape(1, -1).expand(n * b, -1)
        if not kinetic:
            return {"s": self.potential_value(flat, times, mu_b).reshape(n, b)}
        v, s = self.velocity(flat, times, mu_b, create_graph=True)
        energy = 0.5 * self.cell_volume(flat) * v.reshape(n * b, -1).pow(2).sum(1)
        out = {"s": s.reshape(n, b), "energy": energy.reshape(n, b)}
        if laplacian:
            out["laplacian"] = self._laplacian(flat, v, generator).reshape(n, b)
        return out

    def loss(self, batch: Mapping[str, Tensor]) -> Tensor:
        """DICE loss of one batch ``{"x": (K+1, B, *state), "t": (K+1,), "mu"?: (P,)}``.

        ``x[k]`` is a minibatch of the population at time ``t[k]`` (sorted). Hutchinson
        probes are drawn from a generator seeded with ``batch["probe_seed"]``
        (:class:`slift_plugin.SnapshotDataset` supplies a fresh one per batch; 0 when
        absent). ``x``, ``t`` and ``mu`` are cast to the dtype of the parameters.

        Parameters
        ----------
        batch : Mapping[str, Tensor]
            ``{"x": (K+1, B, *state), "t": (K+1,), "mu"?: (P,), "probe_seed"?: ()}``:
            ``B`` particles at each of the ``K+1 >= 2`` strictly increasing physical times
            ``t``, one parameter vector ``mu`` shared by the whole batch (required when
            ``n_params > 0``), and the integer seed of the Hutchinson probes.

        Returns
        -------
        Tensor
            The scalar loss (kinetic minus boundary terms, plus the Laplacian term when
            ``sigma > 0`` and the ``alpha`` term when ``alpha > 0``), with a graph to the
            potential's parameters.

        Raises
        ------
        ValueError
            If ``x`` has fewer than three axes or ``x.shape[0] != len(t)``, if ``t`` is
            not a strictly increasing grid of at least two times, if the states ``x[k]``
            do not fit ``state_shape``, or if ``mu`` is missing, unexpected or not of
            ``n_params`` values.
        """
        x, t, mu = self._batch_inputs(batch)
        weights = trapezoid_weights(t)
        generator = None
        if self.sigma and self.laplacian == "hutchinson":
            seed = int(batch["probe_seed"]) if "probe_seed" in batch else 0
            generator = torch.Generator().manual_seed(seed)
        here = self._terms(x, t, mu, kinetic=True, laplacian=bool(self.sigma), generator=generator)
        # s(X_k, t_{k+1}) and s(X_{k+1}, t_k) for k < K, in one evaluation
        lam = self.kinetic_on_neighbours
        across = self._terms(
            torch.cat([x[:-1], x[1:]]), torch.cat([t[1:], t[:-1]]), mu, kinetic=lam > 0
        )
        s_here = here["s"].mean(1)
        s_forward, s_backward = across["s"].mean(1).chunk(2)
        # E_{k+1}[s(t_k) + s(t_{k+1})] - E_k[s(t_k) + s(t_{k+1})], one entry per gap
        boundary = 0.5 * ((s_backward + s_here[1:]) - (s_here[:-1] + s_forward)).sum()
        kinetic = _mixed_quadrature(t, here["energy"], across.get("energy"), lam)
        total = kinetic - boundary
        if self.sigma:
            total = total + 0.5 * self.sigma**2 * (weights * here["laplacian"].mean(1)).sum()
        if self.alpha:
            # on every evaluation the boundary term uses, the cross-time ones included:
            # those are where an unregularised s runs away
            squares = _mixed_quadrature(t, here["s"].pow(2), across["s"].pow(2), 0.5)
            total = total + self.alpha * squares
        return total

    # -- generation -----------------------------------------------------------------------
    def noise_shape(self, grid_shape: tuple[int, ...]) -> tuple[int, ...] | None:
        if not self.sigma:
            return None
        return (self.n_substeps, self.n_channels, *grid_shape)

    def step(
        self,
        window: Tensor,
        noise: Tensor | None = None,
        *,
        mu: Tensor | None = None,
        t: float | None = None,
    ) -> Tensor:
        """``n_substeps`` sub-steps of ``dt / n_substeps`` from time ``t``.

        With ``scheme="euler"`` each sub-step moves ``x`` by ``h v(x, t)`` (``h = dt /
        n_substeps``) and, when ``sigma > 0``, by ``w = sigma sqrt(h / cell_volume)
        noise[:, j]``. With ``"heun"`` it moves ``x`` by ``h/2 (v(x, t) + v(x_pred, t +
        h)) + w``, where ``x_pred = x + h v(x, t) + w`` (the same ``w``). The result is
        detached.

        Parameters
        ----------
        window : Tensor
            The current states ``(B, C, *grid)`` or ``(B, d)`` (``history == 1``).
        noise : Tensor or None
            Standard normals ``(B, n_substeps, C, *grid)`` when ``sigma > 0``; None for
            the deterministic variant.
        mu : Tensor or None
            Physics parameters ``(B, n_params)``; None without parameters.
        t : float or None
            Physical time of ``window`` (0 when None).

        Returns
        -------
        Tensor
            The states ``dt`` later, shape of ``window``.

        Raises
        ------
        ValueError
            If ``dt`` is not finite, if ``noise`` does not have shape ``(B, n_substeps,
            C, *grid)`` (or is given when ``sigma == 0``), if ``window`` does not fit
            ``state_shape`` or is an empty batch, or if ``mu`` is missing, unexpected or
            not of shape ``(B, n_params)``.
        """
        if not math.isfinite(self.dt):
            raise ValueError("DICE needs a finite dt to step; set stepper.dt")
        self.check_noise(window, noise, "noise (B, n_substeps, *state)")
        x = window.detach()
        t0 = 0.0 if t is None else float(t)
        h = self.dt / self.n_substeps
        scale = self.sigma * math.sqrt(h / self.cell_volume(x))
        for j in range(self.n_substeps):
            t_j = t0 + j * h
            kick = scale * noise[:, j] if self.sigma else None
            v = self.velocity(x, t_j, mu)[0].detach()
            if self.scheme == "heun":
                predicted = x + h * v if kick is None else x + h * v + kick
                v = 0.5 * (v + self.velocity(predicted, t_j + h, mu)[0].detach())
            x = x + h * v if kick is None else x + h * v + kick
        return x.detach()
