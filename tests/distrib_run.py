"""Run by `tests/test_distrib.py` under `torchrun --nproc_per_node 2` (gloo, CPU): each rank trains on its part of the
digits through fastai's `distrib_ctx`, and writes what it saw and what it predicted to OUT for the test to check.
Run: python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distrib_run.py OUT"""
import os, sys
from pathlib import Path
import torch
from torch import nn
from fastai.learner import Learner
from fastai.metrics import accuracy
from compkit.core import seed_everything, rank_world
from compkit.datasets import digits
from compkit.data import DeviceDataLoaders
from compkit.classify.mixup import MixUp
from compkit.retrieval.sampling import pk_dataloaders
# Learner.fit_sgdr_snapshots, lr_find_bounds, tta10
import compkit.schedule.snapshot, compkit.schedule.lr_find, compkit.predict.tta

N_TRAIN, N_VALID, BS = 256, 61, 16 # 61 valid items: two ranks need one item of padding

def loaders(bs=BS):
    "The same split and training order in every process (the loaders' seed)"
    d = digits(16)
    return DeviceDataLoaders.from_tensors(d.x[:N_TRAIN + N_VALID], d.y[:N_TRAIN + N_VALID], vocab=d.vocab, bs=bs,
                                          seed=0, valid_idx=range(N_TRAIN, N_TRAIN + N_VALID), device='cpu')

def model(bn=True):
    seed_everything(1)
    return nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), *([nn.BatchNorm2d(8)] if bn else []), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10))

def plain_fit(dls):
    "One epoch without BatchNorm or mixing: in two processes of `BS`, the same steps as one process of `2*BS`"
    learn = Learner(dls, model(bn=False), lr=1e-2)
    return learn

def pk_batches():
    "The item indices of each batch of 4 classes x 4 items, this rank's in several processes"
    dl = pk_dataloaders(loaders(), p=4, k=4).train
    seen = record_items(dl)
    for _ in dl: pass
    return seen

def record_items(dl):
    "Log the indices of every batch `dl` gathers"
    seen, items = [], dl.dataset.items
    def logged(idx): seen.append(idx.clone()); return items(idx)
    dl.dataset.items = logged
    return seen

if __name__ == '__main__':
    out = Path(sys.argv[1])
    dls = loaders()
    learn = plain_fit(dls)
    with learn.distrib_ctx(sync_bn=False, cpu=True): learn.fit(1)
    rank, world = rank_world()
    if rank == 0: torch.save(learn.model.state_dict(), out/'plain.pth')

    dls = loaders()
    learn = Learner(dls, model(), metrics=accuracy, path=out)
    seen = record_items(dls.train)
    with learn.distrib_ctx(sync_bn=False, cpu=True):
        bounds = learn.lr_find_bounds(num_it=20, show_plot=False)
        seen.clear() # the range test's batches are not training
        learn.fit_sgdr_snapshots(2, 1, lr_max=bounds.lr_max, cbs=MixUp(), to_disk=True)
    res = {'seen': torch.cat(seen), 'bounds': tuple(bounds), 'snapshots': [str(s) for s in learn.snapshots],
           'world': world}
    res['pk'] = pk_batches()
    res['preds'], res['targs'] = learn.get_preds()
    res['snapshot_preds'], _ = learn.snapshot_preds()
    res['tta'], res['tta_targs'] = learn.tta10(scale=1.25)
    torch.save(res, out/f'rank{rank}.pt')
    if rank == 0: torch.save(learn.model.state_dict(), out/'model.pth')
    # everything is written: leave without the interpreter's teardown, where torch can abort ('terminate called
    # without an active exception', once in six runs here) while it destroys what its process groups left behind
    sys.stdout.flush(); sys.stderr.flush(); os._exit(0)
