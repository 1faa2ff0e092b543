"""Box localization: a real fastai fit on digit_boxes, the loss switch with fastai's callbacks, export, bad labels,
boxes moving with augmented images."""
import numpy as np, pytest, torch
import torchvision.ops as tvo
from torch import nn
from fastai.callback.tracker import SaveModelCallback, EarlyStoppingCallback
from fastai.callback.progress import CSVLogger
from fastai.callback.core import Callback
from fastai.callback.training import GradientAccumulation, ShortEpochCallback
from fastai.learner import Metric
from fastai.learner import load_learner
from fastai.layers import ConvLayer
from fastai.vision.core import TensorBBox
from fastai.torch_core import TensorImage
from compkit.datasets import digit_boxes
from compkit.data import DeviceDataLoaders
from compkit.augment import (RandomPadCrop, RandomFlip, RandomResizedCrop, RandomAffine, RandomLighting,
                             RandomRotate90, RandomPerspective)
from compkit.box.data import check_boxes, fit_boxes
from compkit.box.model import box_learner
from compkit.box.ops import paired_box_iou
from compkit.schedule.progressive import ProgressiveResize
from compkit.box.losses import scaled_iou_loss, scaled_center_loss, CompositeBoxLoss, BoxLossSwitch, AccIoU

D = digit_boxes(32, n=400, seed=0)

def dls_(**kw): return DeviceDataLoaders.from_boxes(D.x, D.y, **{'valid_idx': D.valid_idx, 'bs': 64, 'seed': 0, **kw})
def small_body():
    return nn.Sequential(ConvLayer(1, 16, stride=2), ConvLayer(16, 32, stride=2), ConvLayer(32, 64, stride=2))

def test_timm_learner_trains_one_epoch_and_metrics_match_torchvision():
    learn = box_learner(dls_(batch_tfms=[RandomPadCrop(2, 'zeros')]), 'resnet10t')
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(1, 3e-3)
    assert all(np.isfinite(l) for l in learn.recorder.losses)
    with learn.no_bar():
        loss, miou, acc50, acc75 = learn.validate()
        preds, targs = learn.get_preds()
    assert np.isfinite(loss) and preds.isfinite().all()
    assert torch.equal(targs, D.y[D.valid_idx])                     # pixels of the 32 px images, in order
    iou = tvo.box_iou(preds, targs).diagonal()
    assert miou == pytest.approx(iou.mean().item(), abs=1e-5)
    assert acc50 == pytest.approx((iou >= 0.5).float().mean().item(),
                                  abs=1e-6) and acc75 == pytest.approx((iou >= 0.75).float().mean().item(), abs=1e-6)

class LossLog(Callback):
    "Record the loss function each training phase runs with"
    order = BoxLossSwitch.order + 1
    def before_fit(self): self.used = []
    def before_train(self): self.used.append(type(self.learn.loss_func).__name__)

def test_switch_trains_with_the_composite_and_composes_with_fastai_callbacks(tmp_path):
    learn = box_learner(dls_(), small_body(), path=tmp_path)
    l1, log = learn.loss_func, LossLog()
    sw = BoxLossSwitch(thresh=None, at_epoch=1)
    cbs = [sw, log, SaveModelCallback(monitor='mean_iou', every_epoch=True),
           EarlyStoppingCallback(monitor='mean_iou', patience=5), CSVLogger()]
    with learn.no_bar(), learn.no_logging(): learn.fit(3, 3e-3, cbs=cbs)
    assert log.used == ['BaseLoss', 'CompositeBoxLoss', 'CompositeBoxLoss'] and sw.switch_epoch == 1
    assert learn.loss_func is l1                                  # restored
    assert sorted(p.name for p in (tmp_path/'models').iterdir()) == ['model_0.pth', 'model_1.pth', 'model_2.pth']
    assert len((tmp_path/'history.csv').read_text().splitlines()) == 4
    # the last epoch's valid loss is the composite's (scaled IoU + L1) on the valid set, not L1's
    valid_loss = learn.recorder.values[-1][1]                     # (read before `get_preds`, which resets the Recorder)
    with learn.no_bar(): preds, targs = learn.get_preds()
    assert valid_loss == pytest.approx(CompositeBoxLoss()(preds, targs).item(), rel=1e-4)
    assert valid_loss != pytest.approx(l1(preds, targs).item(), rel=1e-2)

