"Cross-validation with real fastai training: multi-head, multi-label and box targets, snapshots and TTA per fold, folds run apart and merged."
import numpy as np, pytest, torch
from torch import nn
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat, BCEWithLogitsLossFlat
from fastai.metrics import accuracy, accuracy_multi
from fastai.vision.core import TensorBBox
from compkit.datasets import digits, digit_boxes
from compkit.folds import device_dataset, fold_dataloaders
from compkit.predict.cv import cross_validate, CVResult
from compkit.losses import MultiHeadLoss
from compkit.loss.box import mean_iou, paired_box_iou
from compkit.box.model import box_learner
from compkit.callback.snapshot import SnapshotEnsemble # `fit_sgdr_snapshots`
import compkit.tta
from compkit.pseudo import pseudo_labels, pseudo_dataloaders

D = digits(16)

@pytest.fixture(autouse=True, scope='module')
def one_thread():
    "Convolutions this small run faster on one thread than on two that wait for each other (and for the other CI jobs)"
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

class SmallNet(nn.Module):
    "A small CNN with one linear head per entry of `n_outs`: a tensor for one head, a tuple for several"
    def __init__(self, *n_outs, c_in=1):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c_in, 16, 3, 1, 1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1),
                                  nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.heads = nn.ModuleList(nn.Linear(128, n) for n in n_outs)
    def forward(self, x):
        f = self.body(x)
        return self.heads[0](f) if len(self.heads) == 1 else tuple(h(f) for h in self.heads)

def fit1(learn, lr=1e-2):
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(1, lr)

def preds_of(learn, dl=None):
    with learn.no_bar(): return learn.get_preds(dl=dl)

def test_multi_head():
    def head0_accuracy(preds, y1, y2): return accuracy(preds[0], y1)
    make = lambda dls: Learner(dls, SmallNet(10, 2), loss_func=MultiHeadLoss([CrossEntropyLossFlat(), CrossEntropyLossFlat()]),
                               metrics=head0_accuracy)
    res = cross_validate(make, (D.x, (D.y, D.y % 2)), 3, fit=fit1, seed=0, test=D.x[:30])
    oof, targs = res.oof, res.targs
    assert isinstance(oof, tuple) and [o.shape for o in oof] == [(len(D.y), 10), (len(D.y), 2)]
    assert torch.equal(targs[0], D.y) and torch.equal(targs[1], D.y % 2)
    assert res.score == pytest.approx(float((oof[0].argmax(1) == D.y).float().mean()))
    for o in oof: assert torch.allclose(o.sum(1), torch.ones(len(D.y)), atol=1e-5) # each head softmaxed
    assert [p.shape for p in res.test_preds] == [(30, 10), (30, 2)]
    assert torch.allclose(res.test_preds[1], sum(p[1] for p in res.test_fold_preds) / 3)

def test_multi_label_stratified_and_submission(tmp_path):
    pytest.importorskip('iterstrat')
    y = torch.stack([D.y % 2 == 0, D.y < 3, D.y == 7], 1).float()
    res = cross_validate(lambda dls: Learner(dls, SmallNet(3), metrics=accuracy_multi), (D.x, y), 3, fit=fit1, seed=0,
                         test=D.x[:5], vocab=['even', 'small', 'seven'])
    assert res.oof.shape == (len(y), 3) and ((res.oof >= 0) & (res.oof <= 1)).all()
    for _, v in res.splits: assert ((y[v].sum(0) - y.sum(0) * len(v) / len(y)).abs() <= 1).all() # each label spread evenly
    assert res.score == pytest.approx(float(((res.oof > 0.5) == res.targs.bool()).float().mean()), abs=1e-6)
    df = res.submission(range(5), tmp_path/'sub.csv')
    want = [' '.join(n for n, p in zip(['even', 'small', 'seven'], r) if p > 0.5) for r in res.test_preds.tolist()]
    assert df['label'].fillna('').tolist() == want

def test_boxes_with_tta():
    B = digit_boxes(32, n=300, seed=0)
    body = lambda: nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU())
    made = []
    def make(dls): made.append(box_learner(dls, body())); return made[-1]
    res = cross_validate(make, (B.x, TensorBBox(B.y)), 3, fit=lambda l: fit1(l, 3e-3), seed=0, tta=dict(box_out=0, scale=1.25))
    assert res.oof.shape == (300, 4) and res.metric_name == 'mean_iou'
    assert res.score == pytest.approx(float(paired_box_iou(res.oof, B.y).mean()), abs=1e-5) # mIoU of the OOF boxes
    for learn, (_, v) in zip(made, res.splits): # each fold's OOF boxes are its model's 10-crop boxes, mapped back
        with learn.no_bar(): p, _ = learn.tta10(box_out=0, scale=1.25)
        assert torch.allclose(res.oof[v], p, atol=1e-4)

