"""Training schedules in real fits: lr_find_bounds, snapshot ensembles, SWA, tempering, progressive resizing;
with fastai's own DataLoaders and MixUp, composed in one fine_tune, and the learner restored after normal and
cancelled fits."""
import warnings
import numpy as np, pytest, torch
from PIL import Image
from torch import nn
from fastai.vision.all import (ImageDataLoaders, Resize, aug_transforms, MixUp, Callback, CancelFitException,
                               RandTransform)
from fastai.callback.training import GradientAccumulation, ShortEpochCallback
from compkit.core import seed_everything
from compkit.datasets import digits
from compkit.data import DeviceDataLoaders
from compkit.augment import RandomPadCrop, RandomFlip, RandomResizedCrop
from compkit.learner import timm_learner
from compkit.schedule.lr_find import lr_bounds
from compkit.schedule.snapshot import SnapshotEnsemble
from compkit.classify.mixup import MixUp as CompkitMixUp
from compkit.schedule.swa import SWA
from compkit.schedule.tempering import Tempering
from compkit.schedule.progressive import ProgressiveResize
from compkit.schedule.ema import EMA

D = digits(16)

def block(ni, nf, stride): return [nn.Conv2d(ni, nf, 3, stride, 1, bias=False), nn.BatchNorm2d(nf), nn.ReLU()]
def small_cnn(n_in=1):
    return nn.Sequential(*block(n_in, 16, 1), *block(16, 32, 2), *block(32, 64, 2), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(64, 10))
def weights(learn): return {k: v.to('cpu', copy=True) for k, v in learn.model.state_dict().items()} # as the snapshots
def same(w0, w1): return w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)
def quiet(learn): return learn.no_bar()

@pytest.fixture
def dls(): return DeviceDataLoaders.from_tensorset(D, bs=64, seed=0, batch_tfms=RandomPadCrop(2))

@pytest.fixture(scope='module')
def fastai_dls(tmp_path_factory):
    root = tmp_path_factory.mktemp('digits')
    for i in range(300):
        (root/str(int(D.y[i]))).mkdir(exist_ok=True)
        Image.fromarray(D.x[i, 0].numpy()).convert('RGB').save(root/str(int(D.y[i]))/f'{i}.png')
    return ImageDataLoaders.from_folder(root, valid_pct=0.2, seed=0, item_tfms=Resize(16),
                                        batch_tfms=aug_transforms(do_flip=False), bs=32, num_workers=0)

class CancelAt(Callback):
    "Cancel the fit in the middle of the first training batch of epoch `epoch`"
    def __init__(self, epoch): self.at = epoch
    def after_loss(self):
        if self.training and self.epoch == self.at: raise CancelFitException()

# ---- lr_find_bounds

def test_bounds_on_digits_then_one_cycle_at_lr_max_converges(dls):
    learn = timm_learner(dls, small_cnn())
    w0 = weights(learn)
    with quiet(learn): b = learn.lr_find_bounds(show_plot=False)
    assert np.isfinite([b.lr_min, b.lr_max]).all() and 0 < b.lr_min < b.lr_max
    assert same(w0, weights(learn))
    with quiet(learn), learn.no_logging(): learn.fit_one_cycle(4, b.lr_max)
    assert learn.validate()[1] > 0.9

def test_bounds_agree_with_lr_bounds_on_the_recorded_curve(dls):
    learn = timm_learner(dls, small_cnn())
    with quiet(learn): b = learn.lr_find_bounds(show_plot=False)
    lrs, losses = np.array(learn.recorder.lrs), np.array([float(l) for l in learn.recorder.losses])
    n = int(np.flatnonzero(~np.isfinite(losses))[0]) if not np.isfinite(losses).all() else len(losses)
    assert (b.lr_min, b.lr_max) == lr_bounds(lrs[10:n], losses[10:n])[:2]  # fastai's warm-up skip: num_it//10

