"""MixUp/CutMix in real fastai training: every target kind, fastai's loss as reference, fastai's callbacks,
lr_find/get_preds, cancelled fits."""
import numpy as np, pytest, torch
import torch.nn.functional as F
from torch import nn
from unittest import mock
from PIL import Image
from fastai.vision.all import (Learner, Callback, CancelFitException, accuracy, accuracy_multi, CrossEntropyLossFlat,
                               FocalLossFlat, LabelSmoothingCrossEntropyFlat, BCEWithLogitsLossFlat, MSELossFlat,
                               TensorImage, TensorCategory, TensorMultiCategory, TensorBBox,
                               GradientAccumulation, MixedPrecision, ClassificationInterpretation, load_learner,
                               ImageDataLoaders, Resize, to_float)
from fastai.callback.mixup import MixUp as FastaiMixUp
from compkit.core import seed_everything
from compkit.datasets import digits
from compkit.data import DeviceDataLoaders
from compkit.classify.mixup import MixUp, CutMix, MixUpCutMix
from compkit.classify.multihead import MultiHeadLoss
from compkit.classify.metrics import MacroRecall
from _nets import SmallNet

D = digits(16)

@pytest.fixture(autouse=True, scope='module')
def one_thread():
    "Convolutions this small run faster on one thread than on two that wait for each other (and for the other CI jobs)"
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
VALID_Y = D.y[D.valid_idx]

def dls_(*ys, vocabs=(), **kw): return DeviceDataLoaders.from_targets(D.x, ys, vocabs=vocabs, valid_idx=D.valid_idx,
                                                                      **{'bs': 64, 'seed': 0, **kw})

def fit(learn, cb, epochs=1, lr=1e-2, fit_fn='fit_one_cycle'):
    "Train; return how many batches `cb` mixed"
    with mock.patch.object(cb, 'draw', wraps=cb.draw) as draw, learn.no_bar(), learn.no_logging():
        getattr(learn, fit_fn)(epochs, lr)
    return draw.call_count

ONE_HOT = F.one_hot(D.y, 10).float()
GROUPS = torch.stack([D.y % 2, (D.y >= 5).long()], 1).float() # multi-hot: odd, five or more
KINDS = { # name: (targets, model outputs, loss (given the loaders), metric)
    'cross_entropy':   ((TensorCategory(D.y),), (10,), lambda dls: CrossEntropyLossFlat(), accuracy),
    'label_smoothing': ((TensorCategory(D.y),), (10,), lambda dls: LabelSmoothingCrossEntropyFlat(eps=0.1), accuracy),
    'focal':           ((TensorCategory(D.y),), (10,), lambda dls: FocalLossFlat(gamma=2.), accuracy),
    'class_weighted':  ((TensorCategory(D.y),), (10,), lambda dls: CrossEntropyLossFlat(weight=dls.class_weights()),
                        accuracy),
    'soft_targets':    ((ONE_HOT * 0.8 + 0.02,), (10,), lambda dls: CrossEntropyLossFlat(flatten=False), None),
    'multi_label':     ((TensorMultiCategory(torch.cat([ONE_HOT, GROUPS], 1)),), (12,),
                        lambda dls: BCEWithLogitsLossFlat(), accuracy_multi),
    'multi_head':      ((TensorCategory(D.y), TensorCategory(D.y % 2)), (10, 2),
                        lambda dls: MultiHeadLoss([CrossEntropyLossFlat(), CrossEntropyLossFlat()], weights=[2, 1]),
                        MacroRecall(weights=[2, 1])),
    'multi_head_mixed_kinds': ((TensorCategory(D.y), TensorMultiCategory(GROUPS)), (10, 2),
                        lambda dls: MultiHeadLoss([FocalLossFlat(), BCEWithLogitsLossFlat()]), MacroRecall(head=0)),
}

