"Ensembles of real learners: tta predictions, fitted weights against equal ones, rank averages, meta-embeddings for a kNN."
import pytest, torch, torch.nn.functional as F
from torch import nn
from scipy.stats import rankdata
from fastai.vision.all import ConvLayer, Flatten
from compkit.datasets import digits
from compkit.data import DeviceDataLoaders
from compkit.augment import RandomPadCrop
from compkit.learner import timm_learner
from compkit.ensemble import ensemble_preds, fit_weights, learners_preds, embeddings, meta_embeddings, _log_loss

@pytest.fixture(scope='module')
def pair():
    "A small CNN on 28 px digits and an MLP on 16 px digits, the same fixed validation split"
    cnn = timm_learner(DeviceDataLoaders.from_tensorset(digits(28), bs=64, seed=0, batch_tfms=[RandomPadCrop(3)]),
                       nn.Sequential(ConvLayer(1, 16, stride=2), ConvLayer(16, 32, stride=2), ConvLayer(32, 64, stride=2), nn.AdaptiveAvgPool2d(1), Flatten(), nn.Linear(64, 10)))
    mlp = timm_learner(DeviceDataLoaders.from_tensorset(digits(16), bs=64, seed=0), nn.Sequential(Flatten(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10)))
    for learn in (cnn, mlp):
        with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(3, 1e-2)
    return cnn, mlp

def test_tta_preds_and_fitted_weights(pair):
    cnn, mlp = pair
    with cnn.no_bar(), mlp.no_bar():
        preds, t = learners_preds(pair, tta=True, scale=8/7, flip=None)
        assert torch.allclose(preds[0], cnn.tta10(scale=8/7, flip=None)[0]) and torch.allclose(preds[1], mlp.tta10(scale=8/7, flip=None)[0])
    w = fit_weights(preds, t)
    losses = [_log_loss(ensemble_preds(preds, ws), t) for ws in (w, [1, 1], [1, 0], [0, 1])]
    assert losses[0] <= min(losses[1:]) + 1e-6   # the fitted weights beat equal weights and each model alone, on the set they were fitted on
    for ws in torch.linspace(0, 1, 21): assert losses[0] <= _log_loss(ensemble_preds(preds, [ws, 1 - ws]), t) + 1e-6

def test_rank_average_of_real_predictions(pair):
    with pair[0].no_bar(), pair[1].no_bar(): preds, t = learners_preds(pair)
    ref = (rankdata(preds[0].numpy(), axis=0) + 3 * rankdata(preds[1].numpy(), axis=0)) / 4 / len(t)
    assert torch.allclose(ensemble_preds(preds, [1, 3], 'rank'), torch.tensor(ref, dtype=torch.float), atol=1e-6)

def test_meta_embeddings_nearest_neighbour(pair):
    "Meta-embeddings of the training images (unaugmented, via test_dl) as a 1-NN index for the validation images"
    cnn, mlp = pair
    tr = [l.dls.test_dl(l.dls.train_ds.x.cpu(), labels=l.dls.train_ds.ys[0].cpu()) for l in pair]
    layers = [cnn.model[4], mlp.model[2]]   # the CNN's pooled features, the MLP's hidden layer
    with cnn.no_bar(), mlp.no_bar():
        et, yt = meta_embeddings(pair, dl=tr, layers=layers)   # one loader per learner: their sizes differ
        ev, yv = meta_embeddings(pair, layers=layers)
        single = [embeddings(l, layer=m)[0] for l, m in zip(pair, layers)]
    assert et.shape == (1437, 64 + 128) and ev.shape == (360, 64 + 128) and torch.equal(yt, pair[0].dls.train_ds.ys[0].cpu())
    nn_acc = lambda e, et: float((yt[(e @ et.T).argmax(1)] == yv).float().mean()) # cosine 1-NN (rows are unit vectors)
    accs = [nn_acc(F.normalize(single[0], dim=1), et[:, :64]), nn_acc(F.normalize(single[1], dim=1), et[:, 64:]), nn_acc(ev, et)]
    assert accs[2] > 0.9 and accs[2] >= min(accs[:2]), accs  # 0.96, 0.975 and 0.983 here