def test_bounds_of_a_curve_with_known_bounds():
    """issue 20: lr_find_bounds was checked only against lr_bounds on its own curve; here the answer is known in closed
    form"""
    lrs = np.logspace(-7, 1, 161) # 20 points a decade
    x = np.log10(lrs)
    # a logistic descent centred at 1e-3 (steepest there), 0.25 decade wide, then divergence past 1e-1
    losses = 2.5 - 2 / (1 + np.exp(-(x + 3) / 0.25)) + np.where(x > -1, 10 * (x + 1) ** 2, 0)
    # the slope per decade is s(1-s)/0.25 of its steepest 0.25/0.25 = 1: 10% of it where s(1-s) = 0.025, s = 0.0257,
    # that is (x + 3) / 0.25 = ln(0.0257 / 0.9743): x = -3.909
    lr_min, lr_max, _ = lr_bounds(lrs, losses)
    assert abs(np.log10(lr_max) - -3) <= 0.05 + 1e-9              # within one point of the curve
    assert abs(np.log10(lr_min) - -3.909) <= 0.05 + 1e-9
    with pytest.raises(ValueError, match='loss 3 is not finite'):
        lr_bounds(lrs[:10], np.r_[losses[:3], np.nan, losses[4:10]])

def test_after_training_survives_and_leaves_the_learner_as_it_was(dls):
    "fastai#3658: after fine_tune the loss is tiny and noisy; the test must not fail nor change the learner"
    seed_everything(0)
    learn = timm_learner(dls, small_cnn())
    with quiet(learn), learn.no_logging(): learn.fine_tune(6, 2e-2, lr_mult=1)
    w0, opt0 = weights(learn), learn.opt.state_dict()
    per_param = lambda st: list(st.values()) if isinstance(st, dict) else st # a torch optimizer's state, or fastai's
    opt0 = [{k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()} for s in per_param(opt0['state'])]
    with quiet(learn), warnings.catch_warnings():
        warnings.simplefilter('ignore') # a trained model has no clear descent left: that is warned about, not raised
        b = learn.lr_find_bounds(show_plot=False)
    assert np.isfinite([b.lr_min, b.lr_max]).all() and 0 < b.lr_min < b.lr_max
    assert same(w0, weights(learn))
    assert len(opt0) == len(per_param(learn.opt.state_dict()['state'])) > 0
    for s0, s1 in zip(opt0, per_param(learn.opt.state_dict()['state'])):
        assert s0.keys() == s1.keys() and all(torch.equal(s0[k], s1[k]) if torch.is_tensor(s0[k]) else s0[k] == s1[k]
                                              for k in s0)

def fit_around_find(make_learner, find):
    "The weights after `fit(1)`, an lr range test if `find`, and `fit(1)` again, of the learner `make_learner()` seeds"
    learn = make_learner()
    with quiet(learn), learn.no_logging():
        learn.fit(1, 1e-3)
        if find: learn.lr_find_bounds(show_plot=False, num_it=20)
        learn.fit(1, 1e-3)
    return weights(learn)

def test_a_fit_after_the_test_is_the_fit_without_it_on_fastai_dataloaders(fastai_dls):
    "python's random (fastai's RandTransforms, the loader's rng), torch's RNG and the weights all come back"
    rng = fastai_dls.train.rng.getstate()
    def make():
        seed_everything(3, deterministic=True); fastai_dls.train.rng.setstate(rng) # a GPU's default kernels vary
        return timm_learner(fastai_dls, small_cnn(3))
    assert same(fit_around_find(make, False), fit_around_find(make, True))

def test_a_fit_after_the_test_is_the_fit_without_it_with_compkit_augmentations():
    """each augmentation's random state drawn ahead (a block of items) comes back too, with the torch and loader
    generators"""
    def make():
        seed_everything(3)
        dls = DeviceDataLoaders.from_tensors(D.x[:320], D.y[:320], bs=64, seed=0,
                                             batch_tfms=[RandomPadCrop(2), RandomFlip(), RandomResizedCrop()])
        return timm_learner(dls, small_cnn())
    assert same(fit_around_find(make, False), fit_around_find(make, True))

# ---- snapshots

