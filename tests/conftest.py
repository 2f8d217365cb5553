import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from slift_plugin import fit  # noqa: E402

torch.set_num_threads(1)


class Stop(Exception):
    """Raised out of fit() by :func:`interrupt_fit`, as a crash would."""


def interrupt_fit(stepper: torch.nn.Module, data, after_steps: int, **fit_kw) -> None:
    """Run ``fit(stepper, data, **fit_kw)`` but crash at loss call ``after_steps + 1``.

    Under torchrun every rank crashes at the same step. Shared by the resume tests
    (tests/test_train.py, tests/test_baselines.py, tests/test_contract.py) and
    tests/torchrun_worker.py, which import it from here.
    """
    loss, calls = stepper.loss, [0]

    def loss_then_stop(batch):
        calls[0] += 1
        if calls[0] > after_steps:
            raise Stop
        return loss(batch)

    stepper.loss = loss_then_stop
    try:
        fit(stepper, data, **fit_kw)
    except Stop:
        return
    raise AssertionError("the interrupted run was not interrupted")
