"""The host/device contract, checked without a GPU (issue 18). PyTorch's `meta` device (shapes, no data) stands in
for a GPU: a device tensor handed to fastai's host-side code, a CPU tensor mixed into a device batch and a model left
on the CPU show there. `HostReads` shows a host read in a per-batch path (on a GPU, a wait for the device) on the CPU.
The same checks on a real GPU are in `test_cuda.py`."""
import os, traceback
from collections import Counter
import pytest, torch, torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
import torch.utils._pytree as pytree
from fastai.torch_core import tensor, nested_reorder
from fastai.learner import _ConstantFunc
from fastai.callback.core import Callback
from fastai.layers import Flatten
from fastai.callback.channelslast import ChannelsLast
from fastai.callback.training import GradientAccumulation
import compkit.core, compkit.data
from compkit.classify import mixup
from compkit.datasets import digits, digit_boxes
from compkit.data import DeviceDataLoaders
from compkit.retrieval.sampling import PKSampler
from compkit.augment import RandomPadCrop, RandomFlip, RandomResizedCrop, RandomAffine, RandomLighting
from compkit.learner import timm_learner
from compkit.classify.mixup import MixUp, CutMix, MixUpCutMix
from compkit.predict.tta import TenCrop, _chunk
from compkit.schedule.ema import EMA
from compkit.schedule.swa import SWA
from compkit.schedule.tempering import Tempering
from compkit.schedule.progressive import ProgressiveResize
from compkit.box.model import box_learner
from compkit.retrieval.heads import metric_learner, ArcFace
from _nets import tiny_cnn
import compkit.box.data # DeviceDataLoaders.from_boxes

D, B = digits(16), digit_boxes(32, n=200, seed=0)
TRAIN_Y = D.y[~torch.isin(torch.arange(len(D.y)), D.valid_idx)] # the host's copy of the training labels
def augs(): return [RandomPadCrop(2), RandomFlip(), RandomResizedCrop((0.5, 1.)), RandomAffine(), RandomLighting()]
def meta_dls(**kw): return DeviceDataLoaders.from_tensorset(D, **{'device': 'meta', 'seed': 0, 'bs': 64, **kw})
def box_dls(**kw): return DeviceDataLoaders.from_boxes(B.x, B.y, valid_idx=B.valid_idx, seed=0, batch_tfms=augs()[:4],
                                                      **kw)

def on_host(o) -> bool:
    "Whether `o` is what host-side code may receive: numbers, Python sequences, and tensors only on the CPU"
    if torch.is_tensor(o): return o.device.type == 'cpu'
    return all(map(on_host, o)) if isinstance(o, (tuple, list)) else True

LOADERS = {'train': lambda: meta_dls().train, 'valid': lambda: meta_dls().valid,
           'new': lambda: meta_dls().train.new(shuffle=False), 'oversampled': lambda: meta_dls(oversample=True).train,
           'PK': lambda: meta_dls().train.new(bs=20, shuffle=True, drop_last=True, sampler=PKSampler(TRAIN_Y, 5, 4)),
           'test_dl': lambda: meta_dls().test_dl(D.x[:70]), 'host storage': lambda: meta_dls(max_device_bytes=0).train}

@pytest.mark.parametrize('kind', LOADERS)
def test_the_order_fastai_reorders_predictions_by_is_on_the_host(kind):
    "fastai's `get_preds` reads `dl.get_idxs()` once, runs the loader in that order, then reorders host predictions"
    dl = LOADERS[kind]()
    idxs = dl.get_idxs()
    assert on_host(idxs), f"{kind}: get_idxs() is on {idxs.device}; fastai indexes the predictions on the host with it"
    n = 0
    for b in dl.new(get_idxs=_ConstantFunc(idxs), drop_last=False): # as get_preds: the loader runs in the order read
        assert b[0].device.type == 'meta' and len(b) == (1 if kind == 'test_dl' else 2)
        n += len(b[0])
    assert n == len(idxs)
    res = nested_reorder(torch.arange(n), tensor(idxs).argsort()) # the predictions `to_detach` brought to the host
    assert on_host(res) and torch.equal(torch.as_tensor(idxs)[res], torch.as_tensor(idxs).sort().values)