def test_snapshots_under_fastai_fit_sgdr_are_the_cycle_end_weights(dls):
    class Keep(Callback):
        order = SnapshotEnsemble.order
        def before_fit(self): self.w = []
        def after_epoch(self): self.w.append(weights(self.learn))
    learn, keep = timm_learner(dls, small_cnn()), Keep()
    with quiet(learn), learn.no_logging():
        learn.fit_sgdr(2, 1, 1e-2, cycle_mult=2, cbs=[SnapshotEnsemble(2, 1, 2), keep])
    assert len(learn.snapshots) == 2 and same(learn.snapshots[0], keep.w[0]) and same(learn.snapshots[1], keep.w[2])

@pytest.mark.parametrize('args', [(), (2, 1)], ids=['found', 'checked'])
def test_snapshots_under_fastai_fit_sgdr_need_no_arguments(dls, args):
    "issue 20: fit_sgdr(2, 1) gave one snapshot unless the cycles were repeated by hand"
    learn = timm_learner(dls, small_cnn())
    snap = SnapshotEnsemble(*args, cycle_mult=2) if args else SnapshotEnsemble()
    # fastai's default cycle_mult=2: epochs 0 and 1-2
    with quiet(learn), learn.no_logging(): learn.fit_sgdr(2, 1, 1e-2, cbs=snap)
    assert len(learn.snapshots) == 2

def test_a_second_run_on_disk_neither_overwrites_nor_mixes(dls, tmp_path):
    learn = timm_learner(dls, small_cnn(), path=tmp_path)
    with quiet(learn), learn.no_logging(): learn.fit_sgdr_snapshots(3, 1, 2e-2, 1e-3, to_disk=True)
    first = {f: f.read_bytes() for f in learn.snapshots}
    # same path and fname, fewer cycles
    with quiet(learn), learn.no_logging(): learn.fit_sgdr_snapshots(2, 1, 2e-2, 1e-3, to_disk=True)
    assert {f: f.read_bytes() for f in first} == first and not set(first) & set(learn.snapshots)
    new = timm_learner(dls, small_cnn(), path=tmp_path).load_snapshots()
    assert list(new.snapshots) == list(learn.snapshots) and len(new.load_snapshots(run=0).snapshots) == 3

def test_interrupted_fit_keeps_finished_snapshots_on_disk_and_a_new_learner_ensembles_them(dls, tmp_path):
    learn = timm_learner(dls, small_cnn(), path=tmp_path)
    with quiet(learn), learn.no_logging(): learn.fit_sgdr_snapshots(4, 1, 2e-2, 1e-3, to_disk=True, cbs=CancelAt(2))
    run = tmp_path/'models'/'snapshot'/'run_000'
    assert sorted(p.name for p in run.iterdir()) == ['snapshot_000.pth', 'snapshot_001.pth']
    new = timm_learner(dls, small_cnn(), path=tmp_path).load_snapshots()
    with quiet(learn), quiet(new):
        p_new, t = new.snapshot_preds()
        p_old, _ = learn.snapshot_preds()
    assert torch.allclose(p_new, p_old, atol=1e-6) and (p_new.argmax(1) == t).float().mean() > 0.5

def test_snapshot_report_ensemble_row_is_the_averaged_probabilities(dls):
    seed_everything(0)
    learn = timm_learner(dls, small_cnn())
    with quiet(learn), learn.no_logging(): learn.fit_sgdr_snapshots(3, 1, 2e-2, 1e-3)
    with quiet(learn):
        df = learn.snapshot_report(show_plot=False)
        probs, targs = learn.snapshot_preds()
    assert abs(df.loc['ensemble', 'accuracy'] - (probs.argmax(1) == targs).float().mean().item()) < 1e-6
    assert abs(df.loc['ensemble', 'loss'] - nn.functional.nll_loss(probs.log(), targs).item()) < 1e-4

# ---- SWA

