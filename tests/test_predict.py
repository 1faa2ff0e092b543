"""The prediction band on real learners: tta10 (views against torchvision, box round trips, chunking, merges, scale on
a trained digits model, fastai's own loaders and callbacks); ensembles (tta predictions, fitted weights against equal
ones, rank averages); pseudo-labelling end to end (an ensemble's predictions, combined
loaders, retraining, PK on top).
Cross-validation with real fastai training: multi-head, multi-label and box targets, snapshots and TTA per fold,
folds run apart and merged, pseudo-labels from the fold ensemble."""
import itertools, os, subprocess, sys, warnings
import pytest, torch
import torchvision.transforms.v2.functional as TF
from torch import nn
from torchvision import tv_tensors
from PIL import Image
from scipy.stats import rankdata
from fastai.vision.all import ImageDataLoaders, Resize, Callback
from fastai.learner import save_model
from compkit.core import seed_everything
from compkit.datasets import digits
from compkit.data import DeviceDataLoaders
from compkit.augment import RandomPadCrop, RandomResizedCrop
from compkit.learner import timm_learner
from compkit.retrieval.sampling import pk_dataloaders
from compkit.predict.tta import TenCrop, ten_crop_views
from compkit.predict.ensemble import ensemble_preds, fit_weights, learners_preds, _log_loss
from compkit.predict.pseudo import pseudo_labels, pseudo_dataloaders
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy, accuracy_multi
from fastai.vision.core import TensorBBox
from compkit.datasets import digit_boxes
from compkit.folds import device_dataset, fold_dataloaders
from compkit.classify.multihead import MultiHeadLoss
from compkit.box.ops import paired_box_iou
from compkit.box.model import box_learner
import compkit.schedule.snapshot # `Learner.fit_sgdr_snapshots`
from compkit.predict.cv import cross_validate, CVResult
from compkit.schedule.ema import EMA
from _nets import SmallNet, small_cnn, tiny_cnn

# ---- tta10

@pytest.mark.parametrize('shape,size,vflip', [((32, 32), 28, False), ((31, 40), (17, 30), True), ((33, 33), 24, False),
                                              ((20, 26), 20, True)])
def test_views_equal_torchvision_ten_crop(shape, size, vflip):
    x = torch.randint(0, 256, (3, 2, *shape), dtype=torch.uint8)
    assert torch.equal(ten_crop_views(x,
                                      size, vflip), torch.stack(TF.ten_crop(x,
                                                                            [size, size] if isinstance(size, int)
                                                                            else list(size), vertical_flip=vflip)))

@pytest.mark.parametrize('scale,flip', itertools.product([1., 1.25, 1.5, 2.], ['horizontal', 'vertical']))
def test_box_round_trip_exact(scale, flip):
    """Dyadic scales: boxes go to every view and back bit for bit; and the forward map is torchvision's resize + flip +
    crop of boxes"""
    b = torch.tensor([[0., 0., 32., 24.], [3., 5., 20., 17.], [7.5, 2.25, 8.5, 21.]])
    tc = TenCrop((24, 32), (20, 24), scale, flip)
    for i, (t, l, flipped) in enumerate(tc.views):
        v = tc.boxes_to_view(b, i)
        assert torch.equal(tc.boxes_from_view(v, i), b)
        ref = TF.resize(tv_tensors.BoundingBoxes(b, format='XYXY', canvas_size=(24, 32)), list(tc.scaled))
        if flipped: ref = (TF.vertical_flip if flip == 'vertical' else TF.horizontal_flip)(ref)
        assert torch.allclose(v, ref.as_subclass(torch.Tensor) - torch.tensor([l, t, l, t]), atol=1e-5)

@pytest.mark.parametrize('scale', [8/7, 1.1, 1.37])
def test_box_round_trip_any_scale(scale):
    b = torch.rand(50, 4) * 28; b = torch.cat([b[:, :2].minimum(b[:, 2:]), b[:, :2].maximum(b[:, 2:])], 1)
    tc = TenCrop((28, 28), 26, scale)
    for i in range(10): assert torch.allclose(tc.boxes_from_view(tc.boxes_to_view(b, i), i), b, atol=1e-5)

