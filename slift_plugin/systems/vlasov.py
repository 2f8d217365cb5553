"""1D-1V Vlasov-Poisson two-stream instability, particle-in-cell (PIC).

Electrons on the periodic domain ``[0, length)`` over a uniform neutralising ion background,
in normalised units (total plasma frequency 1, electron charge -1, mass 1, eps0 = 1)::

    dx/dt = v,   dv/dt = -E(x),   dE/dx = 1 - n_e(x)   (n_e normalised to mean 1),

i.e. ``phi'' = n_e - 1``, ``E = -phi'``. Discretisation: ``n_particles`` equal-weight
electrons (each of charge and mass ``length / n_particles``); cloud-in-cell (linear)
deposition of the density on the ``n_grid`` nodes ``j * length / n_grid``; ``E`` from the
Poisson equation solved spectrally (FFT, ``E_m = (1 - n)_m / (i k_m)``, with the mean mode
and, for even ``n_grid``, the Nyquist mode set to zero); ``E`` interpolated back to the
particles with the same linear weights. Deposition and interpolation with the same weights
conserve the total momentum to round-off (the measured drift is below 1e-15). Time stepping
is the **kick-drift-kick** leapfrog (velocity Verlet) with step ``dt_internal``: half kick,
drift, field solve, half kick, so ``x`` and ``v`` are synchronous at every internal step and
at every output time ``k * dt``. The integration runs in float64; the stored populations are
float32 with the positions wrapped into ``[0, length)``.

Initial condition: two Maxwellian beams, half the electrons each, drifting at ``+v0`` and
``-v0`` with thermal spread ``vth``, uniform in space, then displaced as
``x -> x + (alpha / k) sin(k x)`` with ``k = 2 pi mode / length`` (density
``1 - alpha cos(k x) + O(alpha^2)``, no velocity perturbation). ``loading="quiet"`` (default)
places each beam on a randomly shifted Hammersley set: positions on a uniform lattice with a
random offset, velocities at the bit-reversed (base-2 van der Corput) quantiles of the
Maxwellian with a random shift (Cranley-Patterson rotation). ``loading="random"`` draws
i.i.d. positions and velocities. All draws come from a CPU ``torch.Generator`` seeded with
``seed``, so the initial population does not depend on ``device``.

The physics parameter ``mu`` is the beam speed ``v0`` (coord ``mu_v0`` on every particle,
attrs ``mu_name = "v0"``); one call simulates one ``v0``; several values come from several
calls, whose populations are concatenated along ``"sample"`` (the DICE snapshot loader groups
them by ``mu_v0``). The box length stays fixed when ``v0`` changes, so ``k v0`` and the
growth rate change with ``mu``.

Cold-beam theory (:func:`two_stream_growth_rate`): each beam has ``omega_b^2 = 1/2`` and
``1 = (1/2) / (omega - k v0)^2 + (1/2) / (omega + k v0)^2``, i.e. with ``a = k v0``
``omega^4 - (2 a^2 + 1) omega^2 + a^4 - a^2 = 0``; unstable for ``0 < a < 1`` with
``gamma^2 = (sqrt(8 a^2 + 1) - 2 a^2 - 1) / 2``, largest, ``gamma = 1 / (2 sqrt 2) = 0.354``,
at ``a = sqrt(3/8) = 0.612``. Warm beams (fluid estimate, ``(omega -+ a)^2 - 3 k^2 vth^2``
in the denominators) grow slightly slower: 0.3526 at ``vth = 0.05``, 0.3495 at 0.1 and
0.3365 at 0.2 (``v0 = 1``, ``k = sqrt(3/8)``), against the cold 0.3536.

Default regime
--------------
``length = 2 pi / sqrt(3/8) = 10.26`` (one wavelength of the fastest-growing cold mode at
``v0 = 1``; only ``mode = 1`` is unstable for ``v0 > 0.816``), ``v0 = 1`` (``mu``),
``vth = 0.05``, ``mode = 1``, ``alpha = 1e-3``, ``n_grid = 64`` (``dx = 0.16``),
``n_particles = 40000`` (20000 per beam), ``dt_internal = 0.1``, output every ``dt = 1`` for
``n_steps = 40`` (41 populations on ``t = 0..40``). Measured (seed 0; seeds 1 to 3 give the same
growth rate and maximum of ``W_E`` to 1%, the quiet start being nearly deterministic):

* field energy ``W_E = 1/2 sum_j E_j^2 dx``: 6.8e-6 at ``t = 0`` (the seeded
  ``alpha^2 length / (4 k^2)``), an initial transient (down to 8e-8 at ``t = 3``, while the
  seed projects onto the growing mode), then exponential growth from ``t = 8`` (3e-5) to
  ``t = 22`` (0.47): about 10 e-foldings of ``W_E``; first saturation peak 1.5 at ``t = 25``,
  then large trapping (bounce) oscillations, period about 9, between 0.02 and 1.9 (the run
  maximum, 0.37 of the initial kinetic energy 5.14, at ``t = 34``); the mean over
  ``t = 20..40`` is 0.38 of the maximum;
* growth rate from :func:`fit_growth_rate` (window ``t = 11.2..18.8``, ``W_E`` from 2e-4 to
  5e-2): 0.358 on the internal steps, 0.354 on the output times, against the cold theory
  0.3536 (ratio 1.014, 1.001). For ``v0 = 0.7`` and 1.4 (theory 0.319 and 0.277) the ratio
  is 0.996 and 1.013;
* the two beams merge into a phase-space vortex: the fraction of electrons with
  ``|v| < 0.5`` is 0 up to ``t = 20``, 0.61 at ``t = 25`` and 0.21 at ``t = 40``; the
  root-mean-square change of ``v`` per output step grows from 0.001 to 0.5 around saturation;
* conservation: total energy (kinetic + ``W_E``) within 5.5e-4 of its initial value 5.14
  (1.5e-3 of the maximum of ``W_E``; 1.7e-4 with ``dt_internal = 0.05``), momentum to 1e-15;
* convergence: with 160000 particles ``W_E`` at the output times stays within 5% of the
  default from ``t = 4`` to 38 (the noise-dominated minimum at ``t = 3`` and the deep minimum
  at ``t = 40`` differ more); with ``dt_internal = 0.05`` within 2.3% at every output;
* noise: with ``alpha = 0`` the quiet start stays below ``W_E = 1e-6`` up to ``t = 12``; i.i.d.
  (``loading="random"``) positions have ``E[W_E] = length^3 / (24 N)`` (1.1e-3 for
  ``N = 40000``) before CIC smoothing, which swamps ``alpha = 1e-3``, so random loading needs
  ``alpha >~ 0.02`` and gives about 2.5 decades of growth only.

Generation time of the default: about 0.4 s on one CPU thread.

:func:`field_energy` computes ``W_E`` from positions alone with the same deposition and
Poisson solve, to score populations generated by a learned model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr

from ._xarray import (
    NONDIMENSIONAL,
    check_device,
    check_float,
    check_positive_int,
    check_seed,
    check_substeps,
    output_times,
    state_array,
)

__all__ = [
    "DEFAULT_LENGTH",
    "GAMMA_MAX",
    "KV0_MAX",
    "field_energy",
    "fit_growth_rate",
    "two_stream_growth_rate",
    "vlasov_two_stream",
]

#: ``k v0`` of the fastest-growing cold two-stream mode, ``sqrt(3/8)``.
KV0_MAX = math.sqrt(3.0 / 8.0)
#: Its growth rate ``1 / (2 sqrt 2)`` (units of the total plasma frequency).
GAMMA_MAX = 1.0 / (2.0 * math.sqrt(2.0))
#: Default box: one wavelength of the fastest-growing mode at ``v0 = 1``.
DEFAULT_LENGTH = 2.0 * math.pi / KV0_MAX


# ------------------------------------------------------------------------------ theory
def two_stream_growth_rate(k: float, v0: float) -> float:
    """Growth rate ``gamma = max Im(omega)`` of two cold counter-streaming beams.

    Two beams with velocities ``+v0`` and ``-v0``, each of plasma frequency
    ``omega_b^2 = 1/2`` (total plasma frequency 1), obey the dispersion relation
    ``1 = (1/2) / (omega - k v0)^2 + (1/2) / (omega + k v0)^2``. Clearing the denominators
    gives the quartic ``omega^4 - (2 a^2 + 1) omega^2 + a^4 - a^2 = 0`` with ``a = k v0``;
    its four roots are found with :func:`numpy.roots` and the largest imaginary part is
    returned (0 for a stable wave). In closed form ``gamma^2 = (sqrt(8 a^2 + 1) - 2 a^2 - 1)
    / 2`` for ``|a| < 1`` and 0 otherwise; the maximum ``gamma = 1 / (2 sqrt 2)`` is reached
    at ``a = sqrt(3/8)``.

    Parameters
    ----------
    k : float
        Wavenumber.
    v0 : float
        Beam drift speed.

    Returns
    -------
    float
        The growth rate ``gamma >= 0`` (units of the total plasma frequency).

    Raises
    ------
    ValueError
        If ``k`` or ``v0`` is not a finite real number.
    """
    k = check_float("k", k)
    v0 = check_float("v0", v0)
    a2 = (k * v0) ** 2
    roots = np.roots([1.0, 0.0, -(2.0 * a2 + 1.0), 0.0, a2 * a2 - a2])
    gamma = float(np.max(roots.imag))
    # the real quartic's roots come in conjugate pairs; clip round-off around a stable root
    return gamma if gamma > 1e-12 else 0.0


# ------------------------------------------------------------------------------ PIC core
def _wavenumbers(length: float, n_grid: int, device) -> torch.Tensor:
    """``1 / (i k)`` on the rfft modes, with the mean and (even n_grid) Nyquist mode zeroed."""
    k = 2.0 * math.pi * torch.fft.rfftfreq(n_grid, d=length / n_grid, dtype=torch.float64)
    inv = torch.zeros(k.shape, dtype=torch.complex128)
    inv[1:] = 1.0 / (1j * k[1:])
    if n_grid % 2 == 0:
        inv[-1] = 0.0
    return inv.to(device)


def _cic(x: torch.Tensor, length: float, n_grid: int):
    """Cloud-in-cell weights of positions ``x`` (..., N) on the nodes ``j * dx``."""
    s = torch.remainder(x, length) * (n_grid / length)
    left = torch.floor(s)
    frac = s - left
    left = left.long() % n_grid  # s == n_grid after round-off wraps to node 0
    right = (left + 1) % n_grid
    return left, right, frac


def _deposit(left, right, frac, n_grid: int) -> torch.Tensor:
    """Electron density on the nodes (mean exactly 1): ``n_grid / N`` times the CIC sums."""
    n_part = frac.shape[-1]
    dens = torch.zeros((*frac.shape[:-1], n_grid), dtype=frac.dtype, device=frac.device)
    dens.scatter_add_(-1, left, 1.0 - frac)
    dens.scatter_add_(-1, right, frac)
    return dens * (n_grid / n_part)


def _solve_field(dens: torch.Tensor, inv_ik: torch.Tensor, n_grid: int) -> torch.Tensor:
    """``E`` on the nodes from ``dE/dx = 1 - n`` (spectral, mean mode removed)."""
    return torch.fft.irfft(torch.fft.rfft(1.0 - dens) * inv_ik, n=n_grid)


def _interpolate(field, left, right, frac) -> torch.Tensor:
    """CIC interpolation of the node field back to the particles (same weights)."""
    return (1.0 - frac) * torch.gather(field, -1, left) + frac * torch.gather(field, -1, right)


def _node_field(
    x: torch.Tensor, length: float, n_grid: int, inv_ik: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """CIC weights of positions ``x`` (..., N) and the field ``E`` (..., n_grid) they create."""
    left, right, frac = _cic(x, length, n_grid)
    return left, right, frac, _solve_field(_deposit(left, right, frac, n_grid), inv_ik, n_grid)


def _energy(efield: torch.Tensor, length: float, n_grid: int) -> torch.Tensor:
    """Field energy ``W_E = 1/2 sum_j E_j^2 dx`` of node fields ``efield`` (..., n_grid)."""
    return 0.5 * (length / n_grid) * (efield**2).sum(-1)


def field_energy(x, length: float, n_grid: int = 64) -> torch.Tensor:
    """Electrostatic energy ``W_E = 1/2 sum_j E_j^2 dx`` of electron positions ``x``.

    The density is deposited by cloud-in-cell on ``n_grid`` nodes, normalised to mean 1, and
    ``dE/dx = 1 - n`` is solved spectrally with the mean mode removed: the same operations as
    :func:`vlasov_two_stream`, so populations of a learned model are scored with the same
    quantity of interest.

    Parameters
    ----------
    x : torch.Tensor or array_like
        ``(..., N)`` (any leading batch dims), positions of ``N`` equal-weight electrons on
        the periodic domain ``[0, length)`` (values outside are wrapped).
    length : float
        Box length, > 0.
    n_grid : int
        Grid nodes, >= 2.

    Returns
    -------
    torch.Tensor
        float64, shape ``(...)``.

    Raises
    ------
    ValueError
        Invalid ``length`` or ``n_grid``; ``x`` not numeric, without particles, or with
        NaN/Inf.
    """
    length = check_float("length", length, positive=True)
    n_grid = check_positive_int("n_grid", n_grid)
    if n_grid < 2:
        raise ValueError(f"n_grid must be >= 2; got {n_grid}")
    if isinstance(x, torch.Tensor):
        xt = x.detach().to(torch.float64)
    else:
        try:
            xt = torch.as_tensor(np.asarray(x, dtype=np.float64))
        except (TypeError, ValueError) as err:
            raise ValueError(f"x must be a numeric array of positions; got {x!r}") from err
    if xt.ndim < 1 or xt.shape[-1] == 0:
        raise ValueError(f"x must have shape (..., N) with N >= 1 particles; got {tuple(xt.shape)}")
    if not bool(torch.isfinite(xt).all()):
        raise ValueError("x contains NaN or Inf values")
    inv_ik = _wavenumbers(length, n_grid, xt.device)
    _, _, _, efield = _node_field(xt, length, n_grid, inv_ik)
    return _energy(efield, length, n_grid)


# ------------------------------------------------------------------------------ loading
def _van_der_corput(n: int) -> torch.Tensor:
    """Base-2 radical inverse of ``0..n-1`` (float64)."""
    j = torch.arange(n, dtype=torch.int64)
    out = torch.zeros(n, dtype=torch.float64)
    scale = 0.5
    while bool((j > 0).any()):
        out += (j & 1).to(torch.float64) * scale
        j = j >> 1
        scale *= 0.5
    return out


def _load_beam(n: int, drift: float, vth: float, length: float, loading: str, gen):
    """Unperturbed positions and velocities of one beam (float64, CPU)."""
    if loading == "quiet":
        # Hammersley set (lattice positions, bit-reversed velocity quantiles), randomly shifted
        shift = torch.rand(2, generator=gen, dtype=torch.float64)
        x = torch.remainder((torch.arange(n, dtype=torch.float64) + shift[0]) / n, 1.0) * length
        q = torch.remainder(_van_der_corput(n) + shift[1], 1.0)
        q = q.clamp(1e-12, 1.0 - 1e-12)
        v = drift + vth * math.sqrt(2.0) * torch.erfinv(2.0 * q - 1.0)
    else:
        x = torch.rand(n, generator=gen, dtype=torch.float64) * length
        v = drift + vth * torch.randn(n, generator=gen, dtype=torch.float64)
    return x, v


# ------------------------------------------------------------------------------ diagnostics
def fit_growth_rate(
    times, energy, *, start_factor: float = 30.0, end_fraction: float = 0.03
) -> tuple[float, float, float]:
    """Linear growth rate ``gamma`` from a field-energy curve ``W_E(t)``.

    The window starts at the first time ``W_E > start_factor * W_E(0)`` (the seeded mode has
    come out of the initial transient) and ends at the first later time
    ``W_E > end_fraction * max W_E`` (well before saturation). A least-squares line through
    ``log W_E`` on the window has slope ``2 gamma`` (``W_E`` is quadratic in the amplitude).

    Parameters
    ----------
    times : array_like
        Strictly increasing times ``(n_t,)``, ``n_t >= 3``.
    energy : array_like
        Field energy ``W_E`` at ``times``, ``(n_t,)``, finite and > 0.
    start_factor : float
        The window starts where ``W_E`` first exceeds ``start_factor * W_E(0)`` (> 0).
    end_fraction : float
        The window ends where ``W_E`` first exceeds ``end_fraction * max W_E`` (> 0).

    Returns
    -------
    gamma : float
        The growth rate (half the slope of ``log W_E``).
    t0, t1 : float
        First and last time of the fit window.

    Raises
    ------
    ValueError
        If the inputs are not as described, ``W_E`` never exceeds the start level, or the
        window holds fewer than 3 points (e.g. a noisy start whose ``W_E(0)`` is already
        within ``start_factor / end_fraction`` of saturation).
    """
    t = np.asarray(times, dtype=np.float64).reshape(-1)
    w = np.asarray(energy, dtype=np.float64).reshape(-1)
    if t.shape != w.shape or t.size < 3:
        raise ValueError(
            f"times and energy must be 1-D of the same length >= 3; got {t.shape}, {w.shape}"
        )
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(w))) or np.any(w <= 0):
        raise ValueError("energy must be finite and > 0, times finite")
    if np.any(np.diff(t) <= 0):
        raise ValueError("times must be strictly increasing")
    start_factor = check_float("start_factor", start_factor, positive=True)
    end_fraction = check_float("end_fraction", end_fraction, positive=True)
    above = np.nonzero(w > start_factor * w[0])[0]
    if above.size == 0:
        raise ValueError(f"W_E never exceeds start_factor * W_E(0) = {start_factor * w[0]:.3g}")
    i0 = int(above[0])
    later = np.nonzero(w[i0:] > end_fraction * w.max())[0]
    i1 = i0 + int(later[0])
    if i1 - i0 + 1 < 3:
        raise ValueError(
            f"growth window t = [{t[i0]:.3g}, {t[i1]:.3g}] holds {i1 - i0 + 1} points (< 3): "
            f"W_E(0) = {w[0]:.3g} is too close to max W_E = {w.max():.3g}"
        )
    slope = np.polyfit(t[i0 : i1 + 1], np.log(w[i0 : i1 + 1]), 1)[0]
    return float(slope / 2.0), float(t[i0]), float(t[i1])


# ------------------------------------------------------------------------------ generator
@dataclass(frozen=True)
class _TwoStreamSetup:
    """Validated arguments of :func:`vlasov_two_stream` (see there for their meaning).

    Attributes
    ----------
    n_particles, n_steps, mode, n_grid, seed : int
        As given, validated.
    dt, v0, vth, length, alpha : float
        As given, validated.
    n_sub : int
        Internal leapfrog steps per output step, ``dt / dt_internal``.
    loading : str
        ``"quiet"`` or ``"random"``.
    device : torch.device
        Where to integrate.
    """

    n_particles: int
    n_steps: int
    dt: float
    n_sub: int
    v0: float
    vth: float
    mode: int
    length: float
    alpha: float
    n_grid: int
    loading: str
    seed: int
    device: torch.device

    @property
    def h(self) -> float:
        """The internal step ``dt / n_sub``."""
        return self.dt / self.n_sub

    @property
    def k(self) -> float:
        """Wavenumber ``2 pi mode / length`` of the seeded mode."""
        return 2.0 * math.pi * self.mode / self.length

    @property
    def half(self) -> int:
        """Electrons per beam."""
        return self.n_particles // 2

    @property
    def n_fine(self) -> int:
        """Internal steps in all, ``n_steps * n_sub``."""
        return self.n_steps * self.n_sub


def _two_stream_setup(
    n_particles: object,
    n_steps: object,
    dt: object,
    *,
    v0: object,
    vth: object,
    mode: object,
    length: object,
    alpha: object,
    n_grid: object,
    dt_internal: object,
    loading: object,
    seed: object,
    device: object,
) -> _TwoStreamSetup:
    """Validate the arguments of :func:`vlasov_two_stream`, in the order of its signature.

    Parameters
    ----------
    n_particles, n_steps, dt : object
        The positional arguments of :func:`vlasov_two_stream`.
    v0, vth, mode, length, alpha, n_grid, dt_internal, loading, seed, device : object
        Its keyword arguments.

    Returns
    -------
    _TwoStreamSetup
        The arguments as Python ints, floats and a ``torch.device``.

    Raises
    ------
    ValueError
        The first invalid argument: not a number of the right kind, out of range,
        ``n_particles`` odd, ``dt / dt_internal`` not an integer, ``alpha >= 1``,
        ``n_grid < 2 * mode + 1``, an unknown ``loading`` or ``device``.
    """
    n_particles = check_positive_int("n_particles", n_particles)
    if n_particles < 2 or n_particles % 2:
        raise ValueError(f"n_particles must be an even int >= 2 (half per beam); got {n_particles}")
    n_steps = check_positive_int("n_steps", n_steps)
    dt = check_float("dt", dt, positive=True)
    n_sub = check_substeps(dt, dt_internal)
    v0 = check_float("v0", v0, nonneg=True)
    vth = check_float("vth", vth, nonneg=True)
    mode = check_positive_int("mode", mode)
    length = check_float("length", length, positive=True)
    alpha = check_float("alpha", alpha, nonneg=True)
    if alpha >= 1.0:
        raise ValueError(
            f"alpha must be < 1 (x -> x + (alpha / k) sin(k x) must stay monotone); got {alpha}"
        )
    n_grid = check_positive_int("n_grid", n_grid)
    if n_grid < 2 * mode + 1:
        raise ValueError(
            f"n_grid must be >= 2 * mode + 1 = {2 * mode + 1} to resolve the seeded mode; "
            f"got {n_grid}"
        )
    if loading not in ("quiet", "random"):
        raise ValueError(f"loading must be 'quiet' or 'random'; got {loading!r}")
    seed = check_seed(seed)
    device = check_device(device)
    return _TwoStreamSetup(
        n_particles, n_steps, dt, n_sub, v0, vth, mode, length, alpha, n_grid, loading, seed, device
    )


def _initial_particles(s: _TwoStreamSetup) -> tuple[torch.Tensor, torch.Tensor]:
    """Two perturbed Maxwellian beams, ``+v0`` beam first.

    Parameters
    ----------
    s : _TwoStreamSetup
        Validated arguments.

    Returns
    -------
    x, v : torch.Tensor
        ``(n_particles,)`` float64 positions in ``[0, length)`` and velocities on
        ``s.device``.
    """
    # Drawn on the CPU so that the initial population does not depend on the device.
    gen = torch.Generator().manual_seed(s.seed)
    xa, va = _load_beam(s.half, +s.v0, s.vth, s.length, s.loading, gen)
    xb, vb = _load_beam(s.half, -s.v0, s.vth, s.length, s.loading, gen)
    x = torch.cat([xa, xb])
    x = torch.remainder(x + (s.alpha / s.k) * torch.sin(s.k * x), s.length).to(s.device)
    v = torch.cat([va, vb]).to(s.device)
    return x, v


def _accel_and_energy(
    x: torch.Tensor, length: float, n_grid: int, inv_ik: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Acceleration of every electron and the field energy.

    Parameters
    ----------
    x : torch.Tensor
        ``(N,)`` float64 positions.
    length : float
        Box length.
    n_grid : int
        Grid nodes.
    inv_ik : torch.Tensor
        ``(n_grid // 2 + 1,)`` complex128 from :func:`_wavenumbers`.

    Returns
    -------
    acc : torch.Tensor
        ``(N,)`` float64, ``-E`` interpolated to the particles.
    w_e : torch.Tensor
        Scalar float64 field energy ``W_E``.
    """
    left, right, frac, efield = _node_field(x, length, n_grid, inv_ik)
    return -_interpolate(efield, left, right, frac), _energy(efield, length, n_grid)


