"""DICE rollouts hold constant memory: no autograd graph or tensor survives its step.

:class:`slift_plugin.bench.memory.TensorMemoryTracker` sees every tensor any op creates
during a rollout (a ``TorchDispatchMode`` sees all op outputs, forward and backward) and
counts its storage's bytes until the last tensor viewing it is freed; a tensor kept alive
by a growing autograd graph or by a Python reference stays in the count. After each step
the live bytes and the peak so far are read: a stepper that is constant in memory holds
the same bytes after step 5 as after step 50, and never more than during its first steps.
The check is shown to catch two leaking steppers.
"""

import gc

import pytest
import torch

from slift_plugin import DICE, PotentialMLP, rollout
from slift_plugin.bench.memory import TensorMemoryTracker


def make_dice(cls=DICE, sigma=0.0):
    torch.manual_seed(0)
    return cls(PotentialMLP(3, hidden=16, depth=2), (3,), sigma=sigma, dt=0.1, n_substeps=2)


def live_bytes(tracker: TensorMemoryTracker) -> tuple[int, int]:
    """``(live, peak)`` tracked bytes, after freeing young reference cycles."""
    gc.collect(1)  # young cycles only: a full collection per step is slow
    return tracker.current, tracker.peak


def live_after_each_step(dice, n_steps=50):
    """Roll out ``dice`` and return the tracked ``(live, peak)`` bytes after every step."""
    tracker, per_step, step = TensorMemoryTracker(), [], dice.step

    def counted_step(*args, **kwargs):
        x = step(*args, **kwargs)
        per_step.append(live_bytes(tracker))
        assert x.grad_fn is None and not x.requires_grad, "a step returned a graph"
        return x

    dice.step = counted_step
    with tracker:
        rollout(dice, torch.zeros(3), n_steps, n_samples=64, seed=0, chunk_size=64)
    return per_step


@pytest.mark.parametrize("sigma", [0.0, 0.5])
def test_dice_rollout_memory_is_constant_in_the_number_of_steps(sigma):
    per_step = live_after_each_step(make_dice(sigma=sigma))
    assert per_step[4] == per_step[49], (per_step[4], per_step[49])  # after step 5 and 50
    assert len(set(per_step[4:])) == 1, per_step


class KeepsTheGraph(DICE):
    """A leaking DICE: its Euler update stays differentiable, so every state drags the
    graphs of all previous steps along."""

    def step(self, window, noise=None, *, mu=None, t=None):
        with torch.enable_grad():
            x = window if window.requires_grad else window.detach().requires_grad_(True)
            v, _ = self.velocity(x, 0.0 if t is None else t, mu, create_graph=True)
            return x + self.dt * v  # no detach: the graph grows by one step per step


class RemembersStates(DICE):
    """A leaking DICE: correct steps, but it keeps every state in a Python list."""

    history_of_states = []

    def step(self, window, noise=None, *, mu=None, t=None):
        x = super().step(window, noise, mu=mu, t=t)
        self.history_of_states.append(x)
        return x


def test_the_check_catches_a_growing_graph():
    tracker, per_step = TensorMemoryTracker(), []
    dice = make_dice(KeepsTheGraph)
    x = torch.zeros(64, 3)
    with tracker:  # stepped by hand: the rollout would refuse a state with a graph
        for k in range(50):
            x = dice.step(x, t=0.1 * k)
            per_step.append(live_bytes(tracker))
    # every step keeps at least its state and the activations its graph saved
    assert per_step[49][0] > per_step[4][0] + 45 * 4 * x.numel()
    assert per_step[49][1] > per_step[4][1]


def test_the_check_catches_states_kept_alive():
    per_step = live_after_each_step(make_dice(RemembersStates))
    state_bytes = 64 * 3 * 4  # one (64, 3) float32 state more per step
    assert per_step[49][0] == per_step[4][0] + 45 * state_bytes