@pytest.fixture(scope='module')
def trained():
    "A small CNN trained on 28 px digits with random crops (pad-crop and random-resized-crop), seeded"
    seed_everything(0)
    dls = DeviceDataLoaders.from_tensorset(digits(28), bs=64, seed=0,
                                           batch_tfms=[RandomPadCrop(3), RandomResizedCrop(scale=(0.5, 1))])
    learn = timm_learner(dls, tiny_cnn())
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(4, 1e-2)
    return learn

@pytest.fixture(scope='module')
def sdl(trained):
    "96 validation images, in two batches of 64 and 32"
    ds = trained.dls.valid_ds
    return trained.dls.test_dl(ds.x[:96].cpu(), labels=ds.ys[0][:96].cpu())

def _reference(model, xb, scale, size, n=10):
    """The merged softmax of `model` over torchvision's ten crops of `xb` resized by `scale`: tta10's independent
    reference"""
    h, w = xb.shape[-2:]
    xs = TF.resize(xb.as_subclass(torch.Tensor), [round(h * scale), round(w * scale)], antialias=True)
    with torch.no_grad(): p = torch.stack([model(v).softmax(-1) for v in TF.ten_crop(xs, [size, size])[:n]]).mean(0)
    return p.cpu() # where tta10's predictions are, as get_preds'

def test_scale_with_default_size_on_trained_digits(trained):
    "size=None keeps the crops at the training size (28 px), cut from the image upscaled to 32 px"
    p1, t1 = trained.get_preds()
    with trained.no_bar(): p, t = trained.tta10(scale=8/7, flip=None)
    xb = torch.cat([b[0] for b in trained.dls.valid])
    assert torch.equal(t, t1) and p.shape == p1.shape
    assert torch.allclose(p, _reference(trained.model.eval(), xb, 8/7, 28, n=5), atol=1e-5)
    acc1, acc5 = (p1.argmax(1) == t1).float().mean(), (p.argmax(1) == t).float().mean()
    # TTA must help, not merely not hurt much: +6 to +9 images of 360 over seeds 0-2 (issue 20: this passed 3 points
    # worse)
    assert acc1 > 0.75 and acc5 >= acc1 + 3 / 360, (acc1, acc5)

def test_chunked_equals_unchunked(trained, sdl):
    with trained.no_bar():
        ps = [trained.tta10(sdl, scale=1.25, size=30, chunk=c, merge=m)[0] for m in ('mean', 'max') for c in (1, 4, 10)]
    for a, b in ((ps[0], ps[1]), (ps[0], ps[2]), (ps[3], ps[4]), (ps[3], ps[5])): assert torch.allclose(a, b, atol=1e-5)

def test_merges_against_hand_computation(trained, sdl):
    with trained.no_bar():
        p, t, v = trained.tta10(sdl, scale=1.25, size=30, with_views=True)
        assert torch.allclose(p, v.mean(0), atol=1e-6)
        assert torch.allclose(trained.tta10(sdl, scale=1.25, size=30, merge='gmean')[0], v.log().mean(0).exp(),
                              atol=1e-5)
        assert torch.allclose(trained.tta10(sdl, scale=1.25, size=30, merge='max')[0], v.amax(0), atol=1e-6)
    assert torch.allclose(p, _reference(trained.model.eval(), torch.cat([b[0] for b in sdl]), 1.25, 30), atol=1e-5)

def test_callbacks_see_each_chunk_and_models_from_files(trained, sdl, tmp_path):
    """The passes go through fastai's loop (callbacks see every chunk); `learn.save` files and modules work as `models`,
    and the weights are restored"""
    class Shapes(Callback):
        def __init__(self): self.shapes = []
        def before_batch(self): self.shapes.append(tuple(self.xb[0].shape))
    cb = Shapes()
    trained.add_cb(cb)
    try:
        with trained.no_bar(): p, _ = trained.tta10(sdl, scale=1.25, size=30, chunk=4)
    finally: trained.remove_cb(cb)
    assert cb.shapes == [(4 * 64, 1, 30, 30)] * 2 + [(2 * 64, 1, 30, 30)] + [(4 * 32, 1, 30,
                                                                              30)] * 2 + [(2 * 32, 1, 30, 30)]
    save_model(tmp_path/'snap.pth', trained.model, None) # what `learn.save('snap')` writes
    before = {k: v.clone() for k, v in trained.model.state_dict().items()}
    with trained.no_bar():
        pf, _ = trained.tta10(sdl, scale=1.25, size=30, chunk=4, models=[tmp_path/'snap.pth']) # the chunks `p` had
        pm, _ = trained.tta10(sdl, scale=1.25, size=30, chunk=4, models=[trained.model])
        with pytest.raises(ValueError, match='models\\[0\\]: no file'):
            trained.tta10(sdl, scale=1.25, size=30, models=['nowhere.pth'])
    assert torch.allclose(pf, p, atol=1e-6) and torch.allclose(pm, p, atol=1e-6)
    assert all(torch.equal(v, trained.model.state_dict()[k]) for k, v in before.items())