def test_switch_by_threshold_and_not_in_lr_find():
    learn = box_learner(dls_(), small_body())
    sw = BoxLossSwitch(thresh=0.)  # any mIoU reaches 0: switch after the first epoch
    with learn.no_bar(), learn.no_logging(): learn.fit(2, 3e-3, cbs=sw)
    assert sw.switch_epoch == 1
    sw0, log = BoxLossSwitch(thresh=None, at_epoch=0), LossLog()
    with learn.added_cbs([sw0, log]), learn.no_bar(), learn.no_logging(): learn.lr_find(num_it=5, show_plot=False)
    assert sw0.switch_epoch is None and set(log.used) == {'BaseLoss'}
    kept = BoxLossSwitch(thresh=None, at_epoch=1)
    with learn.no_bar(), learn.no_logging(): learn.fit(2, 3e-3, cbs=kept)
    # attached for good: validate and get_preds run the fit events but train nothing
    learn.add_cb(kept)
    with learn.no_bar(): learn.validate(); learn.get_preds()
    assert kept.switch_epoch == 1 and type(learn.loss_func).__name__ == 'BaseLoss'
    learn.remove_cb(kept); learn.metrics = []
    with pytest.raises(ValueError, match='mean_iou'):
        with learn.no_bar(), learn.no_logging(): learn.fit(1, cbs=BoxLossSwitch())

class Scripted(Metric):
    """A metric named `name` whose value in the `e`-th validation is `values[e]`: the switch's threshold, tested away
    from 0"""
    def __init__(self, name, values): self._name, self.values, self.e = name, values, -1
    def reset(self): self.e += 1
    def accumulate(self, learn): pass
    @property
    def value(self): return self.values[self.e]
    @property
    def name(self): return self._name

@pytest.mark.parametrize('thresh, used', [(0.7, ['BaseLoss'] * 3 + ['CompositeBoxLoss']),
                                          (0.74, ['BaseLoss'] * 3 + ['CompositeBoxLoss']), (0.76, ['BaseLoss'] * 4)])
def test_switch_the_epoch_after_the_metric_reaches_thresh(thresh, used):
    learn = box_learner(dls_(), small_body(), metrics=Scripted('mean_iou', [0.3, 0.6, 0.75, 0.8]))
    log = LossLog()
    with learn.no_bar(), learn.no_logging(): learn.fit(4, 3e-3, cbs=[BoxLossSwitch(thresh=thresh), log])
    assert log.used == used

def test_an_interrupted_fit_puts_the_loss_back():
    learn = box_learner(dls_(), small_body())
    l1 = learn.loss_func
    class Stop(Callback):
        order = BoxLossSwitch.order + 1
        def after_batch(self):
            if self.epoch == 1 and self.training: raise KeyboardInterrupt()
    with learn.no_bar(), learn.no_logging(), pytest.raises(KeyboardInterrupt):
        learn.fit(3, 3e-3, cbs=[BoxLossSwitch(thresh=None, at_epoch=1), Stop()])
    assert learn.loss_func is l1

@pytest.mark.parametrize('fastai_cb', [lambda: GradientAccumulation(256), lambda: ShortEpochCallback(0.5)],
                         ids=['grad_accum', 'short_epoch'])
def test_fastai_control_flow_keeps_the_switch_to_the_fit_end(fastai_cb):
    """GradientAccumulation's CancelBatchException and ShortEpochCallback's CancelTrainException go on with the fit:
    every batch from the switch on trains with the composite, and the loss comes back at the end"""
    learn = box_learner(dls_(), small_body())
    l1 = learn.loss_func
    class BatchLosses(Callback):
        order = BoxLossSwitch.order + 1
        def before_fit(self): self.used = []
        def before_batch(self):
            if self.training: self.used.append((self.epoch, type(self.learn.loss_func).__name__))
    sw, log = BoxLossSwitch(thresh=None, at_epoch=1), BatchLosses()
    with learn.no_bar(), learn.no_logging(): learn.fit(3, 3e-3, cbs=[sw, fastai_cb(), log])
    assert {e for e, _ in log.used} == {0, 1, 2} and sw.switch_epoch == 1
    assert all(name == ('BaseLoss' if e == 0 else 'CompositeBoxLoss') for e, name in log.used)
    assert learn.loss_func is l1 and '_fit_exits' not in learn.__dict__

