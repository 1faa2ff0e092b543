"""Two processes on the CPU (gloo), launched by torchrun, through fastai's own `distrib_ctx`: what
`tests/distrib_run.py` saw and predicted, checked against one process running the same code."""
import os, subprocess, sys
from pathlib import Path
import pytest, torch
from fastai.learner import Learner
from fastai.metrics import accuracy
sys.path.insert(0, str(Path(__file__).parent))
from distrib_run import loaders, model, plain_fit, pk_batches, BS, N_TRAIN, N_VALID

@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "The 2-rank run's outputs: each rank's record, rank 0's weights and snapshot files"
    out = tmp_path_factory.mktemp('distrib')
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
           str(Path(__file__).parent/'distrib_run.py'), str(out)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return out, [torch.load(out/f'rank{r}.pt', weights_only=False) for r in range(2)]

def test_distrib_ranks_train_on_disjoint_shards(run):
    _, ranks = run
    assert [r['world'] for r in ranks] == [2, 2]
    per_epoch = N_TRAIN // 2 # drop_last: 256 items make 8 batches of 16 on each rank, per epoch
    for e in range(2):
        parts = [set(r['seen'][e * per_epoch:(e + 1) * per_epoch].tolist()) for r in ranks]
        assert len(parts[0]) == len(parts[1]) == per_epoch
        assert not parts[0] & parts[1]                  # disjoint
        assert parts[0] | parts[1] == set(range(N_TRAIN)) # together, the whole training set once

def test_distrib_pk_batches_are_the_global_ones_split_by_rank(run):
    "The PK sampler per rank: rank r's i-th batch is batch 2i+r of one process's epoch, each 4 classes x 4 items"
    _, ranks = run
    one = pk_batches()
    assert len(one) == 16 and [len(r['pk']) for r in ranks] == [8, 8]
    y = loaders().train_ds.ys[0]
    for r, rank in enumerate(ranks):
        for i, b in enumerate(rank['pk']):
            assert (b == one[2 * i + r]).all()
            assert sorted(torch.bincount(y[b]).tolist())[-4:] == [4, 4, 4, 4] and (torch.bincount(y[b]) > 0).sum() == 4

def test_distrib_ranks_agree_on_bounds_and_snapshots(run):
    out, (r0, r1) = run
    assert r0['bounds'] == r1['bounds']              # one range test's result on every rank
    run0 = out/'models'/'snapshot'/'run_000' # one run folder for both ranks, made by rank 0
    assert r0['snapshots'] == r1['snapshots'] == [str(run0/f'snapshot_{i:03d}.pth') for i in range(2)]
    # written once, no temp files left
    assert sorted(p.name for p in run0.iterdir()) == ['snapshot_000.pth', 'snapshot_001.pth']
    assert [p.name for p in (out/'models'/'snapshot').iterdir()] == ['run_000']

def test_distrib_gathered_preds_match_one_process(run):
    """`get_preds`, `snapshot_preds` and `tta10` in two processes: every valid item once, in order, as one process
    predicts it"""
    out, (r0, r1) = run
    learn = Learner(loaders(), model(), metrics=accuracy, path=out)
    learn.model.load_state_dict(torch.load(out/'model.pth'))
    p, t = learn.get_preds()
    learn.load_snapshots()
    sp, _ = learn.snapshot_preds()
    tp, tt = learn.tta10(scale=1.25)
    for r in (r0, r1):
        assert r['preds'].shape == (N_VALID, 10) # 61 items: the padding item is cut off
        torch.testing.assert_close(r['preds'], p); assert (r['targs'] == t).all()
        torch.testing.assert_close(r['snapshot_preds'], sp)
        torch.testing.assert_close(r['tta'], tp); assert (r['tta_targs'] == tt).all()

def test_distrib_steps_match_one_process_with_the_global_batch(run):
    "Without BatchNorm or mixing, two ranks of `BS` take the steps one process takes with `2*BS`: the same weights"
    out, _ = run
    learn = plain_fit(loaders(bs=2 * BS))
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    ref = torch.load(out/'plain.pth')
    for k, v in learn.model.state_dict().items(): torch.testing.assert_close(v, ref[k], atol=1e-6, rtol=1e-5)
