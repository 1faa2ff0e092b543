"Pseudo-labelling end to end: predictions from a trained learner (and an ensemble), combined loaders, retraining, PK on top."
import warnings
import pytest, torch
from torch import nn
from compkit.datasets import digits
from compkit.data import DeviceDataLoaders
from compkit.learner import timm_learner
from compkit.sampling import pk_dataloaders
from compkit.pseudo import pseudo_labels, pseudo_dataloaders

def small_cnn(n_out=10): return nn.Sequential(nn.Conv2d(1, 32, 3, 1, 1), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.BatchNorm2d(64), nn.ReLU(),
                                              nn.Conv2d(64, 128, 3, 2, 1), nn.BatchNorm2d(128), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, n_out))

@pytest.fixture(scope='module')
def setup():
    d = digits(16)
    train_idx = torch.tensor(sorted(set(range(len(d.y))) - set(d.valid_idx.tolist())))
    lab, unlab = train_idx[::2], train_idx[1::2]
    keep = torch.cat([lab, d.valid_idx])
    dls = DeviceDataLoaders.from_tensors(d.x[keep], d.y[keep], vocab=d.vocab, valid_idx=range(len(lab), len(keep)), bs=64, seed=0)
    learners = [timm_learner(dls, small_cnn()) for _ in range(2)]
    for l in learners:
        with l.no_bar(), l.no_logging(): l.fit_one_cycle(4, 1e-2)
    return d, lab, unlab, dls, learners

def test_ensemble_pseudo_labels_retrain(setup):
    d, lab, unlab, dls, learners = setup
    tdl = dls.test_dl(d.x[unlab])
    probs = []
    for l in learners:
        with l.no_bar(): probs.append(l.get_preds(dl=tdl)[0])
    pl = pseudo_labels(torch.stack(probs).mean(0), 0.9) # an ensemble's mean probabilities
    conf = torch.stack(probs).mean(0).max(1).values
    assert torch.equal(pl.idx, (conf > 0.9).nonzero().flatten())
    assert (pl.y == d.y[unlab][pl.idx]).float().mean() > 0.9
    table = pl.table(dls.vocab)
    assert table['taken'].sum() == len(pl.idx) and table['predicted'].sum() == len(unlab)
    assert (table['taken'] <= table['predicted']).all()
    dls2 = pseudo_dataloaders(dls, tdl, pl)
    assert len(dls2.train_ds) == len(lab) + len(pl.idx) and torch.equal(dls2.valid_ds.x, dls.valid_ds.x)
    assert dls2.after_batch.normalize.mean.equal(dls.after_batch.normalize.mean) # same normalisation: fine-tuning sees the same inputs
    # every pseudo-labelled item is drawn in an epoch
    seen = torch.cat([yb for _, yb in dls2.train])
    assert len(seen) == len(dls2.train_ds) // 64 * 64
    # retrain on the combined loaders
    learn = timm_learner(dls2, small_cnn())
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(4, 1e-2)
    with learn.no_bar(): assert learn.validate()[1] > 0.85
    # PK sampling applied again on top, for a metric loss
    pk = pk_dataloaders(dls2, p=5, k=4)
    xb, yb = pk.one_batch()
    assert sorted(torch.bincount(yb.cpu(), minlength=10).tolist()) == [0] * 5 + [4] * 5
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        again = pseudo_dataloaders(pk, tdl, pl)
    assert 'sampler' in str(w[0].message) and again.train.sampler is None

def test_bad_predictions_refused(setup):
    d, lab, unlab, dls, learners = setup
    tdl = dls.test_dl(d.x[unlab])
    with pytest.raises(ValueError, match='logits'): pseudo_labels(torch.randn(len(unlab), 10))
    with pytest.raises(ValueError, match='classes'): pseudo_dataloaders(dls, tdl, pseudo_labels(torch.full((len(unlab), 4), 0.25)))
    with pytest.raises(ValueError, match='made for'): pseudo_dataloaders(dls, d.x[unlab[:-1]], pseudo_labels(torch.full((len(unlab), 10), 0.1)))
