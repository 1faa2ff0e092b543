"""k-fold cross-validation wall time: compkit's `cross_validate` (folds as index views of one on-device set) against
(a) the floor: the same number of single fits on one set of loaders built once, and (b) fastai's usual loop: a
`DataBlock` per fold reading the images from files; with each one's out-of-fold accuracy.

    python bench/cv.py [--folds 5] [--epochs 2] [--size 16] [--reps 1] [--threads 1] [--n 1797]

Digits (1,797 real scans) at `size` px, a resnet10t trained `epochs` epochs per fold (one cycle, batch size 64, no
augmentation), the same model and schedule in every method. The files for fastai's loop are written once, untimed.
Times are the best of `reps` rounds, the methods taking turns within a round (the machine is shared).
"""
import argparse, tempfile, time
from pathlib import Path
import torch
from PIL import Image
from fastai.data.block import DataBlock, CategoryBlock
from fastai.data.transforms import IndexSplitter, parent_label, Normalize
from fastai.vision.data import ImageBlock
from fastai.vision.core import PILImageBW
from compkit.core import seed_everything
from compkit.datasets import digits
from compkit.data import DeviceDataLoaders, image_stats
from compkit.learner import timm_learner
from compkit.folds import kfold_splits
from compkit.predict.cv import cross_validate
from _plot import bar_chart

p = argparse.ArgumentParser()
p.add_argument('--folds', type=int, default=5)
p.add_argument('--epochs', type=int, default=2)
p.add_argument('--size', type=int, default=16)
p.add_argument('--reps', type=int, default=1)
p.add_argument('--n', type=int, default=None, help='only the first n images (a quick check)')
p.add_argument('--threads', type=int, default=None,
               help="torch's CPU threads (default: torch's choice); 1 on a machine shared with other jobs")
args = p.parse_args()
if args.threads: torch.set_num_threads(args.threads)

d = digits(args.size)
x, y = d.x[:args.n], d.y[:args.n]
splits = kfold_splits(y, args.folds, seed=0)
def fit(learn):
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(args.epochs, 3e-3)

def compkit_cv():
    "cross_validate: one on-device set, a fold = two index views; OOF predictions by `get_preds` per fold"
    res = cross_validate(lambda dls: timm_learner(dls, 'resnet10t'), (x, y), splits=splits, fit=fit, seed=0, bs=64)
    return res.score

def single_fits():
    "The floor: loaders built once (fold 0's split), then one fresh learner fitted per fold on them, nothing predicted"
    seed_everything(0)
    dls = DeviceDataLoaders.from_tensors(x, y, valid_idx=splits[0][1], bs=64, seed=0)
    for k in range(args.folds):
        seed_everything(k)
        fit(timm_learner(dls, 'resnet10t'))

tmp = tempfile.TemporaryDirectory()
files = [Path(tmp.name)/str(int(c))/f'{i:04d}.png' for i, c in enumerate(y)]
for f, img in zip(files, x):
    f.parent.mkdir(exist_ok=True)
    Image.fromarray(img[0].numpy()).save(f)

def fastai_cv():
    "fastai's usual loop: per fold a DataBlock over the image files (decoded each epoch), fit, get_preds"
    oof = torch.zeros(len(y), dtype=torch.long)
    for k, (t, v) in enumerate(splits):
        seed_everything(k)
        db = DataBlock(blocks=(ImageBlock(PILImageBW), CategoryBlock), get_items=lambda p: files, get_y=parent_label,
                       splitter=IndexSplitter(v.tolist()), batch_tfms=Normalize.from_stats(*image_stats(x[t])))
        dls = db.dataloaders(tmp.name, bs=64)
        learn = timm_learner(dls, 'resnet10t')
        fit(learn)
        with learn.no_bar(): p, t = learn.get_preds()
        oof[v] = torch.tensor([int(dls.vocab[i]) for i in p.argmax(1).tolist()])
    return float((oof == y).float().mean())

runs = {f'compkit cross_validate ({args.folds} folds, OOF preds)': compkit_cv,
        f'floor: {args.folds} single fits on one set of loaders': single_fits,
        "fastai's loop: a DataBlock per fold from files": fastai_cv}
single_fits() # warm up: first-call allocations, kernel selection, timm's model registry
times, cpu, accs = {k: [] for k in runs}, {k: [] for k in runs}, {}
for r in range(args.reps):
    for k, f in runs.items():
        t0, c0 = time.perf_counter(), time.process_time()
        a = f()
        times[k].append(time.perf_counter() - t0); cpu[k].append(time.process_time() - c0)
        if a is not None: accs[k] = a
best, best_cpu = {k: min(v) for k, v in times.items()}, {k: min(v) for k, v in cpu.items()}
cv, floor, fa = list(runs)
print(f"\n### Wall time of {args.folds}-fold CV, digits at {args.size} px ({len(y)} images), resnet10t, "
      f"{args.epochs} epochs per fold, {torch.get_num_threads()} threads, best of {args.reps}\n")
print("CPU time is this process's (fastai's loader workers are not counted): steadier than wall time when other "
      "jobs share the machine.\n")
print("| method | wall (s) | wall vs compkit | CPU (s) | CPU vs compkit | out-of-fold accuracy |")
print("|---|---|---|---|---|---|")
for k in runs:
    print(f"| {k} | {best[k]:.1f} | {best[k] / best[cv]:.2f}x | {best_cpu[k]:.1f} | {best_cpu[k] / best_cpu[cv]:.2f}x "
          + (f"| {accs[k]:.4f} |" if k in accs else "| – |"))
print(f"\ncompkit's CV against the floor: **{best[cv] / best[floor]:.3f}x** wall, "
      f"**{best_cpu[cv] / best_cpu[floor]:.3f}x** CPU (goal: at most 1.05x); "
      f"fastai's loop against compkit: **{best[fa] / best[cv]:.2f}x** wall.")
bar_chart('wall_time', {'wall time': {k: best[k] for k in runs}}, 'seconds',
          f'{args.folds}-fold CV, digits {args.size} px, resnet10t, {args.epochs} epochs', fmt='{:.1f}')