def _record(diag: torch.Tensor, i: int, w_e: torch.Tensor, v: torch.Tensor, weight: float) -> None:
    """Store field energy, kinetic energy and momentum of internal step ``i`` in ``diag[i]``."""
    diag[i, 0], diag[i, 1], diag[i, 2] = w_e, 0.5 * weight * (v * v).sum(), weight * v.sum()


def _integrate(
    x: torch.Tensor, v: torch.Tensor, s: _TwoStreamSetup
) -> tuple[torch.Tensor, np.ndarray]:
    """Kick-drift-kick leapfrog from ``(x, v)`` over ``n_steps`` output steps.

    Parameters
    ----------
    x, v : torch.Tensor
        ``(n_particles,)`` float64 initial positions and velocities on ``s.device``.
    s : _TwoStreamSetup
        Validated arguments.

    Returns
    -------
    out : torch.Tensor
        ``(n_particles, n_steps + 1, 2)`` float32 on the CPU: ``(x, v)`` at every output
        time, positions in ``[0, length)``.
    diag : numpy.ndarray
        ``(n_fine + 1, 3)`` float64: field energy, kinetic energy and momentum at every
        internal step.

    Raises
    ------
    FloatingPointError
        The integration produced NaN or Inf.
    """
    inv_ik = _wavenumbers(s.length, s.n_grid, s.device)
    weight = s.length / s.n_particles  # charge and mass of one electron: mean density 1
    h = s.h
    diag = torch.empty((s.n_fine + 1, 3), dtype=torch.float64, device=s.device)
    out = torch.empty((s.n_particles, s.n_steps + 1, 2), dtype=torch.float32)
    with torch.no_grad():
        acc, w_e = _accel_and_energy(x, s.length, s.n_grid, inv_ik)
        _record(diag, 0, w_e, v, weight)
        out[:, 0, 0], out[:, 0, 1] = x.cpu(), v.cpu()
        i = 0
        for step in range(1, s.n_steps + 1):
            for _ in range(s.n_sub):
                # kick-drift-kick leapfrog: x and v are synchronous after every full step
                v = v + (0.5 * h) * acc
                x = torch.remainder(x + h * v, s.length)
                acc, w_e = _accel_and_energy(x, s.length, s.n_grid, inv_ik)
                v = v + (0.5 * h) * acc
                i += 1
                _record(diag, i, w_e, v, weight)
            out[:, step, 0], out[:, step, 1] = x.cpu(), v.cpu()
    diag = diag.cpu().numpy()
    if not (bool(torch.isfinite(out).all()) and np.all(np.isfinite(diag))):
        raise FloatingPointError("PIC integration produced NaN/Inf; reduce dt_internal")
    # float32 positions of L (1 - eps) round up to L: keep the stored values in [0, L)
    xs = out[:, :, 0]
    xs[xs >= s.length] -= s.length
    return out, diag