@pytest.mark.parametrize('mixer', [MixUp, lambda: MixUpCutMix(mode='elem')], ids=['MixUp', 'MixUpCutMix_elem'])
@pytest.mark.parametrize('kind', list(KINDS))
def test_each_target_kind_trains(kind, mixer):
    ys, n_outs, loss, metric = KINDS[kind]
    dls = dls_(*ys)
    learn = Learner(dls, SmallNet(*n_outs), loss_func=loss(dls), metrics=metric or [])
    cb = mixer(); learn.add_cb(cb)
    lf, loss_before = learn.loss_func, learn.validate()[0]
    assert fit(learn, cb) == len(dls.train)                                  # every training batch mixed
    assert learn.loss_func is lf and cb.yb1 is None                          # loss never replaced, last batch let go
    assert np.isfinite(learn.recorder.losses).all() and np.isfinite(learn.recorder.values[-1]).all()
    assert learn.recorder.values[-1][1] < loss_before                         # the valid loss went down
    preds, targs = learn.get_preds()
    digit = preds[0] if isinstance(preds, tuple) else preds[:, :10]
    if kind != 'multi_label': assert torch.allclose(digit.sum(1), torch.ones(len(digit)), atol=1e-4) # probabilities
    else: assert 0 <= preds.min() and preds.max() <= 1
    # chance is 0.1 (BCE's 12 labels learn slowest: 0.26-0.6 in one epoch)
    assert (digit.argmax(1).cpu() == VALID_Y).float().mean() > 0.2

@pytest.mark.parametrize('lf',
                         [CrossEntropyLossFlat(), LabelSmoothingCrossEntropyFlat(eps=0.1), FocalLossFlat(gamma=2.)],
                         ids=['ce', 'ls', 'focal'])
@pytest.mark.parametrize('mode', ['batch', 'elem'])
def test_same_loss_and_images_as_fastai_mixup(lf, mode):
    """For a fixed λ and permutation, compkit's mixed images and loss are fastai's `MixUp`'s (per image λ, or one for
    the batch)"""
    x, y = TensorImage(torch.randn(8, 1, 16, 16)), TensorCategory(torch.randint(0, 10, (8,)))
    lam = torch.rand(8) * 0.5 + 0.5 if mode == 'elem' else torch.full((8,), 0.7) # fastai keeps max(λ, 1-λ)
    perm, model = torch.randperm(8), SmallNet(10)
    fcb = FastaiMixUp()
    learn = Learner(dls_(TensorCategory(D.y)), model, loss_func=lf, cbs=fcb)
    learn.xb, learn.yb, learn.training = (x,), (y,), True
    fcb.before_train()
    with mock.patch.object(fcb.distrib, 'sample', return_value=lam), mock.patch('torch.randperm', return_value=perm):
        fcb.before_batch()
    cb = MixUp(mode=mode)
    k = 8 if mode == 'elem' else 1
    cb.draw = lambda x: (perm, lam[:k].view(k, 1, 1, 1), lam[:k])
    xm, ym, cb.yb1, cb.lam = cb.mix(x, (y,))
    assert torch.allclose(xm, learn.xb[0], atol=1e-6)
    model.eval()
    assert torch.allclose(cb.mixed_loss(lf, model(xm), ym), learn.loss_func(model(learn.xb[0]), *learn.yb), atol=1e-6)

def test_predict_interpret_and_export_after_mixing(tmp_path):
    learn = Learner(DeviceDataLoaders.from_tensorset(D, bs=64, seed=0), SmallNet(10), loss_func=CrossEntropyLossFlat(),
                    metrics=accuracy)
    cb = MixUpCutMix(); learn.add_cb(cb)
    fit(learn, cb, epochs=2)
    preds, targs = learn.get_preds()
    label, idx, probs = learn.predict(D.x[D.valid_idx[0]])
    assert torch.allclose(probs, preds[0],
                          atol=1e-5) and probs.sum() == pytest.approx(1, abs=1e-5) and label == str(D.vocab[int(idx)])
    cm = ClassificationInterpretation.from_learner(learn).confusion_matrix()
    assert cm.sum() == len(D.valid_idx)
    assert np.trace(cm) / cm.sum() == pytest.approx(float(learn.validate()[1]), abs=1e-6)
    learn.export(tmp_path/'l.pkl')
    assert torch.allclose(load_learner(tmp_path/'l.pkl').predict(D.x[D.valid_idx[0]])[2], probs, atol=1e-5)

def test_with_gradient_accumulation():
    class Steps(Callback):
        def before_fit(self): self.n = 0
        def after_step(self): self.n += 1
    dls = dls_(TensorCategory(D.y))
    learn = Learner(dls, SmallNet(10), loss_func=CrossEntropyLossFlat(),
                    cbs=[GradientAccumulation(n_acc=128), steps := Steps()])
    cb = CutMix(); learn.add_cb(cb)
    assert fit(learn, cb, fit_fn='fit') == len(dls.train)
    assert steps.n == len(dls.train) // 2                                     # one step per two mixed batches
    assert np.isfinite(learn.recorder.losses).all()

