"""Per-batch cost of compkit's MixUp/CutMix against fastai's `MixUp`/`CutMix` and timm's `Mixup` on the same batch,
and each one's share of a resnet10t training step.

    python bench/mixup.py [--bs 64] [--size 64] [--threads 1] [--reps 40]

Each mixer is timed the way it runs in training: mixing the batch and its targets, then the loss (compkit and
fastai mix two of fastai's cross-entropies; timm trains on blended one-hot targets with `SoftTargetCrossEntropy`).
The second table is what turning mixing on adds to a step: the mixing and the mixed loss, less the loss the step
computes anyway (fastai's `CrossEntropyLossFlat` for a fastai `Learner`, PyTorch's `CrossEntropyLoss` for timm). Each
figure is the best of 5 rounds of the median of a block of calls, so that load from other processes on a shared machine
is filtered out. On CUDA it first checks that compkit's callbacks never make the host wait for the GPU
(`torch.cuda.set_sync_debug_mode('error')`). """
import argparse, time, statistics
import torch, timm
from torch import nn
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.torch_core import TensorImage, TensorCategory
from fastai.callback.mixup import MixUp as FastaiMixUp, CutMix as FastaiCutMix
from compkit.datasets import digits
from compkit.data import DeviceDataLoaders
from compkit.classify.mixup import MixUp, CutMix, MixUpCutMix
from _plot import bar_chart

def learner(cb, device):
    "A `Learner` in training mode holding `cb`, to call the callback's events on one batch as fastai's loop does"
    dls = DeviceDataLoaders.from_tensorset(digits(8), bs=8, device=device)
    learn = Learner(dls, nn.Linear(1, 1), loss_func=CrossEntropyLossFlat(), cbs=cb)
    learn.training = True
    cb('before_fit'); cb('before_train') # fastai's mixers swap their loss function in here
    return learn

def mix(cb, learn, x, y):
    "The batch mixed by `cb` in `before_batch`, as both libraries' callbacks do"
    learn.xb, learn.yb = (x,), (y,)
    cb.before_batch()

def compkit_step(cb, learn, x, y, pred):
    "compkit: mix in `before_batch`; fastai's loss; the partners' loss mixed in `after_loss`"
    mix(cb, learn, x, y)
    learn.pred, learn.loss_grad = pred, learn.loss_func(pred, *learn.yb)
    cb.after_loss()
    return learn.loss_grad

def fastai_step(cb, learn, x, y, pred):
    "fastai: mix in `before_batch`; its swapped-in loss function mixes the two losses"
    mix(cb, learn, x, y)
    return learn.loss_func(pred, *learn.yb)

def timm_step(mixer, x, y, pred, loss=SoftTargetCrossEntropy()):
    "timm: the batch mixed in place and blended one-hot targets made; one soft-target loss"
    xm, target = mixer(x, y)
    return loss(pred, target)

def mixers(bs, device):
    "name: {library: (mix the batch, mix the batch and compute the loss)}, for the same batch"
    timm_mix = lambda **kw: Mixup(label_smoothing=0., num_classes=10, **kw)
    def ck(cb): learn = learner(cb, device); return (lambda x,
                                                     y, p: mix(cb, learn, x,
                                                               y)), (lambda x, y, p: compkit_step(cb, learn, x, y, p))
    def fa(cb): learn = learner(cb, device); return (lambda x,
                                                     y, p: mix(cb, learn, x,
                                                               y)), (lambda x, y, p: fastai_step(cb, learn, x, y, p))
    def tm(m): return (lambda x, y, p: m(x, y)), (lambda x, y, p: timm_step(m, x, y, p))
    return {
        'MixUp, one λ per batch':  {'compkit': ck(MixUp(0.4)), 'fastai': fa(FastaiMixUp(0.4)),
                                    'timm': tm(timm_mix(mixup_alpha=0.4))},
        'MixUp, λ per image':      {'compkit': ck(MixUp(0.4, mode='elem')), 'fastai': fa(FastaiMixUp(0.4)),
                                    'timm': tm(timm_mix(mixup_alpha=0.4, mode='elem'))},
        'CutMix, one box per batch': {'compkit': ck(CutMix(1.)), 'fastai': fa(FastaiCutMix(1.)),
                                      'timm': tm(timm_mix(mixup_alpha=0., cutmix_alpha=1.))},
        'MixUp or CutMix, per batch': {'compkit': ck(MixUpCutMix(0.4, 1.)),
                                       'timm': tm(timm_mix(mixup_alpha=0.4, cutmix_alpha=1.))},
        'MixUp or CutMix, per image': {'compkit': ck(MixUpCutMix(0.4, 1., mode='elem')),
                                       'timm': tm(timm_mix(mixup_alpha=0.4, cutmix_alpha=1., mode='elem'))},
    }

def time_blocks(fns:dict, make_batch, reps:int, rounds:int=5, warmup:int=5) -> dict:
    """Seconds per call of each of `fns`: the best over `rounds` of the median of a block of `reps` calls, each on a
    fresh copy of the batch"""
    # blocks, not interleaved calls: each mixer reaches its own steady state of memory reuse (a fresh 3 MB buffer costs
    # page faults, which would be charged to whichever mixer happens to get one); rounds spread the blocks over time,
    # and the best block is the one least disturbed by other processes on a shared machine
    best = {k: float('inf') for k in fns}
    for r in range(rounds):
        for k, f in fns.items():
            times = []
            for i in range(warmup + reps):
                x, y, pred = make_batch() # a fresh copy, made outside the timing: fastai's CutMix and timm mix in place
                if x.is_cuda: torch.cuda.synchronize()
                t = time.perf_counter(); f(x, y, pred)
                if x.is_cuda: torch.cuda.synchronize()
                if i >= warmup: times.append(time.perf_counter() - t)
            best[k] = min(best[k], statistics.median(times))
    return best