def _attrs(s: _TwoStreamSetup) -> dict[str, object]:
    """Attributes of the output: the equation, the scheme and every parameter.

    Parameters
    ----------
    s : _TwoStreamSetup
        Validated arguments.

    Returns
    -------
    dict of str to object
        Shared by the Dataset and its ``state`` variable.
    """
    return {
        "system": "vlasov_two_stream",
        "equation": "dx/dt = v, dv/dt = -E(x), dE/dx = 1 - n_e (periodic, normalised units)",
        "mu_name": "v0",
        "mu": s.v0,
        "v0": s.v0,
        "vth": s.vth,
        "mode": s.mode,
        "k": s.k,
        "length": s.length,
        "alpha": s.alpha,
        "perturbation": "x -> x + (alpha / k) sin(k x): density 1 - alpha cos(k x) + O(alpha^2)",
        "n_grid": s.n_grid,
        "loading": s.loading,
        "scheme": "PIC: CIC deposition and interpolation, spectral Poisson (mean and Nyquist "
        "modes removed), kick-drift-kick leapfrog",
        "growth_rate_cold_theory": two_stream_growth_rate(s.k, s.v0),
        "t0": 0.0,
        "dt": s.dt,
        "dt_internal": s.h,
        "n_steps": s.n_steps,
        "n_particles": s.n_particles,
        "seed": s.seed,
    }


