"""Every compkit callback trains under bfloat16 autocast on the CPU and channels last (`to_device_amp`, fastai's
`ChannelsLast`), and the predictors (`tta10`, `snapshot_preds`) run under it: the forward passes are in bfloat16,
the losses finite, the model learns, the predictions come back as float probabilities."""
import math
import pytest, torch
from torch import nn
from fastai.callback.core import Callback
from fastai.callback.fp16 import MixedPrecision
from fastai.metrics import accuracy
import fastai.callback.channelslast # Learner.to_channelslast
from compkit.core import seed_everything
from compkit.datasets import digits
from compkit.data import DeviceDataLoaders
from compkit.augment import RandomPadCrop
from compkit.learner import timm_learner
from compkit.callback.mixup import MixUp, CutMix
from compkit.callback.snapshot import SnapshotEnsemble
from compkit.callback.swa import SWA
from compkit.callback.tempering import Tempering
from compkit.callback.progressive import ProgressiveResize
import compkit.callback.precision, compkit.tta # Learner.to_device_amp, tta10

class PredDtype(Callback):
    "The dtypes of the training forward passes' outputs, before mixed precision casts them back to float"
    order = MixedPrecision.order - 1
    def before_fit(self): self.dtypes = set()
    def after_pred(self):
        if self.training: self.dtypes.add(self.pred.dtype)

def small_cnn():
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

@pytest.mark.parametrize('make', [MixUp, CutMix, SnapshotEnsemble, lambda: SWA(start_pct=0.5), lambda: Tempering(switch_epoch=2),
                                  lambda: ProgressiveResize({0: 12, 2: 16})], ids=['mixup', 'cutmix', 'snapshot', 'swa', 'tempering', 'progressive'])
def test_callback_under_bf16_autocast_and_channels_last(make):
    seed_everything(0)
    dls = DeviceDataLoaders.from_tensorset(digits(16), bs=64, seed=0, batch_tfms=RandomPadCrop(2))
    rec = PredDtype()
    learn = timm_learner(dls, small_cnn(), cbs=[rec, make()], metrics=accuracy).to_channelslast(use_amp=False).to_device_amp('bf16')
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(4, 3e-2)
    assert rec.dtypes == {torch.bfloat16}
    assert learn.model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert all(math.isfinite(v) for row in learn.recorder.values for v in row)
    assert learn.recorder.values[-1][-1] > 0.4 # accuracy after 4 short epochs of a tiny model (about 0.55-0.8 in float32); chance is 0.1
    with learn.no_bar():
        preds, targs = learn.snapshot_preds() if hasattr(learn, 'snapshots') else learn.get_preds()
        tta, tta_targs = learn.tta10(scale=8/7, flip=None) # digits are not mirror-symmetric
    for p in (preds, tta):
        assert p.dtype == torch.float32
        torch.testing.assert_close(p.sum(1), torch.ones(len(p)), atol=1e-3, rtol=0)
    assert (tta_targs == targs).all()