def test_host_storage_draws_the_batches_the_device_storage_draws():
    "A set above `max_device_bytes` stays on the host, copied over a batch at a time, in the device-held set's order"
    dev, host = meta_dls(seed=3, batch_tfms=augs()), meta_dls(seed=3, max_device_bytes=0, batch_tfms=augs())
    assert (dev.storage, host.storage) == ('device', 'host') and host.train_ds.x.device.type == 'cpu'
    for _ in range(2): assert torch.equal(dev.train.get_idxs(), host.train.get_idxs()) # epoch after epoch
    n = 0
    for (xa, ya), (xb, yb) in zip(dev.train, host.train):
        assert xa.shape == xb.shape and {xa.device.type, ya.device.type, xb.device.type, yb.device.type} == {'meta'}
        n += 1
    assert n == len(dev.train) == len(host.train)

def test_prefetch_pins_the_host_tensors_only_and_copies_one_batch_ahead(monkeypatch):
    "Before its copy to a GPU a batch is pinned, its host part only: targets on the device are not (CUDA: cannot pin)"
    pinned, pin, pulled = [], torch.Tensor.pin_memory, []
    def spy(t):
        if t.device.type != 'cpu': return pin(t) # CUDA's "cannot pin 'torch.cuda.LongTensor'"
        pinned.append(t); return t
    monkeypatch.setattr(torch.Tensor, 'pin_memory', spy)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(compkit.data, 'to_device', lambda b, device, non_blocking=False: b) # no GPU to copy to
    x, y = torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.zeros(4, dtype=torch.long, device='meta')
    def batches():
        for i in range(3): pulled.append(i); yield x, y
    for i, b in enumerate(compkit.data._prefetch(batches(), 'cuda')):
        assert b[1] is y and len(pulled) == min(i + 2, 3) # batch i+1's copy is under way while batch i is used
    assert len(pinned) == 3 and all(p is x for p in pinned)

@pytest.mark.parametrize('boxes', [False, True])
def test_a_training_pass_on_the_device_stays_there(boxes):
    "The loader and every augmentation work on the batch's device: no CPU tensor mixed in, no device value read back"
    dls = box_dls(device='meta', bs=64) if boxes else meta_dls(batch_tfms=augs())
    for b in dls.train: assert {t.device.type for t in b} == {'meta'}

def test_a_learner_holds_its_model_where_its_loaders_are():
    "The model a `Learner` is given goes to the loaders' device: a batch can be fed to `learn.model` before any fit"
    dls = meta_dls()
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    learn = timm_learner(dls, model)
    assert next(learn.model.parameters()).device.type == 'meta'
    assert learn.model(dls.one_batch()[0]).shape == (64, 10)

# --- host reads: the CPU's stand-in for `torch.cuda.set_sync_debug_mode('error')` -----------------------------------

aten = torch.ops.aten
_READS = {aten._local_scalar_dense.default, aten.is_nonzero.default, aten.nonzero.default, aten.masked_select.default,
          aten.equal.default, aten.bincount.default, aten._unique2.default, aten.unique_consecutive.default,
          aten.lift_fresh.default} # the last: a tensor made from Python numbers, on a GPU a blocking copy to it
_COPIES = {aten._to_copy.default, aten.copy_.default}

def _devices(args, kwargs) -> set:
    "The device types an op reads from and writes to"
    ts = [a for a in pytree.tree_leaves((args, kwargs)) if torch.is_tensor(a)]
    return {t.device.type for t in ts} | ({torch.device(kwargs['device']).type} if kwargs.get('device') else set())

def _zeros(o):
    "`o` with its `meta` tensors (shapes, no data) replaced by zeros on the host"
    return torch.zeros(o.shape, dtype=o.dtype) if torch.is_tensor(o) and o.device.type == 'meta' else o

def _in_torch(file) -> bool: return f'{os.sep}torch{os.sep}' in file or file.endswith(f'fastai{os.sep}torch_core.py')