@pytest.mark.parametrize('make, msg', [(lambda: BoxLossSwitch(thresh=90), 'thresh'),
                                       (lambda: BoxLossSwitch(thresh=None, at_epoch=-1), 'at_epoch'),
                                       (lambda: AccIoU(1.5), 'thresh')])
def test_thresholds_outside_0_1_are_refused(make, msg):
    with pytest.raises(ValueError, match=msg): make()

def test_export_and_predict_on_a_new_size(tmp_path):
    learn = box_learner(dls_(), small_body())
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(2, 1e-2)
    learn.export(tmp_path/'box.pkl')
    learn2 = load_learner(tmp_path/'box.pkl')
    big = digit_boxes(48, n=4, seed=5)   # 48 px images: fitted to 32 px as at ingest
    with learn2.no_bar(): box, pred, _ = learn2.predict(big.x[0])
    assert isinstance(box, TensorBBox) and box.shape == (4,)
    with learn.no_bar(): p, _ = learn.get_preds(dl=learn.dls.test_dl(big.x))
    assert torch.allclose(pred, p[0], atol=1e-4)
    back = fit_boxes(p, 48, 32, inverse=True)      # in the 48 px image's pixels, for a submission
    assert torch.allclose(back, p * 1.5, atol=1e-4)

@pytest.mark.parametrize('bad,msg', [
    ((5, [0, 2], 'swap'), 'box 5 '), ((7, [1, 3], 'swap'), 'box 7 '),
    ((3, [2], 'copy0'), 'box 3 '), ((9, [1], 'nan'), 'box 9 '), ((2, [3], 'inf'), 'box 2 '),
    ((11, [2], 'out'), 'box 11 ')])
def test_every_bad_label_is_refused_naming_its_row(bad, msg):
    i, cols, kind = bad
    y = D.y[:16].clone()
    if kind == 'swap': y[i, cols] = y[i, cols[::-1]]
    elif kind == 'copy0': y[i, 2] = y[i, 0]
    elif kind == 'nan': y[i, cols] = float('nan')
    elif kind == 'inf': y[i, cols] = float('inf')
    else: y[i, cols] = 33.
    with pytest.raises(ValueError, match=msg): DeviceDataLoaders.from_boxes(D.x[:16], y, valid_idx=[0])
    with pytest.raises(ValueError, match=msg): check_boxes(y, 32)

def box_masks(b, h, w):
    "uint8 images (N, 1, h, w), 255 inside each integer box"
    r, c, (x1, y1, x2, y2) = torch.arange(h)[:, None], torch.arange(w), b.long()[:, :, None, None].unbind(1)
    return TensorImage(((c >= x1) & (c < x2) & (r >= y1) & (r < y2))[:, None].to(torch.uint8) * 255)

def extents(masks, thresh):
    "The box around each mask's pixels above `thresh`, in continuous pixel coordinates (torchvision's is inclusive)"
    boxes = tvo.masks_to_boxes(masks[:, 0].as_subclass(torch.Tensor) > thresh)
    return boxes + torch.tensor([0., 0., 1., 1.], device=masks.device)

@pytest.mark.parametrize('tfms,tol',
                         [([RandomFlip(p=0.5)], 0), ([RandomFlip(p=0.5, dim=-2)], 0), ([RandomPadCrop(4, 'zeros')], 0),
                          ([RandomResizedCrop((0.4, 1.))], 1.01), ([RandomAffine(max_rotate=0., max_zoom=1.3)], 1.01),
                          ([RandomPadCrop(3, 'zeros'), RandomFlip(), RandomResizedCrop((0.5, 1.)), RandomLighting()],
                           1.01),
                          ([RandomRotate90(transpose=True)], 0), ([RandomPerspective(0.3, p=0.8)], 1.01),
                          ([RandomRotate90(), RandomPerspective(0.2), RandomFlip()], 1.01)])
