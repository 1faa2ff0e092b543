"""10-crop TTA: `Learner.tta10` against the floor of 10 bare forward passes over the same crops, ttach's per-view
loop (written out: ttach is not installed) and fastai's `Learner.tta`; and the accuracy each gives on digits.

    python bench/tta.py [--epochs 4] [--reps 5] [--threads 1]

A resnet10t is trained on 28 px digits with random crops (RandomPadCrop + RandomResizedCrop), then the validation set
(360 images, batch size 64) is predicted. Times are the best of `reps` interleaved runs (the machine is shared).
"""
import argparse, time, torch
from compkit.core import seed_everything
from compkit.datasets import digits
from compkit.data import DeviceDataLoaders
from compkit.augment import RandomPadCrop, RandomResizedCrop
from compkit.learner import timm_learner
from compkit.predict.tta import TenCrop
from _plot import bar_chart

p = argparse.ArgumentParser()
p.add_argument('--epochs', type=int, default=4)
p.add_argument('--reps', type=int, default=5)
p.add_argument('--scale', type=float, default=8/7)
p.add_argument('--threads', type=int, default=None, help="torch's CPU threads (default: torch's choice); 1 on a "
                                                         "machine shared with other jobs")
args = p.parse_args()
if args.threads: torch.set_num_threads(args.threads)

seed_everything(0)
dls = DeviceDataLoaders.from_tensorset(digits(28), bs=64, seed=0,
                                       batch_tfms=[RandomPadCrop(3), RandomResizedCrop(scale=(0.5, 1))])
learn = timm_learner(dls, 'resnet10t')
t0 = time.perf_counter()
with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(args.epochs, 3e-3)
print(f"trained resnet10t on 28 px digits, {args.epochs} epochs, {time.perf_counter() - t0:.0f} s, "
      f"{torch.get_num_threads()} threads")
model, scale = learn.model.eval(), args.scale
batches = [b[0] for b in dls.valid]

def floor():
    "10 bare forward passes per batch over crops cut beforehand: the least 10-crop TTA can cost"
    with torch.no_grad():
        for v in crops: model(v)

def ttach_pattern():
    """ttach's loop: per batch, per transform (flip x five crops), augment the image, one forward, keep the output;
    merge at the end"""
    res = []
    with torch.no_grad():
        for xb in batches:
            tc = TenCrop(xb.shape[-2:], None, scale)
            xs, outs = tc.rescale(xb), []
            for flipped in (False, True):
                x = xs.flip(-1) if flipped else xs
                for t, l, _ in tc.views[:5]: outs.append(model(x[..., t:t + 28, l:l + 28]).softmax(-1))
            res.append(torch.stack(outs).mean(0))
    return torch.cat(res)

def tta10(**kw):
    with learn.no_bar(): return learn.tta10(scale=scale, **kw)[0]

def fastai_tta():
    with learn.no_bar(): return learn.tta(n=4)[0] # 4 passes with the training augmentations + 1 plain, merged

crops = []
for xb in batches:
    tc = TenCrop(xb.shape[-2:], None, scale)
    xs = tc.rescale(xb)
    crops += [tc.crop(xs, i).contiguous() for i in range(10)]

runs = {'floor: 10 bare forwards per batch': (floor, 10), 'tta10 (1 view per pass, CPU default)': (tta10, 10),
        'tta10 chunk=10 (one 640-image pass per batch)': (lambda: tta10(chunk=10), 10),
        "ttach's pattern, sequential per view": (ttach_pattern, 10), 'fastai Learner.tta (n=4)': (fastai_tta, 5)}
# a GPU runs the passes after the host queues them: each timing ends when the GPU is done (the floor returns nothing)
sync = torch.cuda.synchronize if dls.device.type == 'cuda' else (lambda: None)
for f, _ in runs.values(): f() # warm up: kernel selection, first-call allocations
times = {k: [] for k in runs}
for r in range(args.reps): # interleaved, so that a burst of load on the shared machine hits every method alike
    for k, (f, _) in runs.items():
        sync(); t0 = time.perf_counter(); f(); sync(); times[k].append(time.perf_counter() - t0)
best = {k: min(v) for k, v in times.items()}
# median of same-round ratios
def ratio(k, to): return float(torch.tensor(times[k]).div(torch.tensor(times[to])).median())

fl, tt = 'floor: 10 bare forwards per batch', 'tta10 (1 view per pass, CPU default)'
print(f"\n### Wall time, {len(dls.valid_ds)} validation images, batch size 64, {torch.get_num_threads()} threads, best "
      f"of {args.reps}\n")
print("Ratios are medians over the rounds of the ratio within a round; per view: fastai's `tta` makes 5 views (4 "
      "augmented passes + 1 plain).\n")
print("| method | forward passes of 64 | wall (s) | ms per view | vs floor | per view vs tta10 |")
print("|---|---|---|---|---|---|")
for k, (f, n) in runs.items():
    print(f"| {k} | {n} x {len(batches)} | {best[k]:.3f} | {1000 * best[k] / n:.1f} | {ratio(k, fl):.2f}x | "
          f"{ratio(k, tt) * 10 / n:.2f}x |")

def acc(p): return float((p.argmax(1) == targs).float().mean())
with learn.no_bar():
    preds, targs = learn.get_preds()
    rows = [('1 crop (get_preds)', acc(preds)),
            (f'5 crops at scale {scale:.3f} (tta10 flip=None)', acc(learn.tta10(scale=scale, flip=None)[0])),
            (f'10 crops at scale {scale:.3f} (tta10, horizontal flips)', acc(learn.tta10(scale=scale)[0])),
            ('5 crops of 26 px at scale 1 (tta10 size=26, flip=None)',
             acc(learn.tta10(size=26, scale=1, flip=None)[0])),
            (f'5 crops at scale {scale:.3f}, geometric mean',
             acc(learn.tta10(scale=scale, flip=None, merge="gmean")[0])),
            ('fastai Learner.tta (n=4, beta=0.25)', acc(learn.tta(n=4)[0]))]
print(f"\n### Validation accuracy (digits, {len(targs)} images)\n")
print("| prediction | accuracy | vs 1 crop |")
print("|---|---|---|")
for k, a in rows: print(f"| {k} | {a:.4f} | {a - rows[0][1]:+.4f} |")
bar_chart('time_per_view', {'ms per view': {k: 1000 * best[k] / n for k, (f, n) in runs.items()}},
          'ms per view of the 360 images', f'10-crop TTA, {torch.get_num_threads()} threads, best of {args.reps}',
          fmt='{:.1f}')
bar_chart('accuracy', {'accuracy': dict(rows)}, 'validation accuracy', 'Accuracy on 360 digits by prediction method',
          fmt='{:.4f}')
