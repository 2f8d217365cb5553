"""DICE rollouts hold constant memory: no autograd graph or tensor survives its step.

Every tensor any op creates during a rollout is tracked with a weak reference (a
``TorchDispatchMode`` sees all op outputs, forward and backward); a tensor kept alive by
a growing autograd graph or by a Python reference stays in the count. After each step the
live tensors are counted: a stepper that is constant in memory has the same count (and
bytes) after step 5 as after step 50. The check is shown to catch two leaking steppers.
"""

import gc
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from slift_plugin import DICE, PotentialMLP, rollout


class LiveTensors(TorchDispatchMode):
    """Weak references to every tensor produced by an op while the mode is active."""

    def __init__(self):
        super().__init__()
        self.refs = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        self.refs += [weakref.ref(t) for t in tree_leaves(result) if isinstance(t, torch.Tensor)]
        return result

    def count(self) -> tuple[int, int]:
        """``(number, bytes)`` of the distinct tracked tensors still alive.

        In-place and ``out=`` ops return a tensor that already exists (the rollout's
        reused buffers): it is counted once.
        """
        gc.collect(1)  # young cycles only: a full collection per step is slow
        alive = {id(t): t for t in (r() for r in self.refs) if t is not None}
        self.refs = [weakref.ref(t) for t in alive.values()]
        return len(alive), sum(t.untyped_storage().nbytes() for t in alive.values())


def make_dice(cls=DICE, sigma=0.0):
    torch.manual_seed(0)
    return cls(PotentialMLP(3, hidden=16, depth=2), (3,), sigma=sigma, dt=0.1, n_substeps=2)


def live_after_each_step(dice, n_steps=50):
    """Roll out ``dice`` and return the live-tensor ``(count, bytes)`` after every step."""
    tracker, per_step, step = LiveTensors(), [], dice.step

    def counted_step(*args, **kwargs):
        x = step(*args, **kwargs)
        per_step.append(tracker.count())
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
    tracker, per_step = LiveTensors(), []
    dice = make_dice(KeepsTheGraph)
    x = torch.zeros(64, 3)
    with tracker:  # stepped by hand: the rollout would refuse a state with a graph
        for k in range(50):
            x = dice.step(x, t=0.1 * k)
            per_step.append(tracker.count())
    assert per_step[49][0] > per_step[4][0] + 100 and per_step[49][1] > per_step[4][1]


def test_the_check_catches_states_kept_alive():
    per_step = live_after_each_step(make_dice(RemembersStates))
    assert per_step[49][0] == per_step[4][0] + 45  # one more live state per step
