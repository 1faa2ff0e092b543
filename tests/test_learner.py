"timm_learner: timm names and modules, local pretrained weights, freezing, fine_tune, fastai's own DataLoaders."
import numpy as np, pytest, timm, torch
from PIL import Image
from fastai.vision.all import ImageDataLoaders, Resize
from compkit.datasets import digits
from compkit.data import DeviceDataLoaders
from compkit.learner import timm_learner

D = digits(16)

@pytest.fixture(scope='module')
def dls(): return DeviceDataLoaders.from_tensorset(D, bs=64, seed=0)

def test_local_weights_load_and_fine_tune(dls, tmp_path):
    src = timm.create_model('resnet10t', in_chans=3)
    torch.save(src.state_dict(), tmp_path/'w.pth')
    learn = timm_learner(dls, 'resnet10t', weights=tmp_path/'w.pth')
    body = learn.model[0].model
    assert torch.equal(body.layer2[0].conv1.weight, src.layer2[0].conv1.weight)
    assert torch.allclose(body.conv1[0].weight, src.conv1[0].weight.sum(1, keepdim=True))
    frozen = [p.requires_grad for p in body.layer2[0].conv1.parameters()]
    assert frozen == [False]                                  # pretrained: the body starts frozen, as in fastai
    before = body.layer2[0].conv1.weight.clone()
    with learn.no_bar(), learn.no_logging(): learn.fine_tune(1, 1e-2, freeze_epochs=1)
    assert not torch.equal(body.layer2[0].conv1.weight, before)  # unfrozen for the second phase
    assert np.isfinite(learn.validate()[0])

def test_scratch_model_trains(dls):
    learn = timm_learner(dls, 'resnet10t')
    assert all(p.requires_grad for p in learn.model.parameters())
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(3, 3e-3)
    assert learn.validate()[1] > 0.8

def test_module_with_discriminative_lrs(dls):
    learn = timm_learner(dls, timm.create_model('resnet10t', num_classes=10, in_chans=1))
    learn.create_opt(); learn.opt.set_hyper('lr', [1e-5, 1e-3])
    assert [g['lr'] for g in learn.opt.hypers] == [1e-5, 1e-3] and len(learn.opt.param_lists) == 2
    assert learn.opt.param_lists[1] == list(learn.model.fc.parameters())

def test_works_with_fastai_dataloaders(tmp_path):
    for i in range(50): # 3+ of each digit: every class lands in fastai's training split
        (tmp_path/str(int(D.y[i]))).mkdir(exist_ok=True)
        Image.fromarray(D.x[i, 0].numpy()).convert('RGB').save(tmp_path/str(int(D.y[i]))/f'{i}.png')
    fdls = ImageDataLoaders.from_folder(tmp_path, valid_pct=0.25, seed=0, item_tfms=Resize(16), bs=4, num_workers=0)
    learn = timm_learner(fdls, 'resnet10t')
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    assert learn.model[0].model.conv1[0].in_channels == 3