def test_fastai_tta_runs_on_device_dataloaders(trained):
    """fastai's own `Learner.tta` (untouched) on compkit's loaders: random training augmentations per pass, then the
    plain pass"""
    with trained.no_bar(): (aug, plain), t = trained.tta(n=2, beta=None)
    p, _ = trained.get_preds()
    assert torch.allclose(plain, p, atol=1e-6)
    assert not torch.allclose(aug, p, atol=1e-3)   # the passes ran with RandomPadCrop / RandomResizedCrop on
    assert trained.dls.valid_ds.split_idx == 1

def test_works_with_fastai_image_dataloaders(tmp_path):
    D = digits(28)
    for i in range(80):
        (tmp_path/str(int(D.y[i]))).mkdir(exist_ok=True)
        Image.fromarray(D.x[i, 0].numpy()).convert('RGB').save(tmp_path/str(int(D.y[i]))/f'{i}.png')
    fdls = ImageDataLoaders.from_folder(tmp_path, valid_pct=0.25, seed=0, item_tfms=Resize(28), bs=8, num_workers=0)
    learn = timm_learner(fdls, tiny_cnn(3))
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    with learn.no_bar():
        p, t = learn.tta10(scale=1.25, size=30)
        p1, t1 = learn.get_preds()
        fp, ft = learn.tta(n=2)   # fastai's own TTA is still there and still works
    assert torch.equal(t, t1) and torch.equal(t, ft) and p.shape == (20, fdls.c)
    xb = torch.cat([b[0] for b in fdls.valid])
    assert torch.allclose(p, _reference(learn.model.eval(), xb, 1.25, 30), atol=1e-5)

# ---- ensembles

def test_tta_preds_and_fitted_weights(pair):
    cnn, mlp = pair
    with cnn.no_bar(), mlp.no_bar():
        preds, t = learners_preds(pair, tta=True, scale=8/7, flip=None)
        assert torch.allclose(preds[0], cnn.tta10(scale=8/7, flip=None)[0])
        assert torch.allclose(preds[1], mlp.tta10(scale=8/7, flip=None)[0])
    w = fit_weights(preds, t)
    losses = [_log_loss(ensemble_preds(preds, ws), t) for ws in (w, [1, 1], [1, 0], [0, 1])]
    # the fitted weights beat equal weights and each model alone, on the set they were fitted on
    assert losses[0] <= min(losses[1:]) + 1e-6
    for ws in torch.linspace(0, 1, 21): assert losses[0] <= _log_loss(ensemble_preds(preds, [ws, 1 - ws]), t) + 1e-6

def test_rank_average_of_real_predictions(pair):
    with pair[0].no_bar(), pair[1].no_bar(): preds, t = learners_preds(pair)
    ref = (rankdata(preds[0].numpy(), axis=0) + 3 * rankdata(preds[1].numpy(), axis=0)) / 4 / len(t)
    assert torch.allclose(ensemble_preds(preds, [1, 3], 'rank'), torch.tensor(ref, dtype=torch.float), atol=1e-6)

# ---- pseudo-labels