def test_swa_on_fastai_dataloaders_ends_on_the_average_with_fresh_batchnorm_stats(fastai_dls):
    class Keep(Callback):
        order = SWA.order - 1
        def before_fit(self): self.w = []
        def after_train(self): self.w.append({k: v.clone() for k, v in self.model.state_dict().items()})
    seed_everything(0)
    learn, keep = timm_learner(fastai_dls, small_cnn(3)), Keep()
    with quiet(learn), learn.no_logging(): learn.fit_one_cycle(4, 1e-2, cbs=[SWA(start_pct=0.5), keep])
    w = learn.model.state_dict()
    for k in w:
        if 'running' not in k and 'num_batches' not in k: assert torch.allclose(w[k], (keep.w[2][k] + keep.w[3][k]) / 2,
                                                                                atol=1e-6)
    # recomputed by update_bn, from (x, y) tuple batches
    assert not torch.equal(w['1.running_mean'], keep.w[3]['1.running_mean'])

# ---- tempering and progressive resizing on fastai's DataLoaders

def test_tempering_holds_back_fastai_aug_transforms_until_the_switch(fastai_dls):
    class Watch(Callback):
        def before_fit(self): self.seen = []
        def before_train(self):
            self.seen.append((self.dls.train.bs, any(isinstance(t, RandTransform) and t.split_idx == 0
                                                     for t in self.dls.train.after_batch.fs)))
    learn, watch = timm_learner(fastai_dls, small_cnn(3)), Watch()
    fs, bs = fastai_dls.train.after_batch.fs, fastai_dls.train.bs
    with quiet(learn), learn.no_logging(): learn.fit(3, 1e-3, cbs=[Tempering(switch_epoch=1), watch])
    assert watch.seen == [(64, False), (32, True), (32, True)]
    assert fastai_dls.train.after_batch.fs is fs and fastai_dls.train.bs == bs

def test_progressive_resize_runs_before_fastai_mixup(dls):
    class Seen(Callback):
        order = MixUp.order + 1
        def before_fit(self): self.shapes = []
        def before_batch(self):
            if self.training and self.iter == 0: self.shapes.append((tuple(self.xb[0].shape[-2:]),
                                                                     float(torch.as_tensor(self.mix_up.lam).min()) < 1))
    learn, seen = timm_learner(dls, small_cnn()), Seen()
    with quiet(learn), learn.no_logging(): learn.fit(2, 1e-3, cbs=[ProgressiveResize({0: 10, 1: 16}), MixUp(0.4), seen])
    assert seen.shapes == [((10, 10), True), ((16, 16), True)]

# ---- composition and state

@pytest.mark.parametrize('mix', [lambda: MixUp(0.4), lambda: CompkitMixUp(0.4)], ids=['fastai_mixup', 'compkit_mixup'])
def test_fine_tune_with_mixup_snapshots_and_tempering_in_one_fit(dls, mix):
    seed_everything(0)
    learn = timm_learner(dls, small_cnn())
    loss_func, fs = learn.loss_func, dls.train.after_batch.fs
    snap, tmp = SnapshotEnsemble(), Tempering(switch_epoch=2)
    with quiet(learn), learn.no_logging(): learn.fine_tune(3, 2e-2, freeze_epochs=1, lr_mult=1, cbs=[mix(), snap, tmp])
    # the frozen phase makes none; switched in phase 2
    assert len(learn.snapshots) == 1 and tmp.switch_at == 2
    assert learn.loss_func is loss_func and dls.train.after_batch.fs is fs and dls.train.bs == 64
    with quiet(learn): probs, targs = learn.snapshot_preds()
    assert (probs.argmax(1) == targs).float().mean() > 0.75 # 0.80 to 0.88 over seeds 0-4; chance is 0.1

def state(learn):
    "What a schedule callback may touch and must put back"
    dl = learn.dls.train
    # callbacks by name: `no_bar` puts fastai's own bar back, which becomes compkit's at the next fit
    return dict(bs=dl.bs, batch_tfms=id(dl.after_batch.fs), item_tfms=id(dl.after_item.fs), loss=id(learn.loss_func),
                lrs=[h['lr'] for h in learn.opt.hypers], cbs=sorted(c.name for c in learn.cbs),
                shapes={k: v.shape for k, v in learn.model.state_dict().items()})