def _to_dataset(out: torch.Tensor, diag: np.ndarray, s: _TwoStreamSetup) -> xr.Dataset:
    """Wrap the populations and the diagnostics as the Dataset of :func:`vlasov_two_stream`.

    Parameters
    ----------
    out : torch.Tensor
        ``(n_particles, n_steps + 1, 2)`` float32 populations from :func:`_integrate`.
    diag : numpy.ndarray
        ``(n_fine + 1, 3)`` float64 diagnostics from :func:`_integrate`.
    s : _TwoStreamSetup
        Validated arguments.

    Returns
    -------
    xarray.Dataset
        See :func:`vlasov_two_stream`.
    """
    attrs = _attrs(s)
    times = output_times(0.0, s.dt, s.n_steps)
    state = state_array(
        out,
        times,
        ["x", "v"],
        attrs=attrs,
        params={"v0": np.full(s.n_particles, s.v0)},
        long_name="electron phase-space coordinates",
        channel_long_name="phase-space coordinate (x position, v velocity)",
    )
    beam = np.concatenate([np.ones(s.half, np.int8), -np.ones(s.half, np.int8)])
    beam_attrs = {  # CF flags: the values as the variable's int8, their meanings in order
        "long_name": "initial beam",
        "flag_values": np.array([1, -1], np.int8),
        "flag_meanings": "drifting_at_plus_v0 drifting_at_minus_v0",
    }
    state = state.assign_coords(beam=("sample", beam, beam_attrs))
    time_fine = s.h * np.arange(s.n_fine + 1, dtype=np.float64)
    one = {"units": NONDIMENSIONAL}
    return xr.Dataset(
        {
            "state": state,
            "field_energy": (
                "time",
                diag[:: s.n_sub, 0],
                {"long_name": "electric field energy at the output times", **one},
            ),
            "field_energy_fine": (
                "time_fine",
                diag[:, 0],
                {"long_name": "electric field energy", **one},
            ),
            "kinetic_energy_fine": (
                "time_fine",
                diag[:, 1],
                {"long_name": "kinetic energy", **one},
            ),
            "momentum_fine": ("time_fine", diag[:, 2], {"long_name": "total momentum", **one}),
        },
        coords={"time_fine": ("time_fine", time_fine, {"long_name": "time", **one})},
        attrs={"source": state.attrs["source"], **attrs},
    )


