"""Seconds of one `fit_one_cycle` epoch of a timm model trained through compkit, against the floor (the same steps in a
plain torch loop on one batch made beforehand, fused AdamW) and against fastai's DataBlock pipeline from image files.
Run: python bench/fit.py [--configs resnet18:128 resnet50:224] [--bs 128] [--repeat 6] [--reps 3] [--max-batches N]

Every fit trains the same model (`timm_learner`, 1 input channel, 10 classes, fp32, random init) on scikit-learn's
digits (repeated `--repeat` times, fitted to the size) for one epoch of `len(train)` steps and `len(valid)` validation
batches, timed to the end of the device's work; each figure is the best of `--reps` epochs after a warm-up epoch, the
runs taking turns epoch by epoch. The rows: the floor; compkit's `DeviceDataLoaders` with `timm_learner`'s default
optimizer (torch's AdamW, fused) and with fastai's `Adam` (a Python loop over the parameters); fastai's loop on one
fixed batch (no loader); fastai's DataBlock from PNG files of the same images at the same size (its default
`num_workers`). On a GPU it runs resnet18 at 128 px and resnet50 at 224 px (`--configs resnet18:224 resnet50:128` for
the others), batch 128, the digits six times (67 + 17 batches); on a CPU a small model at 32 px, so that CI can
smoke-test it.

Before them: one optimizer step of each kind on the device and, on the CPU, the loop's own host work per batch (a model
with next to no compute), which a GPU hides behind its own work only while nothing makes the host wait for it.
"""
import argparse, os, tempfile, time
from pathlib import Path
import statistics
import torch, timm
from PIL import Image
from torch import nn
from fastai.data.core import DataLoaders
from fastai.data.block import DataBlock, CategoryBlock
from fastai.data.transforms import get_image_files, parent_label, GrandparentSplitter
from fastai.vision.data import ImageBlock
from fastai.vision.core import PILImageBW
from fastai.optimizer import Adam
from fastai.losses import CrossEntropyLossFlat
from compkit.core import get_device
from compkit.datasets import digits
from compkit.data import DeviceDataLoaders
from compkit.learner import timm_learner, TorchAdamW
from _plot import bar_chart

def sync(device):
    if device.type == 'cuda': torch.cuda.synchronize(device)

class OneBatch:
    "A loader that yields one batch made beforehand `n` times: fastai's loop with nothing to load"
    def __init__(self, b, n): self.b, self.n = b, n
    def __len__(self): return self.n
    def __iter__(self): return (self.b for _ in range(self.n))
    def to(self, device): return self

def data(size, repeat, max_batches, bs):
    """digits at `size` px, `repeat` times over (the split kept), cut to `max_batches` training batches if set: (x, y,
    valid_idx)"""
    ts = digits(size)
    n, valid = len(ts.x), ts.valid_idx
    x, y = ts.x.repeat(repeat, 1, 1, 1), ts.y.repeat(repeat)
    valid = torch.cat([valid + k * n for k in range(repeat)])
    if max_batches:
        is_valid = torch.zeros(len(x), dtype=torch.bool); is_valid[valid] = True
        train, valid = (~is_valid).nonzero().flatten()[:max_batches * bs], valid[:max(1, max_batches // 4) * bs]
        keep = torch.cat([train, valid]).sort().values
        x, y, valid = x[keep], y[keep], torch.searchsorted(keep, valid.sort().values)
    return x, y, valid

def floor_seconds(model, xb, yb, n_train, n_valid, lr=1e-3):
    """Seconds of `n_train` training steps and `n_valid` validation batches of `model` in a plain torch loop on one
    batch: no loader, no callbacks"""
    model = model.to(xb.device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, fused=True)
    def epoch():
        sync(xb.device); t = time.perf_counter()
        model.train()
        for _ in range(n_train):
            loss = nn.functional.cross_entropy(model(xb), yb); loss.backward(); opt.step()
            opt.zero_grad(set_to_none=True)
        model.eval()
        with torch.no_grad():
            for _ in range(n_valid): model(xb)
        sync(xb.device); return time.perf_counter() - t
    return epoch

def fit_seconds(learn, device, lr=1e-3):
    "A function timing one `fit_one_cycle` epoch of `learn`"
    def epoch():
        with learn.no_bar(), learn.no_logging():
            sync(device); t = time.perf_counter(); learn.fit_one_cycle(1, lr); sync(device)
        return time.perf_counter() - t
    return epoch

def png_folder(x, y, valid_idx, root):
    "The images as PNG files in fastai's train/valid, class-per-folder layout"
    is_valid = torch.zeros(len(x), dtype=torch.bool); is_valid[valid_idx] = True
    for i, (img, c, v) in enumerate(zip(x, y.tolist(), is_valid.tolist())):
        d = root/('valid' if v else 'train')/str(c); d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0].numpy()).save(d/f'{i}.png', compress_level=1)
    return root

