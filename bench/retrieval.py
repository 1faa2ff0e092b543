"""Retrieval and PK sampling against their peers, same data in the same run:
- top-k cosine neighbours: compkit's block-wise `topk_similar` vs scikit-learn's brute-force `NearestNeighbors` and
  one full similarity matrix in torch (time, and the largest similarity matrix each holds at once);
- ranked classes: `rank_classes` vs deduplicating scikit-learn's neighbour lists in Python;
- one epoch of PK indices: `PKSampler` vs pytorch-metric-learning's `MPerClassSampler` (skipped if not installed).
Run: python bench/retrieval.py [--queries 2000] [--gallery 25000] [--dim 256] [--threads N]"""
import argparse, os, platform, statistics, time
import torch, torch.nn.functional as F
from sklearn.neighbors import NearestNeighbors
from compkit.core import device_generator
from compkit.retrieval.search import topk_similar, rank_classes
from compkit.retrieval.sampling import PKSampler
from _plot import bar_chart

def seconds(f, reps=3):
    "Median wall time of `f()` over `reps` runs, after one warm-up run"
    f()
    ts = []
    for _ in range(reps): t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return statistics.median(ts)

def mb(n): return f'{n * 4 / 2**20:,.0f} MB'

def main(n_q, n_g, dim, n_cls, threads, k=20):
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    q, gal = torch.randn(n_q, dim, generator=g), torch.randn(n_g, dim, generator=g)
    labels = torch.randint(0, n_cls, (n_g,), generator=g)
    bs, gbs = 1024, 16384 # the defaults
    nn_ = NearestNeighbors(n_neighbors=k, metric='cosine', algorithm='brute').fit(gal.numpy())
    full = lambda: (F.normalize(q) @ F.normalize(gal).T).topk(k, 1)
    ours = lambda: topk_similar(q, gal, k, bs=bs, gallery_bs=gbs)
    small = lambda: topk_similar(q, gal, k, bs=256, gallery_bs=4096)
    # same answer before timing
    assert torch.equal(ours()[1], torch.from_numpy(nn_.kneighbors(q.numpy())[1])) and torch.equal(small()[1], ours()[1])
    t_ours, t_small, t_full = seconds(ours), seconds(small), seconds(full)
    t_sk = seconds(lambda: nn_.kneighbors(q.numpy()))
    print(f'\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {threads} torch threads, torch '
          f'{torch.__version__}; '
          f'{n_q:,} queries x {n_g:,} gallery, d={dim}, k={k}, {n_cls:,} classes\n')
    print('| top-k neighbours | seconds | vs compkit | largest similarity matrix |\n|---|---|---|---|')
    print(f'| compkit `topk_similar` (default blocks {bs}x{gbs}) | {t_ours:.3f} | 1.00 | '
          f'{mb(min(bs, n_q) * min(gbs, n_g))} |')
    print(f'| compkit `topk_similar` (blocks 256x4096) | {t_small:.3f} | {t_small / t_ours:.2f} | {mb(256 * 4096)} |')
    print(f'| torch, one full matrix + topk | {t_full:.3f} | {t_full / t_ours:.2f} | {mb(n_q * n_g)} |')
    print(f'| scikit-learn `NearestNeighbors` brute cosine | {t_sk:.3f} | {t_sk / t_ours:.2f} | (its own chunks) |')

    def sk_dedup(): # the classes of the neighbour list, each once, in order: the usual Python post-processing
        nbrs = labels.numpy()[nn_.kneighbors(q.numpy(), n_neighbors=100)[1]]
        return [list(dict.fromkeys(row))[:5] for row in nbrs]
    t_rank, t_dedup = seconds(lambda: rank_classes(q, gal, labels, 5, bs=bs, gallery_bs=gbs)), seconds(sk_dedup)
    print('\n| top-5 classes | seconds | vs compkit |\n|---|---|---|')
    print(f'| compkit `rank_classes` (exact) | {t_rank:.3f} | 1.00 |')
    print(f'| scikit-learn 100 neighbours, deduplicated in Python (exact only if 5 classes appear in 100) | '
          f'{t_dedup:.3f} | {t_dedup / t_rank:.2f} |')

    n, p, kk = 100_000, 16, 4
    y = torch.randint(0, 5000, (n,), generator=g)
    sampler, gen = PKSampler(y, p, kk), device_generator('cpu', 0)
    t_pk = seconds(lambda: sampler(n, gen))
    pk = {'compkit': t_pk}
    print('\n| one epoch of PK indices (100,000 items, 5,000 classes, 16x4) | seconds | vs compkit |\n|---|---|---|')
    print(f'| compkit `PKSampler` (tensor ops) | {t_pk:.4f} | 1.00 |')
    try:
        from pytorch_metric_learning.samplers import MPerClassSampler
        pml = MPerClassSampler(y.numpy(), m=kk, batch_size=p * kk, length_before_new_iter=n)
        t_pml = pk['pytorch-metric-learning'] = seconds(lambda: list(iter(pml)))
        print(f'| pytorch-metric-learning `MPerClassSampler` (Python loop) | {t_pml:.4f} | {t_pml / t_pk:.1f} |')
    except ImportError: print('| pytorch-metric-learning not installed | - | - |')
    bar_chart('seconds',
              {'top-k neighbours': {'compkit': t_ours, 'torch, one full matrix': t_full, 'scikit-learn': t_sk},
                          'top-5 classes': {'compkit': t_rank, 'scikit-learn': t_dedup}, 'one epoch of PK indices': pk},
              'seconds (log scale)', f'Retrieval, {n_q:,} queries x {n_g:,} gallery, {torch.get_num_threads()} threads',
              log=True)

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--queries', type=int, default=2000); ap.add_argument('--gallery', type=int, default=25000)
    ap.add_argument('--dim', type=int, default=256); ap.add_argument('--classes', type=int, default=5000)
    ap.add_argument('--threads', type=int, default=os.cpu_count())
    a = ap.parse_args()
    main(a.queries, a.gallery, a.dim, a.classes, a.threads)
