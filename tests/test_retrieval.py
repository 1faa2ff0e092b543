"""The retrieval band: losses against pytorch-metric-learning, margin heads in a real fastai Learner (optimizer, save,
export, lr_find, fastai callbacks), PK batches through fit; block-wise search against scikit-learn's brute-force
neighbours, bounded blocks, MAP@k against scikit-learn, retrieval from learners, meta-embeddings for a kNN."""
import math
import pytest, timm, torch, torch.nn.functional as F
from torch import nn
from sklearn.neighbors import NearestNeighbors
from sklearn.metrics import label_ranking_average_precision_score
from fastai.callback.core import Callback
from fastai.callback.training import GradientAccumulation
from fastai.callback.tracker import SaveModelCallback
from fastai.learner import Learner, load_learner
from fastai.losses import CrossEntropyLossFlat
from compkit.core import device_generator
from compkit.datasets import digits
from compkit.data import DeviceDataLoaders, DeviceDataset, DeviceDL
from compkit.retrieval.heads import ArcFace, CosFace, TripletLoss, EmbeddingModel, MarginTargets, metric_learner
from compkit.retrieval.sampling import PKSampler, pk_dataloaders, drop_singletons
import compkit.retrieval.search as R # and Learner.get_embeddings
from compkit.retrieval.search import (topk_similar, rank_classes, map_at_k, embeddings, concat_embeddings,
                                      meta_embeddings)
from _nets import small_cnn

# ---- heads and PK sampling

D = digits(16)

@pytest.fixture(scope='module')
def dls(): return DeviceDataLoaders.from_tensorset(D, bs=64, seed=0)

def quiet_fit(learn, *args, method='fit_one_cycle'):
    with learn.no_bar(), learn.no_logging(): getattr(learn, method)(*args)

# --- against pytorch-metric-learning ---------------------------------------------------------------------------------

# not 0: the heads draw their weights from the global generator, seeded 0 by conftest
def _emb_labels(n=48, d=16, c=7, seed=123):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, c, (n,), generator=g)

@pytest.mark.parametrize('cls,pml_name,m,pml_margin', [(ArcFace, 'ArcFaceLoss', 0.5, math.degrees(0.5)),
                                                       (ArcFace, 'ArcFaceLoss', 1.2, math.degrees(1.2)),
                                                      (CosFace, 'CosFaceLoss', 0.35, 0.35)])
@pytest.mark.parametrize('s', [64., 16.])
def test_margin_heads_equal_pml(cls, pml_name, m, pml_margin, s):
    """Same loss and same gradient as pytorch-metric-learning (ArcFace margins there are in degrees; its W is (n_emb,
    n_out))"""
    pml = pytest.importorskip('pytorch_metric_learning.losses')
    emb, y = _emb_labels()
    head = cls(16, 7, m=m, s=s)
    ref = getattr(pml, pml_name)(num_classes=7, embedding_size=16, margin=pml_margin, scale=s)
    with torch.no_grad(): ref.W.copy_(head.weight.T)
    e1, e2 = emb.clone().requires_grad_(), emb.clone().requires_grad_()
    ours, theirs = F.cross_entropy(head(e1, y), y), ref(e2, y)
    ours.backward(); theirs.backward()
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    assert torch.allclose(e1.grad, e2.grad, rtol=1e-4, atol=1e-6)
    assert torch.allclose(head.weight.grad, ref.W.grad.T, rtol=1e-4, atol=1e-6)

@pytest.mark.parametrize('normalize', [True, False])
@pytest.mark.parametrize('margin', [0.05, 0.2, 1.])
def test_triplet_equals_pml_batch_hard(normalize, margin):
    "Batch-hard triplet loss equals PML's TripletMarginLoss on BatchHardMiner's triplets (mean over the mined triplets)"
    pytest.importorskip('pytorch_metric_learning')
    from pytorch_metric_learning import losses, miners, distances, reducers
    emb, y = _emb_labels(n=40, c=6, seed=1)
    y[-1] = 99 # a class with one item: no positive, no triplet
    dist = distances.LpDistance(normalize_embeddings=normalize)
    miner = miners.BatchHardMiner(distance=dist)
    ref = losses.TripletMarginLoss(margin=margin, distance=dist, reducer=reducers.MeanReducer())
    e1, e2 = emb.clone().requires_grad_(), emb.clone().requires_grad_()
    ours, theirs = TripletLoss(margin, normalize)(e1, y), ref(e2, y, miner(e2, y))
    ours.backward(); theirs.backward()
    assert len(miner(emb, y)[0]) == 39
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    assert torch.allclose(e1.grad, e2.grad, rtol=1e-4, atol=1e-6)