@pytest.fixture(scope='module')
def setup():
    seed_everything(0) # a module fixture is made before the per-test seed: the same start whatever ran before
    d = digits(16)
    train_idx = torch.tensor(sorted(set(range(len(d.y))) - set(d.valid_idx.tolist())))
    lab, unlab = train_idx[::2], train_idx[1::2]
    keep = torch.cat([lab, d.valid_idx])
    dls = DeviceDataLoaders.from_tensors(d.x[keep], d.y[keep], vocab=d.vocab, valid_idx=range(len(lab), len(keep)),
                                         bs=64, seed=0)
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
    # same normalisation: fine-tuning sees the same inputs
    assert dls2.after_batch.normalize.mean.equal(dls.after_batch.normalize.mean)
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
    with pytest.raises(ValueError, match='classes'):
        pseudo_dataloaders(dls, tdl, pseudo_labels(torch.full((len(unlab), 4), 0.25)))
    with pytest.raises(ValueError, match='made for'):
        pseudo_dataloaders(dls, d.x[unlab[:-1]], pseudo_labels(torch.full((len(unlab), 10), 0.1)))

# ---- cross-validation

CV_D = digits(16)

def cv_net(*n_outs): return SmallNet(*n_outs, width=16) # half test_classify's width: cross-validation trains k of them
def cv_learner(dls): return Learner(dls, cv_net(10), metrics=accuracy)

def fit_1(learn, lr=1e-2):
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(1, lr)

def cv_preds(learn, dl=None):
    with learn.no_bar(): return learn.get_preds(dl=dl)

def test_cv_multi_head():
    def head0_accuracy(preds, y1, y2): return accuracy(preds[0], y1)
    loss = MultiHeadLoss([CrossEntropyLossFlat(), CrossEntropyLossFlat()])
    make = lambda dls: Learner(dls, cv_net(10, 2), loss_func=loss, metrics=head0_accuracy)
    res = cross_validate(make, (CV_D.x, (CV_D.y, CV_D.y % 2)), 3, fit=fit_1, seed=0, test=CV_D.x[:30])
    oof, targs = res.oof, res.targs
    assert isinstance(oof, tuple) and [o.shape for o in oof] == [(len(CV_D.y), 10), (len(CV_D.y), 2)]
    assert torch.equal(targs[0], CV_D.y) and torch.equal(targs[1], CV_D.y % 2)
    assert res.score == pytest.approx(float((oof[0].argmax(1) == CV_D.y).float().mean()))
    for o in oof: assert torch.allclose(o.sum(1), torch.ones(len(CV_D.y)), atol=1e-5) # each head softmaxed
    assert [p.shape for p in res.test_preds] == [(30, 10), (30, 2)]
    assert torch.allclose(res.test_preds[1], sum(p[1] for p in res.test_fold_preds) / 3)

def test_cv_multi_label_stratified_and_submission(tmp_path):
    pytest.importorskip('iterstrat')
    y = torch.stack([CV_D.y % 2 == 0, CV_D.y < 3, CV_D.y == 7], 1).float()
    res = cross_validate(lambda dls: Learner(dls, cv_net(3), metrics=accuracy_multi), (CV_D.x, y), 3, fit=fit_1, seed=0,
                         test=CV_D.x[:5], vocab=['even', 'small', 'seven'])
    assert res.oof.shape == (len(y), 3) and ((res.oof >= 0) & (res.oof <= 1)).all()
    for _, v in res.splits: # each label spread evenly over the folds
        assert ((y[v].sum(0) - y.sum(0) * len(v) / len(y)).abs() <= 1).all()
    assert res.score == pytest.approx(float(((res.oof > 0.5) == res.targs.bool()).float().mean()), abs=1e-6)
    df = res.submission(range(5), tmp_path/'sub.csv')
    want = [' '.join(n for n, p in zip(['even', 'small', 'seven'], r) if p > 0.5) for r in res.test_preds.tolist()]
    assert df['label'].fillna('').tolist() == want

def test_cv_boxes_with_tta():
    B = digit_boxes(32, n=300, seed=0)
    body = lambda: nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1),
                                 nn.ReLU())
    made = []
    def make(dls): made.append(box_learner(dls, body())); return made[-1]
    res = cross_validate(make, (B.x, TensorBBox(B.y)), 3, fit=lambda l: fit_1(l, 3e-3), seed=0,
                         tta=dict(box_out=0, scale=1.25))
    assert res.oof.shape == (300, 4) and res.metric_name == 'mean_iou'
    assert res.score == pytest.approx(float(paired_box_iou(res.oof, B.y).mean()), abs=1e-5) # mIoU of the OOF boxes
    for learn, (_, v) in zip(made, res.splits): # each fold's OOF boxes are its model's 10-crop boxes, mapped back
        with learn.no_bar(): p, _ = learn.tta10(box_out=0, scale=1.25)
        assert torch.allclose(res.oof[v], p, atol=1e-4)

