"Retrieval: block-wise search against scikit-learn's brute-force neighbours, bounded blocks, MAP@k against scikit-learn, retrieval from learners."
import pytest, torch, torch.nn.functional as F
from torch import nn
from sklearn.neighbors import NearestNeighbors
from sklearn.metrics import label_ranking_average_precision_score
from compkit.datasets import digits
from compkit.data import DeviceDataLoaders
from compkit.metric import metric_learner, ArcFace
import compkit.retrieval as R
from compkit.retrieval import topk_similar, rank_classes, map_at_k
from compkit.ensemble import concat_embeddings

def small_cnn(n_emb=32): return nn.Sequential(nn.Conv2d(1, 32, 3, 1, 1), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.BatchNorm2d(64), nn.ReLU(),
                                              nn.Conv2d(64, 128, 3, 2, 1), nn.BatchNorm2d(128), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, n_emb))

def data(n=300, m=2000, d=24, c=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(m, d, generator=g), torch.randint(0, c, (m,), generator=g)

@pytest.mark.parametrize('bs,gallery_bs', [(1024, 16384), (64, 300), (7, 13), (300, 1)])
def test_topk_equals_sklearn_brute_force(bs, gallery_bs):
    q, g, _ = data()
    s, i = topk_similar(q, g, k=20, bs=bs, gallery_bs=gallery_bs)
    dist, ref = NearestNeighbors(n_neighbors=20, metric='cosine', algorithm='brute').fit(g.numpy()).kneighbors(q.numpy())
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
        learn = metric_learner(dls, small_cnn(), head=head)
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