def config(arch, size, bs, repeat, reps, max_batches, device):
    "{row: seconds per epoch} for one model and size, and the (train, valid) batch counts"
    x, y, valid = data(size, repeat, max_batches, bs)
    dls = DeviceDataLoaders.from_tensors(x, y, valid_idx=valid, bs=bs, seed=0, device=device)
    n_train, n_valid = len(dls.train), len(dls.valid)
    xb, yb = (t.as_subclass(torch.Tensor) for t in dls.train.one_batch())
    learner = lambda dls, **kw: timm_learner(dls, arch, n_out=10, n_in=1, metrics=[], loss_func=CrossEntropyLossFlat(),
                                             **kw)
    fixed = DataLoaders(OneBatch((xb, yb), n_train), OneBatch((xb, yb), n_valid), device=device)
    with tempfile.TemporaryDirectory() as tmp:
        files = png_folder(x, y, valid, Path(tmp))
        block = DataBlock((ImageBlock(cls=PILImageBW), CategoryBlock), get_items=get_image_files, get_y=parent_label,
                          splitter=GrandparentSplitter(valid_name='valid'))
        fastai_dls = block.dataloaders(files, bs=bs, device=device) # fastai's default num_workers
        # the floor trains the same model (timm's body, fastai's head) as the fits: only the framework's own work
        # differs
        runs = {'floor': floor_seconds(learner(dls).model, xb, yb, n_train, n_valid),
                'compkit': fit_seconds(learner(dls), device),
                'compkit, fastai Adam': fit_seconds(learner(dls, opt_func=Adam), device),
                'fastai loop, one fixed batch': fit_seconds(learner(fixed), device),
                'fastai DataBlock, PNG files': fit_seconds(learner(fastai_dls), device)}
        for f in runs.values(): f() # warm-up: kernels chosen, memory pooled, workers started
        best = {k: float('inf') for k in runs}
        # the runs take turns, epoch by epoch: a slow spell of a shared machine slows them all alike
        for _ in range(reps):
            for k, f in runs.items(): best[k] = min(best[k], f())
        nw = fastai_dls.train.num_workers
    return best, (n_train, n_valid), nw

ROWS = {'floor': 'the same model in a plain torch loop on one batch, fused AdamW (the floor)',
        'compkit': "compkit: DeviceDataLoaders + timm_learner's default optimizer (torch AdamW, {impl})",
        'compkit, fastai Adam': "compkit: DeviceDataLoaders + timm_learner(opt_func=fastai's Adam)",
        'fastai loop, one fixed batch': "fastai's loop on one fixed batch (no loader), torch AdamW",
        'fastai DataBlock, PNG files': "fastai DataBlock from PNG files (num_workers={nw}, its default) + timm_learner"}

def opt_steps(archs, device, steps=10, rounds=5):
    "ms per step of fastai's `Adam` and of `TorchAdamW` (fused, foreach) on each model's parameters, random gradients"
    print(f"### One optimizer step ({device}, {torch.get_num_threads()} thread(s); "
          f"best of {rounds} medians of {steps} steps)")
    print("\n| model | parameter tensors | parameters | fastai Adam | TorchAdamW, fused | TorchAdamW, foreach "
          "| fastai / fused |")
    print('|---|---|---|---|---|---|---|')
    for arch in archs:
        ps = list(timm.create_model(arch, num_classes=10).to(device).parameters())
        for p in ps: p.grad = torch.randn_like(p)
        opts = {'fastai': Adam([ps], lr=1e-3), 'fused': TorchAdamW([ps], fused=True),
                'foreach': TorchAdamW([ps], fused=False)}
        ms = {}
        for k, o in opts.items():
            def step():
                sync(device); t = time.perf_counter(); o.step(); sync(device); return time.perf_counter() - t
            step() # the state made
            ms[k] = 1e3 * min(statistics.median(step() for _ in range(steps)) for _ in range(rounds))
        print(f"| {arch} | {len(ps)} | {sum(p.numel() for p in ps) / 1e6:.1f}M | {ms['fastai']:.2f} ms | "
              f"{ms['fused']:.2f} ms | {ms['foreach']:.2f} ms | {ms['fastai'] / ms['fused']:.1f}x |", flush=True)
    print()