class HostReads(TorchDispatchMode):
    """Records the ops that make the host wait for a GPU: value reads (`.item()`, `if t`), value-sized results, copies
    between host and device; of `device`'s tensors only, if given. On PyTorch's `meta` device (shapes, no data) they
    read zeros: a whole fit runs there"""
    def __init__(self, device=None): super().__init__(); self.device, self.seen, self.sites = device, [], []
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # indexing by a boolean mask finds the mask's indices on the host
        mask = func.overloadpacket in (aten.index, aten.index_put, aten.index_put_) and any(
            i is not None and i.dtype == torch.bool for i in args[1])
        copy = func in _COPIES and len(_devices(args, kwargs)) > 1 and not kwargs.get('non_blocking')
        if not (func in _READS or mask or copy) or self.device not in {None, *_devices(args, kwargs)}:
            return func(*args, **kwargs)
        self.seen.append(f"{func.overloadpacket.__name__} at\n{''.join(traceback.format_stack(limit=8)[:-1])}")
        # the line that asked: outside torch and fastai's tensor subclasses
        caller = next(f for f in reversed(traceback.extract_stack()[:-1]) if not _in_torch(f.filename))
        self.sites.append(f'{func.overloadpacket.__name__} in {caller.filename}:{caller.lineno} ({caller.line})')
        to = torch.device(kwargs.get('device') or args[0].device).type if copy else 'meta' # where the result lies
        if 'meta' not in _devices(args, {}) or (copy and to == 'meta'): return func(*args, **kwargs)
        out = func(*pytree.tree_map(_zeros, args), **pytree.tree_map(_zeros, kwargs))
        return pytree.tree_map(lambda o: o.to(to) if torch.is_tensor(o) else o, out)

@pytest.mark.parametrize('boxes', [False, True])
def test_a_training_pass_reads_nothing_back(boxes):
    dls = box_dls(bs=64) if boxes else DeviceDataLoaders.from_tensorset(D, seed=0, bs=64, batch_tfms=augs())
    for _ in dls.train: pass # the first pass makes the transforms' constants on the device, once
    with HostReads() as reads:
        for _ in dls.train: pass
    assert not reads.seen, reads.seen[0]

@pytest.mark.parametrize('cb', [MixUp(), CutMix(), MixUpCutMix(), MixUp(mode='elem'), CutMix(mode='elem'),
                                MixUpCutMix(mode='elem')], ids=lambda cb: f'{type(cb).__name__}-{cb.mode}')
def test_mixing_reads_nothing_back(cb):
    "Per image, λ and the boxes are drawn on the device; per batch, on the host as Python numbers: no tensor to read"
    xb, yb = DeviceDataLoaders.from_tensorset(D, seed=0).one_batch()
    cb.mix(xb, (yb,)) # the first batch makes the Beta distributions' parameters on the device, once
    with HostReads() as reads:
        for _ in range(20): cb.mix(xb, (yb,))
    assert not reads.seen, reads.seen[0]

# --- channels_last on the CPU: the layouts a GPU run uses, where a `view` assuming NCHW strides fails ----------------

def test_tta10_measures_and_runs_the_layout_it_feeds():
    "`_auto_chunk` measures one view as the passes feed it: in the batch's layout, not a bare crop's strided slice"
    x = torch.rand(8, 3, 16, 16)
    tc = TenCrop((16, 16), 14, 8/7)
    xs = tc.rescale(x)
    with pytest.raises(RuntimeError, match='view size'): tc.crop(xs, 0).view(8, -1) # as fastai's `Flatten` does
    for views in (range(1), range(4)): assert _chunk(tc, xs, views).view(8 * len(views), -1).shape[1] == 3 * 14 * 14
    # channels_last batches give channels_last views: the layout the model trained on
    cl = tc.rescale(x.contiguous(memory_format=torch.channels_last))
    assert _chunk(tc, cl, range(4)).is_contiguous(memory_format=torch.channels_last)
    x8 = torch.randint(0, 256, (96, 3, 16, 16), dtype=torch.uint8)
    dls = DeviceDataLoaders.from_tensors(x8, torch.arange(96) % 4, valid_pct=0.5, seed=0, bs=16)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), Flatten(), nn.Linear(8, 4))
    learn = timm_learner(dls, model, cbs=ChannelsLast()) # channels_last; its 1x1 pooled map flattened by `view`
    with learn.no_bar(), learn.no_logging():
        learn.fit(1)
        p1, p4 = (learn.tta10(chunk=c)[0] for c in (1, 4))
    assert torch.allclose(p1, p4, atol=1e-5)