def test_snapshots_per_fold():
    made = []
    def make(dls): made.append(Learner(dls, SmallNet(10), metrics=accuracy)); return made[-1]
    def fit(learn):
        with learn.no_bar(), learn.no_logging(): learn.fit_sgdr_snapshots(2, 1, 2e-2, 1e-3)
    res = cross_validate(make, D, 3, fit=fit, seed=0, test=D.x[:40])
    for learn, (_, v), tp in zip(made, res.splits, res.test_fold_preds):
        assert len(learn.snapshots) == 2
        oof, test = [], []
        for s in learn.snapshots: # the hand average of each snapshot's get_preds
            learn.model.load_state_dict(s)
            oof.append(preds_of(learn)[0]); test.append(preds_of(learn, learn.dls.test_dl(D.x[:40]))[0])
        assert torch.allclose(res.oof[v], sum(oof) / 2, atol=1e-5) and torch.allclose(tp, sum(test) / 2, atol=1e-5)

def test_folds_run_apart_merge(tmp_path):
    make = lambda dls: Learner(dls, SmallNet(10), metrics=accuracy)
    kw = dict(n_splits=3, fit=fit1, seed=3, test=D.x[:20], bs=64)
    whole = cross_validate(make, D, **kw)
    part = cross_validate(make, D, **kw, path=tmp_path, folds=[2]) # as two processes would, one per GPU
    assert part.done == [2] and not part.complete
    cross_validate(make, D, **kw, path=tmp_path, folds=[0, 1])
    res = CVResult.load(tmp_path)
    assert res.complete and torch.allclose(res.oof, whole.oof, atol=1e-6) and res.score == pytest.approx(whole.score)
    assert torch.allclose(res.test_preds, whole.test_preds, atol=1e-6) and all(p.is_file() for p in res.models)
    learn = make(fold_dataloaders(device_dataset(D), *res.splits[1], seed=0)) # a saved fold model predicts its OOF part
    learn.load(res.models[1].with_suffix(''), with_opt=False)
    assert torch.allclose(preds_of(learn)[0], res.oof[res.splits[1][1]], atol=1e-5)

def test_groups_never_straddle():
    groups = torch.arange(len(D.y)) // 20 # runs of 20 consecutive scans
    res = cross_validate(lambda dls: Learner(dls, SmallNet(10), metrics=accuracy), D, 3, fit=fit1, seed=0, groups=groups)
    for t, v in res.splits: assert not set(groups[t].tolist()) & set(groups[v].tolist())
    assert sorted(torch.cat([v for _, v in res.splits]).tolist()) == list(range(len(D.y)))

def test_oof_pass_skipped_only_when_weights_unchanged():
    "The OOF part is the last validation pass's when nothing changed the weights after it; a change after it is seen"
    def fit_then_change(learn):
        fit1(learn)
        with torch.no_grad(): learn.model.body[0].weight.mul_(1.5) # e.g. a callback loading other weights after the last epoch
    for f in (fit1, fit_then_change):
        res = cross_validate(lambda dls: Learner(dls, SmallNet(10), metrics=accuracy), D, 3, fit=f, seed=0)
        learn = Learner(fold_dataloaders(device_dataset(D), *res.splits[0], seed=0), SmallNet(10))
        learn.model.load_state_dict(res.models[0])
        assert torch.allclose(res.oof[res.splits[0][1]], preds_of(learn)[0], atol=1e-5)

def test_pseudo_labels_on_a_fold():
    "`pseudo_labels` takes the fold ensemble's test predictions; `pseudo_dataloaders` appends to a fold's index view"
    res = cross_validate(lambda dls: Learner(dls, SmallNet(10), metrics=accuracy), (D.x[100:], D.y[100:]), 3, fit=fit1, seed=0,
                         test=D.x[:100])
    pl = pseudo_labels(res.test_preds, 0.0)
    assert torch.equal(pl.probs, res.test_preds) and torch.equal(pl.y, res.test_preds.argmax(1))
    dls = fold_dataloaders(device_dataset((D.x[100:], D.y[100:])), *res.splits[0], seed=0)
    dls2 = pseudo_dataloaders(dls, D.x[:100], pl)
    n = len(dls.train_ds)
    xb, yb = dls2.train_ds.items(torch.arange(n, n + 100, device=dls.train_ds.x.device))
    assert len(dls2.train_ds) == n + 100 and torch.equal(xb.cpu(), D.x[:100]) and torch.equal(yb.cpu(), pl.y)
    assert torch.equal(dls2.train_ds.items(torch.arange(5))[0].cpu(), dls.train_ds.items(torch.arange(5))[0].cpu())