def test_margin_under_autocast_is_fp32_and_finite():
    "Under mixed precision the logits stay fp32 and the gradients finite, even for an embedding on its class centre"
    head = ArcFace(8, 3)
    emb = head.weight[:2].detach().clone().requires_grad_() # cos = 1 exactly for the target: acos' is infinite there
    with torch.autocast('cpu', dtype=torch.bfloat16): out = head(emb, torch.tensor([0, 1]))
    assert out.dtype == torch.float32
    F.cross_entropy(out, torch.tensor([0, 1])).backward()
    assert torch.isfinite(emb.grad).all() and torch.isfinite(head.weight.grad).all()

# --- the head in a fastai Learner ------------------------------------------------------------------------------------

def test_head_trains_saves_exports_and_predicts(dls, tmp_path):
    learn = metric_learner(dls, small_cnn(32), head=CosFace, path=tmp_path)
    w0 = learn.model.head.weight.detach().clone()
    quiet_fit(learn, 3, 1e-2)
    assert not torch.equal(learn.model.head.weight, w0)
    with learn.no_bar(): loss, acc = learn.validate()
    assert acc > 0.8
    # eval logits are s*cos with the learnt class centres: get_preds is their softmax
    with learn.no_bar(): probs, targs = learn.get_preds()
    x = learn.dls.valid.one_batch()[0]
    learn.model.eval()
    with torch.no_grad():
        expected = F.softmax(64 * F.normalize(learn.model.embed(x)) @ F.normalize(learn.model.head.weight).T, 1)
    assert torch.allclose(probs[:len(x)], expected, atol=1e-5)
    # learn.save / learn.load carry the head
    learn.save('cos')
    fresh = metric_learner(dls, small_cnn(32), head=CosFace, path=tmp_path)
    fresh.load('cos')
    assert torch.equal(fresh.model.head.weight, learn.model.head.weight)
    # export / load_learner carry it, with the callback, and predict the same
    learn.export('cos.pkl')
    back = load_learner(tmp_path/'cos.pkl')
    assert any(isinstance(cb, MarginTargets) for cb in back.cbs)
    raw = D.x[D.valid_idx[0]]
    assert torch.allclose(back.predict(raw)[2], learn.predict(raw)[2], atol=1e-5)

def test_pretrained_body_frozen_head_trainable(dls, tmp_path):
    """Local weights: timm_learner freezes the body; the margin head joins the last (trainable) group of the new
    optimizer"""
    src = timm.create_model('resnet10t')
    torch.save(src.state_dict(), tmp_path/'w.pth')
    learn = metric_learner(dls, 'resnet10t', n_emb=16, weights=tmp_path/'w.pth')
    body = learn.model.embedder[0].model
    assert not body.layer1[0].conv1.weight.requires_grad and learn.model.head.weight.requires_grad
    assert any(p is learn.model.head.weight for p in learn.opt.param_lists[-1])
    assert len(learn.opt.param_lists) == 2
    conv0, head0 = body.layer1[0].conv1.weight.detach().clone(), learn.model.head.weight.detach().clone()
    quiet_fit(learn, 1, method='fit')
    assert torch.equal(body.layer1[0].conv1.weight, conv0) and not torch.equal(learn.model.head.weight, head0)

class Spy(Callback):
    "Record how the model is called: the number of inputs of each batch, training and not"
    def __init__(self): self.n_inp = {True: set(), False: set()}
    def after_pred(self): self.n_inp[self.training].add(len(self.xb))

def test_targets_reach_model_in_training_only_and_compose(dls, tmp_path):
    "lr_find trains with the targets; validation and get_preds without; with GradientAccumulation and SaveModelCallback"
    spy = Spy()
    learn = metric_learner(dls, small_cnn(32), cbs=[spy, GradientAccumulation(128), SaveModelCallback(fname='best')],
                           path=tmp_path)
    with learn.no_bar(), learn.no_logging(): learn.lr_find(num_it=8, show_plot=False)
    assert spy.n_inp[True] == {2}
    quiet_fit(learn, 2, 1e-2, method='fit')
    assert spy.n_inp == {True: {2}, False: {1}}
    saved = torch.load(tmp_path/'models/best.pth')
    assert 'head.weight' in saved
    with learn.no_bar(): learn.get_preds()
    assert 'ArcFace' in learn.summary()     # summary runs the model as get_preds does: model(x)
    assert spy.n_inp[False] == {1}