@pytest.mark.parametrize('make', [SnapshotEnsemble, lambda: SWA(start_pct=0.25), lambda: Tempering(switch_epoch=1),
                                  lambda: ProgressiveResize({0: 12, 2: 16}, scale_bs=True), lambda: EMA(decay=0.9)],
                         ids=['snapshot', 'swa', 'tempering', 'progressive', 'ema'])
@pytest.mark.parametrize('cancel', [False, True], ids=['normal', 'cancelled'])
def test_every_callback_restores_the_learner(dls, make, cancel):
    learn = timm_learner(dls, small_cnn(), cbs=make())
    learn.create_opt(); learn.opt.set_hyper('lr', 1e-3)
    s0 = state(learn)
    with quiet(learn), learn.no_logging(): learn.fit(3, 1e-3, cbs=CancelAt(2) if cancel else None)
    assert state(learn) == s0
    w = weights(learn)
    with quiet(learn): learn.validate(); learn.get_preds()
    assert same(w, weights(learn)) and state(learn) == s0 # attached to the learner, they do nothing outside a fit

class Interrupt(Callback):
    "Raise `exc` at `event` of epoch `epoch` (on a training batch, for the batch events): what fastai lets through"
    order = 100
    def __init__(self, event, epoch, exc=KeyboardInterrupt): self.event, self.at, self.exc = event, epoch, exc
    def _maybe(self, event):
        if event == self.event and self.epoch == self.at and (event not in ('before_batch', 'after_batch')
                                                              or self.training): raise self.exc(f'stopped at {event}')
for _e in ('before_epoch', 'before_batch', 'after_batch', 'after_train', 'before_validate', 'after_epoch'):
    setattr(Interrupt, _e, (lambda e: lambda self: self._maybe(e))(_e))

SCHEDULE_CBS = dict(snapshot=lambda: SnapshotEnsemble(to_disk=False), swa=lambda: SWA(start_pct=0.25, swa_lr=5e-4),
                    tempering=lambda: Tempering(switch_epoch=1),
                    progressive=lambda: ProgressiveResize({0: 12, 2: 16}, scale_bs=True), ema=lambda: EMA(decay=0.9))

@pytest.mark.parametrize('make', SCHEDULE_CBS.values(), ids=SCHEDULE_CBS.keys())
@pytest.mark.parametrize('event, epoch, exc', [('before_epoch', 0, KeyboardInterrupt),
                                               ('after_batch', 0, KeyboardInterrupt),
                                               ('after_train', 1, KeyboardInterrupt),
                                               ('before_validate', 1, RuntimeError),
                                               ('after_epoch', 2, KeyboardInterrupt)])
def test_an_interrupted_fit_leaves_the_learner_as_a_fresh_one(make, event, epoch, exc):
    "fastai skips after_fit on a KeyboardInterrupt or an error: the learner, its loader and optimizer still come back"
    dls = DeviceDataLoaders.from_tensors(D.x[:320], D.y[:320], bs=64, seed=0, batch_tfms=RandomPadCrop(2))
    cb = make()
    learn = timm_learner(dls, small_cnn(), cbs=cb)
    learn.create_opt(); learn.opt.set_hyper('lr', 1e-3)
    fresh = state(learn) # as a new learner is: loader, transforms, loss, rates, callbacks
    with quiet(learn), learn.no_logging(), pytest.raises(exc): learn.fit(3, 1e-3, cbs=Interrupt(event, epoch, exc))
    assert state(learn) == fresh and cb.run and '_fit_exits' not in learn.__dict__
    # the next fit starts from the loader as it was, and puts it back
    with quiet(learn), learn.no_logging(): learn.fit(3, 1e-3)
    assert state(learn) == fresh

class Steps(Callback):
    "Count the optimizer's steps"
    def before_fit(self): self.n = 0
    def after_step(self): self.n += 1

