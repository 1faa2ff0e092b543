"""GPU-only checks (issue 18), marked `cuda`: `make test` skips them on a machine without a GPU, `make test-cuda`
fails there. Mixed precision with MixUp/CutMix, channels_last, the host-storage path and its prefetch, no host
synchronisation."""
from contextlib import contextmanager
import numpy as np, pytest, torch
from torch import nn
from fastai.vision.all import Flatten
from fastai.callback.channelslast import ChannelsLast
import compkit.core, compkit.data
from compkit.core import get_device, seed_everything
from compkit.datasets import digits, digit_boxes
from compkit.data import DeviceDataLoaders
from compkit.augment import RandomPadCrop, RandomFlip, RandomResizedCrop, RandomAffine, RandomLighting
from compkit.learner import timm_learner
from compkit.classify.mixup import MixUp, CutMix, MixUpCutMix
from compkit.schedule.ema import EMA
import compkit.box.data, compkit.predict.tta # DeviceDataLoaders.from_boxes, Learner.tta10

pytestmark = pytest.mark.cuda
D, B = digits(16), digit_boxes(32, n=200, seed=0)

def augs(): return [RandomPadCrop(2), RandomFlip(), RandomResizedCrop((0.5, 1.)), RandomAffine(), RandomLighting()]
def dls_(**kw): return DeviceDataLoaders.from_tensorset(D, **{'bs': 64, 'seed': 0, 'device': 'cuda', **kw})
def small_cnn():
    return nn.Sequential(nn.Conv2d(1, 32, 3, 1, 1), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1),
                         nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(256, 10))
def fit(learn, n=1, lr=1e-2):
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(n, lr)

@contextmanager
def no_sync():
    "Any host-device synchronisation inside raises (`torch.cuda.set_sync_debug_mode('error')`)"
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try: yield
    finally: torch.cuda.set_sync_debug_mode('default')

def test_the_default_device_is_the_gpu():
    "`make test-cuda` runs every test and notebook with COMPKIT_DEVICE=cuda: loaders and their models on the GPU"
    assert get_device().type == 'cuda'
    dls = DeviceDataLoaders.from_tensorset(D, seed=0)
    learn = timm_learner(dls, small_cnn())
    assert dls.train_ds.x.is_cuda and next(learn.model.parameters()).is_cuda

def test_what_fastai_reads_on_the_host_is_on_the_host():
    dls = dls_(batch_tfms=augs())
    learn = timm_learner(dls, small_cnn())
    fit(learn)
    for dl in (dls.train, dls.valid, dls.test_dl(D.x[:10])): assert dl.get_idxs().device.type == 'cpu'
    with learn.no_bar():
        p, t = learn.get_preds()
        label, idx, probs = learn.predict(D.x[D.valid_idx[0]])
    assert p.device.type == t.device.type == probs.device.type == 'cpu' and torch.equal(t, D.y[D.valid_idx])
    assert torch.allclose(probs, p[0], atol=1e-4)

@pytest.mark.parametrize('precision,cb', [('fp16', MixUp()), ('bf16', CutMix()), ('fp16', MixUpCutMix(mode='elem')),
                                          ('bf16', MixUpCutMix())],
                         ids=['fp16-mixup', 'bf16-cutmix', 'fp16-elem', 'bf16-batch'])
def test_mixed_precision_with_mixing(precision, cb):
    learn = timm_learner(dls_(batch_tfms=augs()), small_cnn(), cbs=cb)
    learn = learn.to_fp16() if precision == 'fp16' else learn.to_bf16()
    fit(learn, 3)
    assert np.isfinite(learn.recorder.losses).all() and all(p.dtype == torch.float32 for p in learn.model.parameters())
    with learn.no_bar(): assert learn.validate()[1] > 0.5 # it learns: 10 classes

def test_channels_last_fit_predict_and_tta10():
    "Models that flatten with `view` (fastai's `Flatten`), channels_last; tta10 sizes its chunks on one view first"
    # pooled to 1x1: fastai's `Flatten` cannot `view` a channels_last map of more pixels (on a CPU too)
    model = nn.Sequential(nn.Conv2d(1, 32, 3, 1, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), Flatten(), nn.Linear(64, 10))
    learn = timm_learner(dls_(batch_tfms=augs()), model, cbs=[ChannelsLast(), MixUp()])
    fit(learn, 2)
    mlp = timm_learner(learn.dls, nn.Sequential(Flatten(), nn.Linear(256, 10)), cbs=ChannelsLast()) # on the pixels
    fit(mlp)
    for l in (learn, mlp):
        with l.no_bar():
            p, t = l.get_preds()
            pt, tt = l.tta10()                           # chunk=None: measured on the GPU with one view
            p4, _ = l.tta10(chunk=4)
        assert p.shape == pt.shape and torch.equal(t, tt) and torch.allclose(pt, p4, atol=1e-4)