def vlasov_two_stream(
    n_particles: int = 40000,
    n_steps: int = 40,
    dt: float = 1.0,
    *,
    v0: float = 1.0,
    vth: float = 0.05,
    mode: int = 1,
    length: float = DEFAULT_LENGTH,
    alpha: float = 1e-3,
    n_grid: int = 64,
    dt_internal: float = 0.1,
    loading: str = "quiet",
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> xr.Dataset:
    """PIC simulation of the two-stream instability (see the module docstring).

    Parameters
    ----------
    n_particles : int
        Electrons in all (even; half per beam).
    n_steps : int
        Output steps (``n_steps + 1`` output times ``k * dt``, ``t = 0`` included).
    dt : float
        Output step; ``dt / dt_internal`` must be an integer.
    v0 : float
        Beam drift speed, the physics parameter ``mu`` (beams at ``+v0`` and ``-v0``).
    vth : float
        Thermal spread (standard deviation) of each beam.
    mode : int
        The seeded mode, wavenumber ``k = 2 pi mode / length``.
    length : float
        Periodic box ``[0, length)``; default ``2 pi / sqrt(3/8)`` (fastest-growing cold
        mode at ``v0 = 1``).
    alpha : float
        Relative density perturbation in ``[0, 1)``, applied as
        ``x -> x + (alpha / k) sin(k x)``.
    n_grid : int
        Grid nodes for the CIC deposition and the spectral Poisson solve (>= 2 mode + 1).
    dt_internal : float
        Leapfrog step (kick-drift-kick).
    loading : {"quiet", "random"}
        Randomly shifted Hammersley set, or i.i.d. draws.
    seed : int
        Seed of the ``torch.Generator`` (CPU) that draws the initial particles.
    device : str or torch.device
        Where to integrate; the initial particles do not depend on it.

    Returns
    -------
    xarray.Dataset
        ``state`` (float32, dims ``("sample", "time", "channel")`` of sizes
        ``(n_particles, n_steps + 1, 2)``, ``channel = ["x", "v"]``, coords ``time``,
        ``mu_v0`` and ``beam`` (+1 / -1, the initial beam of each electron), attrs with
        every parameter), ``field_energy`` (``("time",)``) and, at every internal step
        (coord ``time_fine``, ``n_steps * dt / dt_internal + 1`` values),
        ``field_energy_fine``, ``kinetic_energy_fine`` and ``momentum_fine``. The Dataset
        carries the same attrs as ``state``.

    Raises
    ------
    ValueError
        An invalid argument (see :func:`_two_stream_setup`).
    FloatingPointError
        The integration produced NaN or Inf (reduce ``dt_internal``).
    """
    s = _two_stream_setup(
        n_particles,
        n_steps,
        dt,
        v0=v0,
        vth=vth,
        mode=mode,
        length=length,
        alpha=alpha,
        n_grid=n_grid,
        dt_internal=dt_internal,
        loading=loading,
        seed=seed,
        device=device,
    )
    x, v = _initial_particles(s)
    out, diag = _integrate(x, v, s)
    return _to_dataset(out, diag, s)