class CPUAutocast(Callback):
    "bfloat16 autocast on the CPU, where fastai's `MixedPrecision` runs it on CUDA only"
    order = MixedPrecision.order
    def before_batch(self): self.ctx = torch.autocast('cpu', dtype=torch.bfloat16); self.ctx.__enter__()
    def after_pred(self): self.pred_dtype, self.learn.pred = self.pred.dtype, to_float(self.pred)
    def after_loss(self): self.ctx.__exit__(None, None, None)

def test_with_cpu_bf16_autocast():
    # a short epoch: bf16 convolutions are slow on CPUs without bf16 units
    sub = torch.cat([torch.arange(256), D.valid_idx[:64]])
    learn = Learner(DeviceDataLoaders.from_tensors(D.x[sub], D.y[sub], valid_idx=range(256, 320), bs=64, seed=0,
                                                   device='cpu'), SmallNet(10),
                    loss_func=CrossEntropyLossFlat(), cbs=(ac := CPUAutocast()))
    cb = MixUpCutMix(mode='elem'); learn.add_cb(cb)
    # the batch is mixed in float32, before autocast
    assert cb.order < ac.order
    assert fit(learn, cb, fit_fn='fit') == 4
    assert ac.pred_dtype == torch.bfloat16 and np.isfinite(learn.recorder.losses).all()

@pytest.mark.cuda # fp16 mixed precision needs CUDA
def test_with_to_fp16_on_cuda():
    dls = dls_(TensorCategory(D.y), TensorCategory(D.y % 2), device='cuda')
    learn = Learner(dls, SmallNet(10, 2),
                    loss_func=MultiHeadLoss([CrossEntropyLossFlat(), CrossEntropyLossFlat()])).to_fp16()
    cb = MixUpCutMix(mode='elem'); learn.add_cb(cb)
    assert fit(learn, cb) == len(dls.train)
    assert np.isfinite(learn.recorder.losses).all() and learn.loss_func.__class__ is MultiHeadLoss

def test_off_in_lr_find_and_get_preds():
    dls = dls_(TensorCategory(D.y))
    learn = Learner(dls, SmallNet(10), loss_func=CrossEntropyLossFlat())
    cb = MixUp(); learn.add_cb(cb)
    with mock.patch.object(cb, 'draw', wraps=cb.draw) as draw, learn.no_bar(), learn.no_logging():
        learn.lr_find(num_it=5, show_plot=False)
        assert draw.call_count == 0                                           # lr_find trains on clean batches
        learn.fit(1, 1e-3)
        assert draw.call_count == len(dls.train)                              # and the next fit mixes again
        # the training set, through the training loader's transforms
        inp, preds, targs = learn.get_preds(ds_idx=0, with_input=True)
        assert draw.call_count == len(dls.train)
    clean = torch.cat([xb for xb, _ in dls.train.new(shuffle=False, drop_last=False)])
    assert torch.equal(inp, clean.cpu())

def test_state_restored_after_cancelled_or_failed_fit():
    class Stop(Callback):
        def __init__(self, exc): self.exc = exc
        def after_loss(self):
            if self.iter == 3: raise self.exc
    dls = dls_(TensorCategory(D.y))
    lf = CrossEntropyLossFlat()
    for exc in (CancelFitException(), RuntimeError('out of memory')):
        learn = Learner(dls, SmallNet(10), loss_func=lf, cbs=Stop(exc))
        cb = MixUpCutMix(); learn.add_cb(cb)
        with mock.patch.object(cb, 'draw', wraps=cb.draw) as draw, learn.no_bar(), learn.no_logging():
            try: learn.fit(1)
            except RuntimeError: pass
            assert draw.call_count == 4
        # never replaced: even an error that fastai sends no event for leaves it as it was
        assert learn.loss_func is lf
        if isinstance(exc, CancelFitException): assert cb.lam is None and cb.yb1 is None # the last batch let go
        learn.remove_cb(learn.stop)
        assert fit(learn, cb, fit_fn='fit') == len(dls.train)                  # usable again
        assert cb.lam is None and cb.yb1 is None