# each holds its change to the fit's end: a restore run too early leaves the learner changed
HOLDING_CBS = dict(swa=SCHEDULE_CBS['swa'], tempering=lambda: Tempering(switch_epoch=5),
                   progressive=lambda: ProgressiveResize({0: 12, 1: 14, 5: 16}, scale_bs=True),
                   ema=SCHEDULE_CBS['ema'])

@pytest.mark.parametrize('make', HOLDING_CBS.values(), ids=HOLDING_CBS.keys())
@pytest.mark.parametrize('fastai_cb', [lambda: GradientAccumulation(256), lambda: ShortEpochCallback(0.5)],
                         ids=['grad_accum', 'short_epoch'])
def test_fastai_control_flow_in_a_fit_puts_nothing_back_before_its_end(make, fastai_cb):
    """GradientAccumulation's CancelBatchException (a batch without a step) and ShortEpochCallback's
    CancelTrainException/CancelValidException go on with the fit: the learner comes back at its end, as a fresh one"""
    dls = DeviceDataLoaders.from_tensors(D.x[:320], D.y[:320], bs=64, seed=0, batch_tfms=RandomPadCrop(2))
    cb, steps = make(), Steps()
    learn = timm_learner(dls, small_cnn(), cbs=cb)
    learn.create_opt(); learn.opt.set_hyper('lr', 1e-3)
    fresh = state(learn)
    with quiet(learn), learn.no_logging(): learn.fit(3, 1e-3, cbs=[fastai_cb(), steps])
    assert state(learn) == fresh and '_fit_exits' not in learn.__dict__
    # EMA's average is one of the whole fit, not restarted where a batch skipped its step
    if isinstance(cb, EMA): assert cb.n_updates == steps.n > 0

@pytest.mark.parametrize('event, epoch, exc',
                         [('after_batch', 1, KeyboardInterrupt), ('before_validate', 1, RuntimeError),
                                               ('after_epoch', 1, KeyboardInterrupt),
                                               ('after_epoch', 1, CancelFitException)])
def test_ema_leaves_the_model_its_own_weights_however_the_fit_ends(event, epoch, exc):
    "The average is in the model from before_validate to after_epoch: an interruption leaves the model's own weights"
    class Steps(Callback):
        def after_step(self): self.w = weights(self.learn)
    def avg(ema): return {k: v.to('cpu', copy=True) for k, v in ema.ema_model.state_dict().items()}
    dls = DeviceDataLoaders.from_tensors(D.x[:320], D.y[:320], bs=64, seed=0)
    ema, steps = EMA(decay=0.9, final=True), Steps()
    learn = timm_learner(dls, small_cnn(), cbs=[ema, steps])
    with quiet(learn), learn.no_logging():
        try: learn.fit(3, 1e-3, cbs=Interrupt(event, epoch, exc))
        except (KeyboardInterrupt, RuntimeError): pass
    # a cancelled fit (EarlyStopping) ends as fits do
    if exc is CancelFitException: assert same(weights(learn), avg(ema))
    else: assert same(weights(learn), steps.w) and not same(weights(learn), avg(ema)) # not the average, though `final`
    with quiet(learn), learn.no_logging(): learn.fit(1, 1e-3)
    assert same(weights(learn), avg(ema))                                    # a whole fit ends on it (`final`)

def test_each_callback_is_off_inside_lr_find_bounds(dls):
    class Batches(Callback):
        order = 100
        def before_fit(self): self.seen = set()
        def before_batch(self):
            if self.training: self.seen.add(tuple(self.xb[0].shape))
    cbs = [SnapshotEnsemble(), SWA(start_pct=0), Tempering(switch_epoch=0, bs_start=32),
           ProgressiveResize({0: 8}, scale_bs=True), Batches()]
    learn = timm_learner(dls, small_cnn(), cbs=cbs)
    w0 = weights(learn)
    with quiet(learn): learn.lr_find_bounds(show_plot=False, num_it=20)
    assert same(w0, weights(learn)) and len(cbs[0].snapshots) == 0 and cbs[2].n_trained == 0 and cbs[3].n_trained == 0
    assert cbs[-1].seen == {(64, 1, 16, 16)} # the test ran on the loader as it is: no resize, no batch size change