def step_time(bs, size, device, reps=10):
    "Median seconds of a resnet10t training step (forward, backward, SGD step) on a batch of `bs` `size`-px RGB images"
    model = timm.create_model('resnet10t', num_classes=10).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(bs, 3, size, size, device=device), torch.randint(0, 10, (bs,), device=device)
    def step():
        loss = nn.functional.cross_entropy(model(x), y); loss.backward(); opt.step(); opt.zero_grad()
    return time_blocks({'step': lambda *a: step()}, lambda: (x, y, None), reps, rounds=1, warmup=3)['step']

def check_no_host_sync(bs=64, size=64, device='cuda'):
    "Run each compkit mixer's batch events under `set_sync_debug_mode('error')`: any host-device synchronisation raises"
    x, y = TensorImage(torch.randn(bs, 3, size, size,
                                   device=device)), TensorCategory(torch.randint(0, 10, (bs,), device=device))
    pred = torch.randn(bs, 10, device=device)
    for cb in (MixUp(), MixUp(mode='elem'), CutMix(), CutMix(mode='elem'), MixUpCutMix(), MixUpCutMix(mode='elem')):
        learn = learner(cb, device)
        # the first batch makes the Beta distributions' parameters on the device, once
        compkit_step(cb, learn, x, y, pred)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode('error')
        try:
            for _ in range(5): compkit_step(cb, learn, x, y, pred)
        finally: torch.cuda.set_sync_debug_mode('default')
    print('CUDA: no host synchronisation in any compkit mixer (set_sync_debug_mode="error")\n')

def main(bs=64, size=64, threads=1, reps=40):
    torch.set_num_threads(threads)
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if device == 'cuda': check_no_host_sync(bs, size, device)
    else: print('no CUDA here: the host-synchronisation check (set_sync_debug_mode="error") was not run\n')
    torch.manual_seed(0)
    x0 = torch.randn(bs, 3, size, size, device=device)
    y0, pred = torch.randint(0, 10, (bs,), device=device), torch.randn(bs, 10, device=device)
    make_batch = lambda: (TensorImage(x0.clone()), TensorCategory(y0), pred)
    step = step_time(bs, size, device)
    print(f"{device}, {torch.get_num_threads()} thread(s); batch {bs}x3x{size}x{size} fp32, 10 classes; resnet10t "
          f"training step {step*1e3:.1f} ms; best of 5 medians of {reps} calls\n")
    # what a step without mixing computes anyway: fastai's default loss for compkit and fastai, PyTorch's for timm
    fastai_ce, torch_ce = CrossEntropyLossFlat(), nn.CrossEntropyLoss()
    plain = time_blocks({'fastai': lambda x, y, p: fastai_ce(p, y), 'timm': lambda x, y, p: torch_ce(p, y)}, make_batch,
                        reps)
    plain['compkit'] = plain['fastai']
    rows = []
    for name, fns in mixers(bs, device).items():
        t = time_blocks({(lib, i): fns[lib][i] for lib in fns for i in (0, 1)}, make_batch, reps)
        rows.append((name, {lib: (t[lib, 0], t[lib, 1] - plain[lib]) for lib in fns}))
    for i, title in enumerate(('Mixing the batch (images and targets), µs per batch',
                               "What mixing adds to a training step (mixing, and the mixed loss less the plain loss), "
                               "µs per batch")):
        print(f"{title}\n\n| mixer | compkit | fastai | timm | compkit / fastai | compkit / timm |"
              + (" compkit share of step | fastai share | timm share |" if i else ""))
        print('|---|---|---|---|---|---|' + ('---|---|---|' if i else ''))
        for name, t in rows:
            us = lambda k: f"{t[k][i]*1e6:.0f}" if k in t else '—'
            ratio = lambda k: f"{t['compkit'][i] / t[k][i]:.2f}x" if k in t else '—'
            share = lambda k: f"{t[k][i] / step:.3%}" if k in t else '—'
            print(f"| {name} | {us('compkit')} | {us('fastai')} | {us('timm')} | {ratio('fastai')} | {ratio('timm')} |"
                  + (f" {share('compkit')} | {share('fastai')} | {share('timm')} |" if i else ""))
        print()
    print(f"plain loss, µs: fastai CrossEntropyLossFlat {plain['fastai']*1e6:.0f}, torch CrossEntropyLoss "
          f"{plain['timm']*1e6:.0f}")
    bar_chart('added_per_step', {name: {lib: v[1] * 1e6 for lib, v in t.items()} for name, t in rows},
              'µs added to a training step (log scale)', f'What mixing adds to a step ({device}, batch '
                                                         f'{bs}x3x{size}x{size}; the step itself: {step*1e3:.0f} ms)',
                                                         log=True, fmt='{:,.0f}')

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--bs', type=int, default=64); p.add_argument('--size', type=int, default=64)
    p.add_argument('--threads', type=int, default=1, help='torch threads (1: stable timings on a shared CPU)')
    p.add_argument('--reps', type=int, default=40)
    main(**vars(p.parse_args()))