def test_host_storage_gives_the_batches_of_the_device_storage(monkeypatch):
    "A tiny `max_device_bytes`: the images stay on the host, each batch is pinned and copied ahead, `non_blocking`"
    dev, host = dls_(seed=3, batch_tfms=augs()), dls_(seed=3, batch_tfms=augs(), max_device_bytes=1000)
    assert (dev.storage, host.storage) == ('device', 'host')
    assert not host.train_ds.x.is_cuda and host.train_ds.ys[0].is_cuda
    copies, to_device = [], compkit.data.to_device
    def spy(b, device, non_blocking=False):
        copies.append((non_blocking, [t.is_pinned() for t in b if not t.is_cuda]))
        return to_device(b, device, non_blocking)
    monkeypatch.setattr(compkit.data, 'to_device', spy)
    for _ in range(2): # two epochs: the order and the augmentations' draws go on in step
        seed_everything(0); a = [tuple(t.clone() for t in b) for b in dev.train] # the same augmentation draws for both
        seed_everything(0); h = [tuple(t.clone() for t in b) for b in host.train]
        assert len(a) == len(h) == len(dev.train)
        for (xa, ya), (xh, yh) in zip(a, h): assert xh.is_cuda and torch.equal(xa, xh) and torch.equal(ya, yh)
    assert len(copies) == 2 * len(host.train) and all(nb and pinned and all(pinned) for nb, pinned in copies)

def test_a_loader_pass_never_waits_for_the_gpu():
    boxes = DeviceDataLoaders.from_boxes(B.x, B.y, valid_idx=B.valid_idx, seed=0, device='cuda', batch_tfms=augs()[:4])
    for dls in (dls_(batch_tfms=augs()), dls_(batch_tfms=augs(), max_device_bytes=1000), boxes):
        for _ in dls.train: pass # the first pass makes the transforms' constants on the GPU, once
        with no_sync():
            for _ in range(2):
                for _ in dls.train: pass

@pytest.mark.parametrize('cb', [MixUp(), CutMix(mode='elem'), MixUpCutMix(), MixUpCutMix(mode='elem')],
                         ids=['mixup', 'cutmix-elem', 'both-batch', 'both-elem'])
def test_a_fit_step_with_mixing_never_waits_for_the_gpu(cb):
    "The mixer's events under `set_sync_debug_mode('error')` in a real fit (fastai's own logging reads the loss back)"
    learn = timm_learner(dls_(batch_tfms=augs()), small_cnn(), cbs=cb)
    fit(learn) # the Beta distributions' parameters are made on the GPU in the first batch, once
    for name in ('before_batch', 'after_loss'):
        def checked(f=getattr(cb, name)):
            with no_sync(): return f()
        setattr(cb, name, checked)
    fit(learn)
    assert np.isfinite(learn.recorder.losses).all()

@pytest.mark.parametrize('cbs', [[], [MixUp()], [EMA(0.9)]], ids=['plain', 'mixup', 'ema'])
def test_no_batch_of_a_fit_waits_for_the_gpu(cbs, monkeypatch):
    """Each batch of a fit, training and validation, under `set_sync_debug_mode('error')`: fastai's running loss and
    metrics stay on the GPU (read once an epoch), the optimizer is fused, the bar reads nothing in a log"""
    monkeypatch.setattr(compkit.core, 'interactive', lambda file=None: False) # `pytest -s` in a terminal: as in a log
    learn = timm_learner(dls_(batch_tfms=augs()), small_cnn(), cbs=cbs)
    fit(learn) # constants made on the GPU in the first batch, once
    def checked(*args, one_batch=learn.one_batch):
        with no_sync(): return one_batch(*args)
    learn.one_batch = checked
    with learn.no_logging(): learn.fit_one_cycle(2, 1e-2)
    assert np.isfinite(learn.recorder.losses).all() and len(learn.recorder.values) == 2