def test_a_per_pixel_loss_of_channels_last_predictions_mixes():
    "A per-pixel loss of channels_last predictions is not contiguous: MixUp's per-image mix reshapes it"
    pred = torch.randn(4, 5, 6, 7).contiguous(memory_format=torch.channels_last)
    y, y1, lam = torch.rand(4, 5, 6, 7), torch.rand(4, 5, 6, 7), torch.rand(4)
    lf = nn.BCEWithLogitsLoss()
    cb = MixUpCutMix(mode='elem'); cb.yb1, cb.lam = (y1,), lam
    per_item = lambda t: F.binary_cross_entropy_with_logits(pred, t, reduction='none').mean((1, 2, 3))
    expected = (lam * per_item(y) + (1 - lam) * per_item(y1)).mean()
    assert torch.allclose(cb.mixed_loss(lf, pred, (y,)), expected, atol=1e-6)

# --- a whole fit on the `meta` device: what it reads back per epoch, not per batch ----------------------------------

def _classifier(bs): return timm_learner(meta_dls(bs=bs), tiny_cnn())
def _box_learner(bs):
    return box_learner(box_dls(device='meta', bs=bs), nn.Sequential(nn.Conv2d(1, 8, 3, 2), nn.ReLU()))
def _retrieval_learner(bs): return metric_learner(meta_dls(bs=bs), tiny_cnn(), n_emb=8, head=ArcFace)
FITS = {'classify': lambda: [], 'MixUp': lambda: [MixUp()], 'CutMix': lambda: [CutMix()],
        'EMA': lambda: [EMA(0.9)], 'SWA': lambda: [SWA(0.5)],
        'Tempering': lambda: [Tempering()], 'ProgressiveResize': lambda: [ProgressiveResize({1: 12})],
        'GradientAccumulation': lambda: [GradientAccumulation(128)]}
LEARNERS = {**{k: _classifier for k in FITS}, 'boxes': _box_learner, 'retrieval': _retrieval_learner}

@pytest.mark.parametrize('kind', LEARNERS)
def test_a_fit_reads_back_per_epoch_not_per_batch(kind, monkeypatch):
    """fastai reads its running loss and validation metrics back at every batch (on a GPU, a wait each): compkit keeps
    them on the device. A fit's reads, where they happen, are the same for twice the batches"""
    monkeypatch.setattr(compkit.core, 'interactive', lambda file=None: False) # `pytest -s` in a terminal: as in a log
    gen = mixup.device_generator # `meta` has no generator (nor values to draw): torch's default
    monkeypatch.setattr(mixup, 'device_generator', lambda d, s: None if d.type == 'meta' else gen(d, s))
    def reads(bs):
        with HostReads('meta') as r: LEARNERS[kind](bs).fit_one_cycle(2, 1e-3, cbs=FITS.get(kind, list)())
        return Counter(r.sites)
    few, more = reads(64), reads(32)
    assert few == more, f'read back at every batch: {sorted((more - few).keys())}'

def test_an_lr_range_test_brings_its_losses_to_the_host():
    "A range test ends its fit early, before `after_train`: its recorded losses come to the host all the same"
    with HostReads('meta'):
        learn = _classifier(64)
        with learn.no_bar(): learn.lr_find(num_it=30, show_plot=False)
    assert len(learn.recorder.losses) > 5 and all(l.device.type == 'cpu' for l in learn.recorder.losses)

def test_an_interrupted_fit_brings_its_losses_to_the_host():
    "A KeyboardInterrupt skips `after_train` and `after_fit`: the losses recorded on the device come to the host"
    class Stop(Callback):
        def after_batch(self):
            if self.training and self.iter == 3: raise KeyboardInterrupt()
    with HostReads('meta'):
        learn = _classifier(64)
        with learn.no_bar(), learn.no_logging(), pytest.raises(KeyboardInterrupt): learn.fit(1, cbs=Stop())
    # batches 0 to 2: the Recorder (order 50) records after this callback has stopped the fourth
    assert len(learn.recorder.losses) == 3 and all(l.device.type == 'cpu' for l in learn.recorder.losses)
    assert learn.recorder.exits == [] and '_fit_exits' not in learn.__dict__ # nothing of the fit left (to pickle)
