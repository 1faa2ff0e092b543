"""Wall time of compkit's schedules against their fastai peers, measured in the same run on the same learner:
`lr_find_bounds` vs fastai's `lr_find` (goal <= 1.05x), and `fit_sgdr_snapshots` (in memory, on disk) vs fastai's
`fit_sgdr` (goal <= 2% overhead). Interleaved repeats, medians and minima. On a shared machine whole-run times
vary by more than those goals, so the work that differs is also timed by itself: each snapshot's copy or write
(as a share of its fit), and keeping the learner's state around the range test (in memory vs fastai's save + load).
Run: python bench/schedules.py [--arch small|resnet10t] [--size 16] [--repeats 5]"""
import argparse, os, platform, statistics, tempfile, time, warnings
from pathlib import Path
import torch
from torch import nn
from compkit.core import seed_everything, get_device
from compkit.datasets import digits
from compkit.data import DeviceDataLoaders
from compkit.learner import timm_learner
from compkit.schedule.lr_find import _kept # and Learner.lr_find_bounds
from compkit.schedule.snapshot import SnapshotEnsemble # and Learner.fit_sgdr_snapshots
from _plot import bar_chart

def block(ni, nf, stride): return [nn.Conv2d(ni, nf, 3, stride, 1, bias=False), nn.BatchNorm2d(nf), nn.ReLU()]
def small_cnn():
    return nn.Sequential(*block(1, 16, 1), *block(16, 32, 2), *block(32, 64, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(64, 10))

def timed(f):
    "Seconds `f` takes, the device synchronized"
    if torch.cuda.is_available(): torch.cuda.synchronize()
    t = time.perf_counter(); f()
    if torch.cuda.is_available(): torch.cuda.synchronize()
    return time.perf_counter() - t

def timing_snapshots():
    """Wrap `SnapshotEnsemble._weights` (the copy) and `_keep` (kept in memory or written) to add the seconds of each
    call to a list: the overhead itself, free of the machine's noise"""
    spent = []
    for name in ('_weights', '_keep'):
        def timed_call(self, *args, f=getattr(SnapshotEnsemble, name)):
            t = time.perf_counter(); res = f(self, *args); spent.append(time.perf_counter() - t); return res
        setattr(SnapshotEnsemble, name, timed_call)
    return spent

def main(arch, size, repeats):
    dls = DeviceDataLoaders.from_tensorset(digits(size), bs=64, seed=0)
    path = Path(tempfile.mkdtemp())
    def learner():
        seed_everything(0)
        learn = timm_learner(dls, small_cnn() if arch == 'small' else arch, path=path)
        learn.remove_cb(learn.progress) # time the work, not the progress bar
        return learn
    runs = {
        'fastai lr_find': lambda l: l.lr_find(show_plot=False),
        'compkit lr_find_bounds': lambda l: l.lr_find_bounds(show_plot=False),
        'fastai fit_sgdr(3, 1, cycle_mult=2)': lambda l: l.fit_sgdr(3, 1, 1e-2, cycle_mult=2),
        'compkit fit_sgdr_snapshots, in memory': lambda l: l.fit_sgdr_snapshots(3, 1, 1e-2, cycle_mult=2),
        'compkit fit_sgdr_snapshots, to_disk': lambda l: l.fit_sgdr_snapshots(3, 1, 1e-2, cycle_mult=2, to_disk=True),
    }
    for name, run in runs.items(): # warm-up: allocator, kernels, imports
        learn = learner()
        with learn.no_logging(), warnings.catch_warnings(): warnings.simplefilter('ignore'); run(learn)
    times, spent = {k: [] for k in runs}, timing_snapshots()
    snap_work = {k: [] for k in runs if 'snapshots' in k}
    for _ in range(repeats): # interleaved, so that a slow spell of a shared machine hits every variant alike
        for name, run in runs.items():
            learn = learner()
            with learn.no_logging(), warnings.catch_warnings():
                warnings.simplefilter('ignore')
                n = len(spent)
                times[name].append(timed(lambda: run(learn)))
                if name in snap_work: snap_work[name].append(sum(spent[n:]) / times[name][-1])
    med = {k: statistics.median(v) for k, v in times.items()}
    peers = {'compkit lr_find_bounds': 'fastai lr_find',
             'compkit fit_sgdr_snapshots, in memory': 'fastai fit_sgdr(3, 1, cycle_mult=2)',
             'compkit fit_sgdr_snapshots, to_disk': 'fastai fit_sgdr(3, 1, cycle_mult=2)'}
    print(f"\n## Schedules vs fastai ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} threads, "
          f"device {get_device()}, {arch} on {size} px digits, bs 64, median of {repeats}, "
          f"torch {torch.__version__})\n")
    print("| run | median s | min s | peer | this / peer (medians) | this / peer (mins) | snapshot work / fit time "
          "|\n|---|---|---|---|---|---|---|")
    for k, v in med.items():
        p = peers.get(k)
        ratios = f"{v / med[p]:.3f}x | {min(times[k]) / min(times[p]):.3f}x" if p else "- | -"
        work = f"{100 * statistics.median(snap_work[k]):.2f}%" if k in snap_work else '-'
        print(f"| {k} | {v:.2f} | {min(times[k]):.2f} | {p or '-'} | {ratios} | {work} |")

    bar_chart('wall_time',
              {'range test': {k: v for k, v in med.items()
                              if 'lr_find' in k}, 'SGDR, 3 cycles': {k: v for k, v in med.items() if 'sgdr' in k}},
                              'median seconds', f'Schedules vs fastai, {arch} on {size} px digits, median of {repeats}')

    # the one piece of work where the two range tests differ: keeping the learner's state (fastai: to disk and back)
    learn = learner(); learn.create_opt()
    def kept():
        with _kept(learn): pass
    mem = statistics.median(timed(kept) for _ in range(21))
    disk = statistics.median(timed(lambda: (learn.save('_bench', with_opt=True),
                                            learn.load('_bench', with_opt=True))) for _ in range(21))
    print(f"\n| keeping the learner's state around the range test | median ms |\n|---|---|\n| fastai `LRFinder` (save "
          f"+ load, with optimizer) | {1e3 * disk:.2f} |"
          f"\n| compkit `lr_find_bounds` (in memory: weights, optimizer, RNGs, loaders) | {1e3 * mem:.2f} "
          f"({mem / disk:.2f}x) |")

if __name__ == '__main__':
    p = argparse.ArgumentParser(); p.add_argument('--arch', default='small')
    p.add_argument('--size', type=int, default=16); p.add_argument('--repeats', type=int, default=5)
    a = p.parse_args(); main(a.arch, a.size, a.repeats)