def test_boxes_move_with_their_images_through_the_loader(tfms, tol):
    "Images that are their own box's mask: after augmentation on the device, every box is still its mask's extent"
    b = D.y.round()
    dls = DeviceDataLoaders.from_boxes(box_masks(b, 32, 32), b, valid_idx=D.valid_idx, bs=64, seed=1, normalize=False,
                                       batch_tfms=tfms)
    orig, moved = dls.train_ds.ys[0], 0
    # in order, to compare with the unaugmented boxes
    for i, (xb, yb) in enumerate(dls.train.new(shuffle=False, drop_last=False)):
        assert type(yb) is TensorBBox and ((yb >= 0) & (yb <= 32)).all()
        assert (yb[:, 2] - yb[:, 0] > 0).all() and (yb[:, 3] - yb[:, 1] > 0).all()
        assert torch.allclose(extents(xb, 0.5 if xb.is_floating_point() else 127), yb, atol=tol)
        moved += (yb != orig[i * 64:(i + 1) * 64]).any(1).sum().item()
    assert moved > 0.2 * len(orig)

class BoxesAtSize(Callback):
    "After `ProgressiveResize`, record each training batch's size and how far its boxes are from their resized masks"
    order = ProgressiveResize.order + 1
    def before_fit(self): self.sizes, self.err = [], []
    def before_batch(self):
        if not self.training: return
        xb, yb = self.xb[0], self.yb[0]
        assert type(yb) is TensorBBox
        self.sizes.append(xb.shape[-1]); self.err.append((extents(xb, 0.5) - yb).abs().max().item())

def test_progressive_resize_trains_on_boxes():
    "Small images first, on boxes: each box stays its resized mask's extent, and the fit trains"
    b = D.y.round()
    dls = DeviceDataLoaders.from_boxes(box_masks(b, 32, 32), b, valid_idx=D.valid_idx, bs=64, seed=0, normalize=False)
    learn, watch = box_learner(dls, small_body(), pool="avg"), BoxesAtSize() # a head for any size
    with learn.no_bar(), learn.no_logging(): learn.fit(2, 1e-3, cbs=[ProgressiveResize({0: 16, 1: 24}), watch])
    assert set(watch.sizes) == {16, 24} and watch.sizes[0] == 16 and watch.sizes[-1] == 24
    assert max(watch.err) <= 1.01                      # to a pixel: the antialiased resize blurs the mask's edge
    assert all(np.isfinite(l) for l in learn.recorder.losses)

def test_flip_twice_is_identity_and_pad_crop_moves_by_the_shift():
    x, b = TensorImage(box_masks(D.y[:64].round(), 32, 32)), TensorBBox(D.y[:64].round())
    for dim in (-1, -2):
        f = RandomFlip(p=1., dim=dim)
        x2, b2 = f(f((x, b), split_idx=0), split_idx=0)
        assert torch.equal(x2, x) and torch.equal(b2, b)
    t = RandomPadCrop(5, 'zeros')
    t.min_visible = 0. # no item skipped: every box moves by exactly its shift, clipped to the image
    _, b3 = t((x, b), split_idx=0)
    dy, dx = t.shift.T.float()
    assert torch.equal(b3, (b - torch.stack([dx, dy, dx, dy], 1)).clamp(0, 32))

@pytest.mark.parametrize('pred', [[5., 5., 5., 20.], [20., 5., 4., 20.], [60., 60., 70., 70.], [20., 30., 4., 2.],
                                  [6e4, -6e4, -6e4, 6e4]])
def test_degenerate_predictions_give_finite_losses_and_gradients(pred):
    t = torch.tensor([[4., 4., 20., 20.]])
    for dtype in (torch.float32, torch.float16):
        p = torch.tensor([pred], dtype=dtype, requires_grad=True)
        loss = scaled_iou_loss(p, t, 'mean') + scaled_center_loss(p, t,
                                                                  'mean') + CompositeBoxLoss(center_weight=1.)(p, t)
        loss.backward()
        assert loss.isfinite() and p.grad.isfinite().all()
        assert 0 <= paired_box_iou(p.detach(), t).item() <= 1

def test_scaled_iou_loss_gradcheck_float64():
    g = torch.Generator().manual_seed(3)
    t = torch.rand(30, 2, generator=g, dtype=torch.float64) * 20
    t = torch.cat([t, t + 5 + torch.rand(30, 2, generator=g, dtype=torch.float64) * 20], 1)
    p = (t + torch.randn(30, 4, generator=g, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda p: scaled_iou_loss(p, t, 'sum'), (p,))
    assert torch.autograd.gradcheck(lambda p: CompositeBoxLoss(center_weight=0.5)(p, t), (p,))
