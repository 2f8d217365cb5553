"""1D-1V Vlasov-Poisson two-stream instability, particle-in-cell (PIC).

DOCSTRING-PLACEHOLDER
"""

from __future__ import annotations

import math
import time as _time

import numpy as np
import torch
import xarray as xr

from ._xarray import (
    check_device,
    check_float,
    check_positive_int,
    check_seed,
    check_substeps,
    output_times,
    state_array,
)

__all__ = ["field_energy", "two_stream_growth_rate", "vlasov_two_stream"]

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
    """
    k = check_float("k", k)
    v0 = check_float("v0", v0)
    a2 = (k * v0) ** 2
    roots = np.roots([1.0, 0.0, -(2.0 * a2 + 1.0), 0.0, a2 * a2 - a2])
    gamma = float(np.max(roots.imag))
    # the real quartic's roots come in conjugate pairs; clip round-off around a stable root
    return gamma if gamma > 1e-12 else 0.0


# ------------------------------------------------------------------------------ PIC core
def _wavenumbers(length: float, n_grid: int, device, dtype) -> torch.Tensor:
    """``1 / (i k)`` on the rfft modes, with the mean and (even n_grid) Nyquist mode zeroed."""
    k = 2.0 * math.pi * torch.fft.rfftfreq(n_grid, d=length / n_grid, dtype=torch.float64)
    inv = torch.zeros(k.shape, dtype=torch.complex128)
    inv[1:] = 1.0 / (1j * k[1:])
    if n_grid % 2 == 0:
        inv[-1] = 0.0
    return inv.to(device=device, dtype=torch.complex128 if dtype == torch.float64 else torch.complex64)


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


def field_energy(x, length: float, n_grid: int = 64) -> torch.Tensor:
    """Electrostatic energy ``W_E = 1/2 sum_j E_j^2 dx`` of electron positions ``x``.

    ``x`` is ``(..., N)`` (any leading batch dims; a tensor or an array), positions of ``N``
    equal-weight electrons on the periodic domain ``[0, length)`` (values outside are wrapped).
    The density is deposited by cloud-in-cell on ``n_grid`` nodes, normalised to mean 1, and
    ``dE/dx = 1 - n`` is solved spectrally with the mean mode removed: the same operations as
    :func:`vlasov_two_stream`, so populations of a learned model are scored with the same
    quantity of interest. Returns a float64 tensor of shape ``(...)``.
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
    inv_ik = _wavenumbers(length, n_grid, xt.device, torch.float64)
    left, right, frac = _cic(xt, length, n_grid)
    efield = _solve_field(_deposit(left, right, frac, n_grid), inv_ik, n_grid)
    return 0.5 * (length / n_grid) * (efield**2).sum(-1)


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


# ------------------------------------------------------------------------------ generator
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
    """Particle-in-cell two-stream instability (see the module docstring)."""
    n_particles = check_positive_int("n_particles", n_particles)
    if n_particles < 2 or n_particles % 2:
        raise ValueError(
            f"n_particles must be an even int >= 2 (half per beam); got {n_particles}"
        )
    n_steps = check_positive_int("n_steps", n_steps)
    dt = check_float("dt", dt, positive=True)
    n_sub = check_substeps(dt, dt_internal)
    h = dt / n_sub
    v0 = check_float("v0", v0, nonneg=True)
    vth = check_float("vth", vth, nonneg=True)
    mode = check_positive_int("mode", mode)
    length = check_float("length", length, positive=True)
    alpha = check_float("alpha", alpha, nonneg=True)
    if alpha >= 1.0:
        raise ValueError(
            f"alpha must be < 1 (the displacement x + (alpha/k) sin(kx) must stay monotone); "
            f"got {alpha}"
        )
    n_grid = check_positive_int("n_grid", n_grid)
    if n_grid < 2 * mode + 1:
        raise ValueError(f"n_grid must be >= 2 * mode + 1 = {2 * mode + 1}; got {n_grid}")
    if loading not in ("quiet", "random"):
        raise ValueError(f"loading must be 'quiet' or 'random'; got {loading!r}")
    seed = check_seed(seed)
    device = check_device(device)

    clock = _time.perf_counter()
    k = 2.0 * math.pi * mode / length
    half = n_particles // 2
    gen = torch.Generator().manual_seed(seed)
    xa, va = _load_beam(half, +v0, vth, length, loading, gen)
    xb, vb = _load_beam(half, -v0, vth, length, loading, gen)
    x = torch.cat([xa, xb])
    v = torch.cat([va, vb])
    x = torch.remainder(x + (alpha / k) * torch.sin(k * x), length)
    x, v = x.to(device), v.to(device)

    dtype = torch.float64
    inv_ik = _wavenumbers(length, n_grid, device, dtype)
    dxg = length / n_grid
    weight = length / n_particles  # each electron carries charge/mass L/N (mean density 1)

    def accel(pos):
        left, right, frac = _cic(pos, length, n_grid)
        efield = _solve_field(_deposit(left, right, frac, n_grid), inv_ik, n_grid)
        return -_interpolate(efield, left, right, frac), 0.5 * dxg * float((efield**2).sum())

    n_fine = n_steps * n_sub
    we_fine = np.empty(n_fine + 1)
    ke_fine = np.empty(n_fine + 1)
    p_fine = np.empty(n_fine + 1)
    out = torch.empty((n_particles, n_steps + 1, 2), dtype=torch.float32)
    with torch.no_grad():
        acc, we = accel(x)
        we_fine[0], ke_fine[0], p_fine[0] = we, 0.5 * weight * float((v * v).sum()), weight * float(v.sum())
        out[:, 0, 0], out[:, 0, 1] = x.cpu(), v.cpu()
        i = 0
        for step in range(1, n_steps + 1):
            for _ in range(n_sub):
                # kick-drift-kick leapfrog (velocity Verlet): x and v synchronous at every step
                v = v + 0.5 * h * acc
                x = torch.remainder(x + h * v, length)
                acc, we = accel(x)
                v = v + 0.5 * h * acc
                i += 1
                we_fine[i] = we
                ke_fine[i] = 0.5 * weight * float((v * v).sum())
                p_fine[i] = weight * float(v.sum())
            out[:, step, 0], out[:, step, 1] = x.cpu(), v.cpu()
    if not bool(torch.isfinite(out).all()):
        raise FloatingPointError("PIC integration produced NaN/Inf; reduce dt_internal")
    elapsed = _time.perf_counter() - clock
    return out, we_fine, ke_fine, p_fine, elapsed
