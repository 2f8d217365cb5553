"""Rolling out a stepper trained behind a data processor (neuraloperator's ``DataProcessor``).

A neuraloperator ``Trainer`` with ``data_processor=`` feeds the model normalised inputs
(``preprocess``) and maps its outputs back (``postprocess``). A stepper trained that way
lives in the processor's coordinates: rolling it out on physical states without the same
maps gives another ensemble, silently. :class:`ProcessedStepper` applies them around every
step, so that :func:`slift_plugin.rollout` (``data_processor=``) takes and returns physical
states while the stepper sees what it saw in training.

The processor is duck-typed (``preprocess(dict)`` and ``postprocess(out, dict)``), so this
core module does not import neuraloperator.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from .stepper import Stepper

__all__ = ["ProcessedStepper"]


class ProcessedStepper(Stepper):
    """A stepper whose every step goes through a data processor's pre- and postprocessing.

    One step maps the physical window ``w`` to
    ``postprocess(stepper.step(preprocess({"x": w, "y": x_k})["x"], noise))``, with the
    processor in evaluation mode (neuraloperator's ``DefaultDataProcessor`` maps outputs
    back only then), ``x_k`` the window's last state standing in for the target the
    processor expects. Noise, ``mu`` and ``t`` pass through unchanged, so the noise a step
    consumes is the wrapped stepper's.

    Parameters
    ----------
    stepper : Stepper
        The trained stepper, in the processor's coordinates.
    data_processor : object
        Has ``preprocess(data_dict)`` returning a dict with ``"x"`` and
        ``postprocess(output, data_dict)`` returning ``(output, data_dict)``, as a
        neuraloperator ``DataProcessor``. When it is a ``torch.nn.Module`` its buffers
        (the normalisers' statistics) move with the stepper and are part of its
        ``state_dict``, hence of a zarr store's fingerprint.

    Raises
    ------
    TypeError
        If ``stepper`` is not a :class:`Stepper`, or ``data_processor`` lacks
        ``preprocess`` or ``postprocess``.
    """

    def __init__(self, stepper: Stepper, data_processor: object) -> None:
        if not isinstance(stepper, Stepper):
            raise TypeError(f"stepper must be a slift_plugin.Stepper, got {type(stepper).__name__}")
        missing = [
            m
            for m in ("preprocess", "postprocess")
            if not callable(getattr(data_processor, m, None))
        ]
        if missing:
            raise TypeError(
                f"data_processor must have preprocess(data_dict) and postprocess(output, "
                f"data_dict) like a neuraloperator DataProcessor; "
                f"{type(data_processor).__name__} has no {missing}"
            )
        super().__init__(
            stepper.state_shape, history=stepper.history, n_params=stepper.n_params, dt=stepper.dt
        )
        self.stepper = stepper
        self.data_processor = data_processor
        # Capabilities are the wrapped stepper's, except CUDA graphs: a processor may sync
        # with the host or branch on values.
        self.evals_per_step = stepper.evals_per_step
        self.requires_grad_in_step = stepper.requires_grad_in_step
        self.training = stepper.training

    def noise_shape(self, grid_shape: tuple[int, ...]) -> tuple[int, ...] | None:
        return self.stepper.noise_shape(grid_shape)

    def step(
        self,
        window: Tensor,
        noise: Tensor | None = None,
        *,
        mu: Tensor | None = None,
        t: float | None = None,
    ) -> Tensor:
        processor = self.data_processor
        last = window[:, (self.history - 1) * self.n_channels :]
        mode = getattr(processor, "training", False)
        # Set the flag, not processor.eval(): neuraloperator's DataProcessor.train/eval
        # also switch a model it wraps, and its train(False) switches that model to train.
        object.__setattr__(processor, "training", False)
        try:
            data = processor.preprocess({"x": window, "y": last})
            x_next = self.stepper.step(data["x"].to(window.device), noise, mu=mu, t=t)
            x_next, _ = processor.postprocess(x_next, data)
        finally:
            object.__setattr__(processor, "training", mode)
        return x_next.to(window.device)

    def loss(self, batch: Mapping[str, Tensor]) -> Tensor:
        raise TypeError(
            "ProcessedStepper only rolls out; train the wrapped stepper (with the processor "
            "in the neuraloperator Trainer)"
        )

    def train(self, mode: bool = True) -> ProcessedStepper:
        """Set the wrapped stepper's mode; the processor's own mode is left as it is.

        Parameters
        ----------
        mode : bool
            Training (True) or evaluation mode.

        Returns
        -------
        ProcessedStepper
            Itself.
        """
        self.training = mode
        self.stepper.train(mode)
        return self

    def _apply(self, fn, recurse: bool = True):
        result = super()._apply(fn, recurse)
        move = getattr(self.data_processor, "to", None)
        if callable(move):
            # neuraloperator processors keep their own `device`, which preprocess moves
            # every batch to; Module._apply would move their buffers but not that.
            move(self.stepper.param_device_dtype()[0])
        return result