def test_margin_head_without_callback_is_refused(dls):
    learn = Learner(dls, EmbeddingModel(small_cnn(32), ArcFace(32, 10)), loss_func=CrossEntropyLossFlat())
    with pytest.raises(ValueError, match='MarginTargets'): quiet_fit(learn, 1, method='fit')

# --- PK batches through fit ------------------------------------------------------------------------------------------

class Batches(Callback):
    def before_fit(self): self.ys = []
    def before_batch(self):
        if self.training: self.ys.append(self.yb[0].cpu())

def test_pk_batches_in_fit_with_triplet_loss(dls):
    "Every training batch of a fit is P classes x K images; the triplet model's validation neighbours are right"
    pk = pk_dataloaders(dls, p=8, k=4)
    rec = Batches()
    learn = metric_learner(pk, small_cnn(32), head=None, loss_func=TripletLoss(), cbs=rec)
    quiet_fit(learn, 3, 1e-2)
    assert len(rec.ys) == 3 * (len(dls.train_ds) // 32)
    for yb in rec.ys:
        assert len(yb) == 32 and sorted(torch.bincount(yb, minlength=10).tolist()) == [0, 0] + [4] * 8
        assert (yb.view(8, 4) == yb.view(8, 4)[:, :1]).all() # class after class, in blocks of k
    emb, targ = learn.get_embeddings()
    sim = F.normalize(emb) @ F.normalize(emb).T; sim.fill_diagonal_(-2)
    assert (targ[sim.argmax(1)] == targ).float().mean() > 0.8

def test_pk_reproducible_and_singletons():
    y = torch.tensor([0] * 9 + [1] * 3 + [2] * 1 + [3] * 7 + [4] * 12)
    keep = drop_singletons(y, verbose=False)
    assert (y[keep] != 2).all() and len(keep) == len(y) - 1
    ds = DeviceDataset(torch.zeros(len(keep), 1, 2, 2, dtype=torch.uint8), (y[keep],))
    dl = lambda seed: DeviceDL(ds, bs=8, shuffle=True, drop_last=True, sampler=PKSampler(y[keep], 2, 4), seed=seed)
    epoch = lambda l: torch.cat([yb for _, yb in l])
    a, b = dl(0), dl(0)
    e1, e2 = epoch(a), epoch(b)
    assert torch.equal(e1, e2) and not torch.equal(epoch(a), e1) # same seed, same epoch; the next epoch differs
    assert len(e1) == len(keep) // 8 * 8
    for blk in e1.view(-1, 2, 4): assert len(blk[:, 0].unique()) == 2 and (blk == blk[:, :1]).all()
    idx = PKSampler(y[keep], 2, 4)(len(keep), device_generator('cpu', 3))
    for blk in idx.view(-1, 4):
        n_cls = int((y[keep] == y[keep][blk[0]]).sum())
        assert len(blk.unique()) == min(4, n_cls) # distinct images unless the class has fewer than k

# ---- search

def data(n=300, m=2000, d=24, c=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(m, d, generator=g), torch.randint(0, c, (m,), generator=g)

@pytest.mark.parametrize('bs,gallery_bs', [(1024, 16384), (64, 300), (7, 13), (300, 1)])
def test_topk_equals_sklearn_brute_force(bs, gallery_bs):
    q, g, _ = data()
    s, i = topk_similar(q, g, k=20, bs=bs, gallery_bs=gallery_bs)
    dist, ref = NearestNeighbors(n_neighbors=20, metric='cosine',
                                 algorithm='brute').fit(g.numpy()).kneighbors(q.numpy())
    assert torch.equal(i, torch.from_numpy(ref))
    assert torch.allclose(s, torch.from_numpy(1 - dist).float(), atol=1e-5)

def test_blocks_are_bounded(monkeypatch):
    "No similarity block is larger than bs x gallery_bs: the full N x M matrix never exists"
    shapes, blocks = [], R._blocks
    def spy(*args):
        for i0, j0, s in blocks(*args): shapes.append(tuple(s.shape)); yield i0, j0, s
    monkeypatch.setattr(R, '_blocks', spy)
    q, g, y = data()
    topk_similar(q, g, k=5, bs=64, gallery_bs=256); rank_classes(q, g, y, k=5, bs=64, gallery_bs=256)
    assert max(r for r, _ in shapes) == 64 and max(c for _, c in shapes) == 256
    assert sum(r * c for r, c in shapes) == 2 * 300 * 2000 # every similarity computed once per call

@pytest.mark.parametrize('bs,gallery_bs', [(1024, 16384), (32, 100), (5, 3)])
def test_rank_classes_equals_brute_force_class_max(bs, gallery_bs):
    q, g, y = data()
    full = F.normalize(q) @ F.normalize(g).T
    class_max = torch.full((300, 50), -torch.inf).scatter_reduce(1, y.expand(300, -1), full, 'amax')
    s, c = rank_classes(q, g, y, k=10, bs=bs, gallery_bs=gallery_bs)
    assert torch.equal(c, class_max.topk(10, 1).indices) and torch.allclose(s, class_max.topk(10, 1).values)

def test_map_at_k_equals_sklearn_lrap_on_full_rankings():
    "With k = all classes, MAP@k is scikit-learn's label ranking average precision for one true label per row"
    g = torch.Generator().manual_seed(0)
    scores, t = torch.randn(500, 12, generator=g), torch.randint(0, 12, (500,), generator=g)
    ranked = scores.argsort(1, descending=True)
    ref = label_ranking_average_precision_score(F.one_hot(t, 12).numpy(), scores.numpy())
    assert map_at_k(ranked, t, k=12) == pytest.approx(ref, abs=1e-6)
    assert map_at_k(ranked, t, k=5) <= map_at_k(ranked, t, k=12)

def test_retrieve_from_learners_and_meta_embeddings():
    d = digits(16)
    dls = DeviceDataLoaders.from_tensorset(d, bs=64, seed=0)
    learners = []
    for head in (ArcFace, nn.Linear):
        learn = metric_learner(dls, small_cnn(32), head=head)
        with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(2, 1e-2)
        learners.append(learn)
    with learners[0].no_bar(): _, classes, targets = learners[0].retrieve(k=5)
    assert map_at_k(classes, targets) > 0.8
    # a test set as queries: same ranking as the validation loader, since they hold the same images
    _, c2, t2 = learners[0].retrieve(k=5, query_dl=dls.test_dl(d.x[d.valid_idx]))
    assert torch.equal(c2, classes) and t2 is None
    # meta-embeddings of both learners
    q = concat_embeddings([l.get_embeddings(1)[0] for l in learners])
    g, gy = zip(*[l.get_embeddings(0) for l in learners])
    _, meta = rank_classes(q, concat_embeddings(list(g)), gy[0], k=5)
    assert map_at_k(meta, targets) > 0.8
    with pytest.raises(ValueError, match='no labels'): learners[0].retrieve(gallery_dl=dls.test_dl(d.x[:20]))

# ---- embeddings of several learners

def test_meta_embeddings_nearest_neighbour(pair):
    "Meta-embeddings of the training images (unaugmented, via test_dl) as a 1-NN index for the validation images"
    cnn, mlp = pair
    tr = [l.dls.test_dl(l.dls.train_ds.x.cpu(), labels=l.dls.train_ds.ys[0].cpu()) for l in pair]
    layers = [cnn.model[4], mlp.model[2]]   # the CNN's pooled features, the MLP's hidden layer
    with cnn.no_bar(), mlp.no_bar():
        et, yt = meta_embeddings(pair, dl=tr, layers=layers)   # one loader per learner: their sizes differ
        ev, yv = meta_embeddings(pair, layers=layers)
        single = [embeddings(l, layer=m)[0] for l, m in zip(pair, layers)]
    assert et.shape == (1437, 64 + 128) and ev.shape == (360,
                                                         64 + 128) and torch.equal(yt, pair[0].dls.train_ds.ys[0].cpu())
    nn_acc = lambda e, et: float((yt[(e @ et.T).argmax(1)] == yv).float().mean()) # cosine 1-NN (rows are unit vectors)
    accs = [nn_acc(F.normalize(single[0], dim=1), et[:, :64]), nn_acc(F.normalize(single[1], dim=1), et[:, 64:]),
            nn_acc(ev, et)]
    assert accs[2] > 0.9 and accs[2] >= min(accs[:2]), accs  # 0.96, 0.975 and 0.983 here
