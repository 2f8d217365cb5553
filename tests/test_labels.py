"""Fixed labels: a pure function of (seed, index), standard normal, never redrawn."""

import numpy as np
import pytest
import torch
from scipy import stats

from slift_plugin import MLP, IndexedGaussianLabels, StochasticLifting, TransitionDataset, fit


def test_labels_are_standard_normal_and_independent():
    labels = IndexedGaussianLabels((8,), seed=3)(np.arange(20000)).numpy()
    flat = labels.ravel()
    assert stats.kstest(flat, "norm").pvalue > 1e-3
    corr = np.corrcoef(labels.T)
    off_diagonal = corr[~np.eye(8, dtype=bool)]
    assert np.abs(off_diagonal).max() < 4 / np.sqrt(20000)
    # consecutive indices must not be correlated either
    assert abs(np.corrcoef(labels[:-1, 0], labels[1:, 0])[0, 1]) < 4 / np.sqrt(20000)


def test_labels_depend_only_on_seed_and_index():
    a = IndexedGaussianLabels((4, 16), seed=7)
    b = IndexedGaussianLabels((4, 16), seed=7)
    idx = torch.tensor([5, 0, 99, 5])
    la, lb = a(idx), b(idx[[2, 0, 1, 3]])
    assert la.shape == (4, 4, 16)
    torch.testing.assert_close(la[2], lb[0], rtol=0, atol=0)
    torch.testing.assert_close(la[0], la[3], rtol=0, atol=0)
    assert not torch.equal(la[0], la[1])  # different transitions, different labels
    assert not torch.equal(a(idx), IndexedGaussianLabels((4, 16), seed=8)(idx))


def test_labels_fixed_across_epochs_of_training():
    """fit() must see the same label for a transition in every epoch."""
    states = torch.randn(6, 5, 1, generator=torch.Generator().manual_seed(0))
    sl = StochasticLifting(MLP(1, 1, label_dim=3, hidden=8, depth=1), (1,))
    seen: dict[int, list[torch.Tensor]] = {}

    class Recording(TransitionDataset):
        def get_batch(self, index):
            batch = super().get_batch(index)
            for i, lab in zip(batch["index"].tolist(), batch["label"], strict=True):
                seen.setdefault(i, []).append(lab.clone())
            return batch

    ds = Recording(states, labels=sl.fixed_labels(seed=11))
    sl.prepare(ds)  # normalisation statistics read the data once; count only training
    seen.clear()
    fit(sl, ds, epochs=3, batch_size=5, progress=False)
    assert len(seen) == len(ds) == 24
    for draws in seen.values():
        assert len(draws) == 3
        assert all(torch.equal(d, draws[0]) for d in draws)
    firsts = torch.stack([d[0] for d in seen.values()])
    assert torch.unique(firsts, dim=0).shape[0] == 24


@pytest.mark.parametrize("bad", [(), (0,), (3, -1)])
def test_bad_label_shape(bad):
    with pytest.raises(ValueError, match="label shape"):
        IndexedGaussianLabels(bad)


def test_negative_index_rejected():
    with pytest.raises(ValueError, match=">= 0"):
        IndexedGaussianLabels((2,))([-1])