def host_work(reps, repeat=20, bs=32):
    """ms of host work per batch of a fit whose model has next to no compute (a linear layer on 8 px digits, on the
    CPU): what the loop itself costs, which a GPU hides behind its own work only while the host is not made to wait"""
    ts = digits(8)
    dls = DeviceDataLoaders.from_tensors(ts.x.repeat(repeat, 1, 1, 1), ts.y.repeat(repeat), valid_pct=0.2, bs=bs,
                                         seed=0, device='cpu')
    n = len(dls.train) + len(dls.valid)
    model = lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    xb, yb = (t.as_subclass(torch.Tensor) for t in dls.train.one_batch())
    learner = lambda dls: timm_learner(dls, model(), n_in=1, metrics=[], loss_func=CrossEntropyLossFlat())
    fixed = DataLoaders(OneBatch((xb, yb), len(dls.train)), OneBatch((xb, yb), len(dls.valid)), device=dls.device)
    runs = {'a plain torch loop on one batch, fused AdamW': floor_seconds(model(), xb, yb, len(dls.train),
                                                                          len(dls.valid)),
            "fastai's loop on one fixed batch (no loader), timm_learner's default optimizer": fit_seconds(
                learner(fixed), dls.device),
            "compkit: DeviceDataLoaders + timm_learner's default optimizer": fit_seconds(learner(dls), dls.device)}
    for f in runs.values(): f()
    ms = {k: 1e3 * min(f() for _ in range(reps)) / n for k, f in runs.items()}
    plain = next(iter(ms.values()))
    print(f"### The loop's own host work (cpu, {torch.get_num_threads()} thread(s), a linear model on 8 px digits, "
          f"bs {bs}, {n} batches; best of {reps} epochs)\n")
    print('| run | ms per batch | added to the plain loop |\n|---|---|---|')
    for k, v in ms.items(): print(f'| {k} | {v:.3f} | {v - plain:.3f} ms |')
    print()

def main(configs, bs, repeat, reps, max_batches, threads):
    device = get_device()
    torch.set_num_threads(threads or (os.cpu_count() if device.type == 'cuda' else 1))
    if configs is None: configs = ['resnet18:128', 'resnet50:224'] if device.type == 'cuda' else ['resnet10t:32']
    if bs is None: bs = 128 if device.type == 'cuda' else 64
    if repeat is None: repeat = 6 if device.type == 'cuda' else 1
    impl = 'fused' if TorchAdamW([nn.Parameter(torch.zeros(2, 2, device=device))],
                                 lr=1e-3).opt.defaults.get('fused') else 'foreach'
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'
    opt_steps(['resnet18', 'resnet50'] if not max_batches else ['resnet10t'], device)
    host_work(reps, repeat=1 if max_batches else 20)
    where = f'{device} {name}' if device.type == 'cuda' else str(device)
    print(f"### One fit_one_cycle epoch ({where}, {torch.get_num_threads()} thread(s), bs {bs}, fp32; best of "
          f"{reps} epochs after a warm-up)\n")
    print('| model, px | batches (train + valid) | run | s per epoch | / floor | / compkit |')
    print('|---|---|---|---|---|---|')
    plot = {}
    for c in configs:
        arch, size = c.split(':')
        t, (nt, nv), nw = config(arch, int(size), bs, repeat, reps, max_batches, device)
        for k, v in ROWS.items():
            print(f"| {arch}, {size} | {nt} + {nv} | {v.format(impl=impl, nw=nw)} | {t[k]:.3f} | "
                  f"{t[k] / t['floor']:.2f}x | {t[k] / t['compkit']:.2f}x |",
                  flush=True)
        plot[f'{arch} {size} px'] = {k: t[k] / t['floor'] for k in ROWS}
    print()
    bar_chart('fit_vs_floor', plot, 'epoch time / the floor', f'One fit epoch against the floor ({device}, bs {bs})',
              fmt='{:.2f}x')

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--configs', nargs='+', help='arch:px pairs (default: resnet18:128 and resnet50:224 on a GPU, '
                                                'resnet10t:32 on a CPU)')
    p.add_argument('--bs', type=int, help='batch size (default 128 on a GPU, 64 on a CPU)')
    p.add_argument('--repeat', type=int, help='times over the 1,797 digits (default 6 on a GPU, 1 on a CPU)')
    p.add_argument('--reps', type=int, default=3, help='timed epochs per row, after one warm-up; the best is reported')
    p.add_argument('--max-batches', type=int, default=0,
                   help='cut the training set to this many batches (a smoke test)')
    p.add_argument('--threads', type=int, default=0, help='torch threads (default: all cores on a GPU machine; 1 on a '
                                                          'CPU, for stable timings on a shared one)')
    a = p.parse_args()
    main(a.configs, a.bs, a.repeat, a.reps, a.max_batches, a.threads)