def test_cv_snapshots_per_fold():
    made = []
    def make(dls): made.append(Learner(dls, cv_net(10), metrics=accuracy)); return made[-1]
    def fit(learn):
        with learn.no_bar(), learn.no_logging(): learn.fit_sgdr_snapshots(2, 1, 2e-2, 1e-3)
    res = cross_validate(make, CV_D, 3, fit=fit, seed=0, test=CV_D.x[:40])
    for learn, (_, v), tp in zip(made, res.splits, res.test_fold_preds):
        assert len(learn.snapshots) == 2
        oof, test = [], []
        for s in learn.snapshots: # the hand average of each snapshot's get_preds
            learn.model.load_state_dict(s)
            oof.append(cv_preds(learn)[0]); test.append(cv_preds(learn, learn.dls.test_dl(CV_D.x[:40]))[0])
        assert torch.allclose(res.oof[v], sum(oof) / 2, atol=1e-5) and torch.allclose(tp, sum(test) / 2, atol=1e-5)

def test_cv_folds_run_apart_merge(tmp_path):
    make = cv_learner
    kw = dict(n_splits=3, fit=fit_1, seed=3, test=CV_D.x[:20], bs=64)
    whole = cross_validate(make, CV_D, **kw)
    part = cross_validate(make, CV_D, **kw, path=tmp_path, folds=[2]) # as two processes would, one per GPU
    assert part.done == [2] and not part.complete
    cross_validate(make, CV_D, **kw, path=tmp_path, folds=[0, 1])
    res = CVResult.load(tmp_path)
    assert res.complete and torch.allclose(res.oof, whole.oof, atol=1e-6) and res.score == pytest.approx(whole.score)
    assert torch.allclose(res.test_preds, whole.test_preds, atol=1e-6) and all(p.is_file() for p in res.models)
    # a saved fold model predicts its OOF part
    learn = make(fold_dataloaders(device_dataset(CV_D), *res.splits[1], seed=0))
    learn.load(res.models[1].with_suffix(''), with_opt=False)
    assert torch.allclose(cv_preds(learn)[0], res.oof[res.splits[1][1]], atol=1e-5)

def test_cv_groups_never_straddle():
    groups = torch.arange(len(CV_D.y)) // 20 # runs of 20 consecutive scans
    res = cross_validate(cv_learner, CV_D, 3, fit=fit_1, seed=0,
                         groups=groups)
    for t, v in res.splits: assert not set(groups[t].tolist()) & set(groups[v].tolist())
    assert sorted(torch.cat([v for _, v in res.splits]).tolist()) == list(range(len(CV_D.y)))

def test_cv_oof_pass_skipped_only_when_weights_unchanged():
    "The OOF part is the last validation pass's when nothing changed the weights after it; a change after it is seen"
    def fit_then_change(learn):
        fit_1(learn)
        # e.g. a callback loading other weights after the last epoch
        with torch.no_grad(): learn.model.body[0].weight.mul_(1.5)
    for f in (fit_1, fit_then_change):
        res = cross_validate(cv_learner, CV_D, 3, fit=f, seed=0)
        learn = Learner(fold_dataloaders(device_dataset(CV_D), *res.splits[0], seed=0), cv_net(10))
        learn.model.load_state_dict(res.models[0])
        assert torch.allclose(res.oof[res.splits[0][1]], cv_preds(learn)[0], atol=1e-5)

@pytest.mark.parametrize('final', [False, True])
def test_cv_oof_is_the_fold_model_s_with_ema(final):
    "EMA validates on its average by swapping `.data` (no version bump): the OOF part is still the fold model's own"
    def fit_ema(learn):
        # a slow average (1 epoch, decay 0.99) sits far from the trained weights: the two predict differently
        with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(1, 1e-2, cbs=EMA(0.99, final=final))
    res = cross_validate(cv_learner, CV_D, 2, fit=fit_ema, seed=0,
                         test=CV_D.x[:40])
    for k, (t, v) in enumerate(res.splits):
        learn = Learner(fold_dataloaders(device_dataset(CV_D), t, v, seed=0), cv_net(10))
        learn.model.load_state_dict(res.models[k]) # the model's own weights, or with `final` the average
        assert torch.allclose(res.oof[v], cv_preds(learn)[0], atol=1e-5)
        assert torch.allclose(res.test_fold_preds[k], cv_preds(learn, learn.dls.test_dl(CV_D.x[:40]))[0], atol=1e-5)