def test_stop_at_trains_the_last_epochs_on_clean_data():
    dls = dls_(TensorCategory(D.y))
    for stop_at in (1, 0.5):
        learn = Learner(dls, SmallNet(10), loss_func=CrossEntropyLossFlat())
        cb = MixUp(stop_at=stop_at); learn.add_cb(cb)
        assert fit(learn, cb, epochs=2) == len(dls.train)                     # the first of two epochs only

def test_works_on_a_plain_fastai_learner(tmp_path):
    for i in range(60):
        (tmp_path/str(int(D.y[i]))).mkdir(exist_ok=True)
        Image.fromarray(D.x[i, 0].numpy()).convert('RGB').save(tmp_path/str(int(D.y[i]))/f'{i}.png')
    fdls = ImageDataLoaders.from_folder(tmp_path, valid_pct=0.25, seed=0, item_tfms=Resize(16), bs=8, num_workers=0)
    learn = Learner(fdls, SmallNet(fdls.c, c_in=3), metrics=accuracy)
    cb = MixUpCutMix(mode='elem'); learn.add_cb(cb)
    assert fit(learn, cb, fit_fn='fit') == len(fdls.train)
    assert np.isfinite(learn.recorder.losses).all()

def test_refuses_boxes_and_unreducible_losses():
    learn = Learner(dls_(TensorBBox(torch.rand(len(D.x), 4) * 16)), SmallNet(4), loss_func=MSELossFlat())
    lf = learn.loss_func
    learn.add_cb(MixUp())
    with pytest.raises(ValueError, match='target 0 of the batch is a TensorBBox'), learn.no_bar(), learn.no_logging():
        learn.fit(1)
    assert learn.loss_func is lf
    learn = Learner(dls_(TensorCategory(D.y)), SmallNet(10), loss_func=lambda p, y: F.cross_entropy(p, y),
                    cbs=MixUp(mode='elem'))
    with pytest.raises(ValueError, match="mode='batch'"), learn.no_bar(), learn.no_logging(): learn.fit(1)

def test_batch_draws_are_seeded_on_the_host():
    "Per batch, λ, the box and the choice come from the callback's own seeded host generator: one seed, one fit"
    class Lams(Callback):
        order = MixUpCutMix.order + 1
        def before_fit(self): self.lams = []
        def before_batch(self):
            if self.training: lam = self.learn.mix_up_cut_mix.lam; self.lams.append((type(lam).__name__, lam))
    def run(seed):
        seed_everything(0)                                                     # the same init and loader order
        learn = Learner(dls_(TensorCategory(D.y)), SmallNet(10), loss_func=CrossEntropyLossFlat(),
                        cbs=[MixUpCutMix(seed=seed), Lams()])
        with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-2)
        return learn.lams.lams, [p.detach().clone() for p in learn.model.parameters()]
    (l1, w1), (l2, w2), (l3, _) = run(5), run(5), run(6)
    assert l1 == l2 and all(torch.allclose(a, b, atol=1e-4) for a, b in zip(w1, w2)) # reproducible (GPU atomics aside)
    assert l1 != l3 and {t for t, _ in l1} == {'float'}  # another seed, other draws; λ a host number
    assert len({round(v, 6) for _, v in l1}) == len(l1) == len(dls_(TensorCategory(D.y)).train)

@pytest.mark.parametrize('mixer', [MixUp, CutMix])
def test_regression_targets_are_refused_not_blended(mixer):
    "issue 20: boxes as plain floats (fastai's RegressionBlock) were blended as soft labels, without a word"
    boxes = torch.rand(len(D.y), 2) * 8; boxes = torch.cat([boxes, boxes + 4], 1) # xyxy pixels of a 16 px image
    learn = Learner(dls_(boxes), SmallNet(4), loss_func=MSELossFlat(), cbs=mixer())
    with learn.no_bar(), learn.no_logging(), pytest.raises(ValueError, match='regression targets'): learn.fit(1)
    soft = F.one_hot(D.y, 10).float() * 0.9 + 0.01 # soft labels in [0, 1] are what a mix is for
    learn = Learner(dls_(soft), SmallNet(10), loss_func=nn.CrossEntropyLoss(), cbs=mixer())
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