def test_cv_pseudo_labels_on_a_fold():
    "`pseudo_labels` takes the fold ensemble's test predictions; `pseudo_dataloaders` appends to a fold's index view"
    res = cross_validate(cv_learner, (CV_D.x[100:], CV_D.y[100:]), 3,
                         fit=fit_1, seed=0, test=CV_D.x[:100])
    pl = pseudo_labels(res.test_preds, 0.0)
    assert torch.equal(pl.probs, res.test_preds) and torch.equal(pl.y, res.test_preds.argmax(1))
    dls = fold_dataloaders(device_dataset((CV_D.x[100:], CV_D.y[100:])), *res.splits[0], seed=0)
    dls2 = pseudo_dataloaders(dls, CV_D.x[:100], pl)
    n = len(dls.train_ds)
    xb, yb = dls2.train_ds.items(torch.arange(n, n + 100, device=dls.train_ds.x.device))
    assert len(dls2.train_ds) == n + 100 and torch.equal(xb.cpu(), CV_D.x[:100]) and torch.equal(yb.cpu(), pl.y)
    assert torch.equal(dls2.train_ds.items(torch.arange(5))[0].cpu(), dls.train_ds.items(torch.arange(5))[0].cpu())

def test_cv_test_loader_equals_test_images():
    "`test` as a `DeviceDL` (any loaders' `test_dl`) is predicted with each fold's own normalization, as images are"
    make = cv_learner
    kw = dict(n_splits=3, fit=fit_1, seed=0)
    a = cross_validate(make, (CV_D.x[100:], CV_D.y[100:]), test=CV_D.x[:100], **kw)
    other = DeviceDataLoaders.from_tensorset(CV_D, seed=0) # other statistics than any fold's
    b = cross_validate(make, (CV_D.x[100:], CV_D.y[100:]), test=other.test_dl(CV_D.x[:100]), **kw)
    assert torch.allclose(a.test_preds, b.test_preds, atol=1e-5)

CV_SCRIPT = '''
import sys, torch
from torch import nn
from fastai.learner import Learner
from fastai.metrics import accuracy
from compkit.datasets import digits
from compkit.predict.cv import cross_validate
torch.set_num_threads(1)
def net(): return nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                nn.Flatten(), nn.Linear(16, 10))
def fit(learn):
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(1, 1e-2)
def make(dls): return Learner(dls, net(), metrics=accuracy)
def run(**kw): return cross_validate(make, digits(16), 3, fit=fit, seed=5, **kw)
if __name__ == '__main__': run(path=sys.argv[1], folds=[int(k) for k in sys.argv[2].split(',')])
'''

def test_cv_folds_in_parallel_processes(tmp_path):
    "The documented launch: processes started at once, each its folds with the same seed, merge in `CVResult.load`"
    (tmp_path/'cv_script.py').write_text(CV_SCRIPT)
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'CUDA_VISIBLE_DEVICES': '', 'PYTHONPATH': os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, str(tmp_path/'cv_script.py'), str(tmp_path/'run'), folds], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for folds in ('0', '1,2')]
    for p in procs: assert p.wait(timeout=600) == 0, p.stdout.read()[-3000:]
    res = CVResult.load(tmp_path/'run')
    sys.path.insert(0, str(tmp_path))
    try: from cv_script import run
    finally: sys.path.remove(str(tmp_path))
    one = run() # the same folds in this one process
    assert res.complete and torch.allclose(res.oof, one.oof, atol=1e-5) and res.score == pytest.approx(one.score)

@pytest.mark.parametrize('kw, msg', [(dict(scale=0), 'scale must be > 0'), (dict(chunk=0), 'chunk must be'),
                                     (dict(max_mem=0), 'max_mem must be'), (dict(merge='median'), 'merge must be')])
def test_tta10_refuses_bad_settings_at_the_call(trained, kw, msg):
    "issue 20: refused at the call, not as a range() step of 0 or an empty image later"
    with pytest.raises(ValueError, match=msg): trained.tta10(**kw)
