"""Images/s of compkit's DeviceDataLoaders vs fastai's default DataBlock pipeline and a torch DataLoader with
torchvision v2 per-item augmentation, and compkit's loader with kornia's augmentations (compkit's `KorniaAugment`) in
place of compkit's own: same digits, same batch size, augmentation as alike as each allows. On a GPU
also the headline loader's images/s at 128 and 224 px and its share of a resnet18 training step.
Run: python bench/dataloader.py [--sizes 32 64] [--epochs 3] [--gpu-sizes 128 224]"""
import argparse, os, platform, statistics, tempfile, time
from pathlib import Path
import torch, timm
from PIL import Image
from torch.utils.data import DataLoader, Dataset
import torchvision.transforms.v2 as T
from fastai.vision.all import (defaults, DataBlock, ImageBlock, CategoryBlock, get_image_files, parent_label,
                               RandomSplitter, Resize, aug_transforms)
from compkit.core import get_device
from compkit.datasets import digits
from compkit.data import DeviceDataLoaders, image_stats
from compkit.augment import (RandomFlip, RandomResizedCrop, RandomAffine, RandomLighting, RandomPerspective,
                             ColorJitter, GaussianBlur, KorniaAugment)
import kornia.augmentation as K
from _plot import bar_chart

def one_pass(dl):
    "Images/s of one full pass over `dl`, timed to the end of the device's work"
    n, t = 0, time.perf_counter()
    for xb, yb in dl: n += len(xb)
    if xb.is_cuda: torch.cuda.synchronize()
    return n / (time.perf_counter() - t)

def images_per_s(dls, epochs):
    """Median images/s of each loader in `dls` over `epochs` passes, after one warm-up pass each; the loaders take
    turns, pass by pass, so that a slow spell of this shared machine slows them all alike"""
    for dl in dls.values(): one_pass(dl)
    runs = {k: [] for k in dls}
    for _ in range(epochs):
        for k, dl in dls.items(): runs[k].append(one_pass(dl))
    return {k: statistics.median(v) for k, v in runs.items()}

class TVDataset(Dataset):
    "Per-item torchvision v2 augmentation over in-memory uint8 tensors"
    def __init__(self, x, y, tfm): self.x, self.y, self.tfm = x, y, tfm
    def __len__(self): return len(self.x)
    def __getitem__(self, i): return self.tfm(self.x[i]), self.y[i]

HEADLINE = 'compkit DeviceDataLoaders + compkit RandomAffine, RandomLighting'

def aug_share(size, bs=64, steps=30, device=None):
    """(images/s of the headline loader, its share of a training step): resnet18 steps (bf16 autocast on a GPU, SGD) on
    the loader's batches vs the same steps on one batch made beforehand; the difference is what loading and augmenting
    adds"""
    device = get_device(device)
    dl = DeviceDataLoaders.from_tensorset(digits(size), bs=bs, seed=0,
                                          device=device, batch_tfms=[RandomAffine(max_rotate=10, max_zoom=1.1),
                                                                     RandomLighting(0.2)]).train
    model = timm.create_model('resnet18', num_classes=10, in_chans=1).to(device).to(memory_format=torch.channels_last)
    opt, loss_func = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), torch.nn.CrossEntropyLoss()
    def step(xb, yb):
        with torch.autocast(device.type, dtype=torch.bfloat16,
                            enabled=device.type == 'cuda'): loss = loss_func(model(xb), yb)
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    def batches(): # the loader's batches, epoch after epoch, as plain tensors
        while True: yield from ((xb.as_subclass(torch.Tensor), yb.as_subclass(torch.Tensor)) for xb, yb in dl)
    def seconds(pairs):
        if device.type == 'cuda': torch.cuda.synchronize()
        t = time.perf_counter()
        for _, (xb, yb) in zip(range(steps), pairs): step(xb, yb)
        if device.type == 'cuda': torch.cuda.synchronize()
        return time.perf_counter() - t
    fixed = next(batches())
    seconds(batches()); seconds(iter(lambda: fixed, None)) # warm-up: kernels chosen, memory pooled
    loaded, bare = min(seconds(batches()) for _ in range(3)), min(seconds(iter(lambda: fixed, None)) for _ in range(3))
    return one_pass(dl), (loaded - bare) / loaded

def main(sizes, epochs, gpu_sizes, bs=64):
    torch.set_num_threads(os.cpu_count())
    d = digits(8)
    root = Path(tempfile.mkdtemp())
    for i, (img, y) in enumerate(zip(d.x, d.y)):
        (root/str(int(y))).mkdir(exist_ok=True); Image.fromarray(img[0].numpy()).save(root/str(int(y))/f'{i}.png')
    rows = []
    for size in sizes:
        ts, loaders = digits(size), {}
        # what aug_transforms() draws, less its warp
        compkit = {HEADLINE: [RandomAffine(max_rotate=10, max_zoom=1.1), RandomLighting(0.2)],
                   'compkit DeviceDataLoaders + compkit RandomFlip, RandomResizedCrop': [
                       RandomFlip(), RandomResizedCrop(scale=(0.8, 1))],
                   "compkit DeviceDataLoaders + fastai aug_transforms": aug_transforms(),
                   # kornia as the peer: the same loader, kornia's per-image augmentations in place of compkit's
                   'compkit DeviceDataLoaders + kornia RandomHorizontalFlip, RandomAffine, ColorJiggle': [KorniaAugment(
                       K.AugmentationSequential(K.RandomHorizontalFlip(), K.RandomAffine(10, scale=(1., 1.1), p=0.75),
                                                K.ColorJiggle(0.2, 0.2, p=0.75)))],
                   'compkit DeviceDataLoaders + compkit RandomPerspective, ColorJitter, GaussianBlur': [
                       RandomPerspective(0.3), ColorJitter(0.2, 0.2, 0, 0), GaussianBlur(5, (0.1, 2.))],
                   'compkit DeviceDataLoaders + kornia RandomPerspective, ColorJitter, RandomGaussianBlur': [
                       KorniaAugment(K.AugmentationSequential(
                           K.RandomPerspective(0.3, p=0.5), K.ColorJitter(0.2, 0.2, p=1.),
                           K.RandomGaussianBlur((5, 5), (0.1, 2.), p=0.5)))]}
        for name, tfms in compkit.items():
            loaders[name] = DeviceDataLoaders.from_tensorset(ts, bs=bs, seed=0, batch_tfms=tfms).train
        block = DataBlock((ImageBlock, CategoryBlock), get_items=get_image_files, get_y=parent_label,
                          splitter=RandomSplitter(0.2, seed=0), item_tfms=Resize(size), batch_tfms=aug_transforms())
        for nw in dict.fromkeys((0, 2, min(16, defaults.cpus))): # 0, 2 and fastai's default
            default = ' (its default here)' if nw == min(16, defaults.cpus) else ''
            name = f'fastai DataBlock (PIL files, Resize, aug_transforms), num_workers={nw}{default}'
            loaders[name] = block.dataloaders(root, bs=bs, num_workers=nw, device=get_device()).train
        mean, std = image_stats(ts.x)
        tfm = T.Compose([T.RandomHorizontalFlip(), T.RandomAffine(degrees=10, scale=(1., 1.1)), T.ColorJitter(0.2, 0.2),
                         T.ToDtype(torch.float32, scale=True), T.Normalize(mean.tolist(), std.tolist())])
        loaders['torch DataLoader + torchvision v2 per item, num_workers=0'] = DataLoader(
            TVDataset(ts.x[:int(len(ts.x) * 0.8)], ts.y[:int(len(ts.x) * 0.8)], tfm), batch_size=bs, shuffle=True,
            drop_last=True)
        res = images_per_s(loaders, epochs)
        rows += [(size, k, v, res[HEADLINE] / v) for k, v in res.items()]
    print(f"\n## DataLoader throughput ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, device "
          f"{get_device()}, bs={bs}, torch {torch.__version__})\n")
    print("The headline row draws what fastai's `aug_transforms()` draws (flip, rotation up to 10 degrees, zoom up to "
          "1.1, lighting 0.2) except its perspective warp. "
          f"fastai's loaders default to `num_workers=min(16, cpus)`: {min(16, defaults.cpus)} here. The loaders take "
          f"turns, pass by pass ({epochs} passes each, median).\n")
    print("| px | loader | images/s | headline / this |\n|---|---|---|---|")
    for size, k, v, r in rows: print(f"| {size} | {k} | {v:,.0f} | {r:.1f}x |")
    bar_chart('images_per_s', {f'{s} px': {k: v for size, k, v, _ in rows if size == s} for s in sizes},
              'images/s (log scale)', f'Training batches, {os.cpu_count()} cores, device {get_device()}, bs {bs}',
              log=True, fmt='{:,.0f}')
    if get_device().type != 'cuda':
        return print('\nNo GPU here: the images/s at 128 and 224 px and the share of a resnet18 step are measured on '
                     'one.')
    print(f"\n### On the GPU ({torch.cuda.get_device_name()}): the headline loader vs a resnet18 training step (bf16 "
          f"autocast, channels_last, SGD), bs={bs}\n")
    print("| px | images/s | share of a training step (goal < 3%) |\n|---|---|---|")
    for size in gpu_sizes:
        ips, share = aug_share(size, bs)
        print(f"| {size} | {ips:,.0f} | {share:.1%} |")

if __name__ == '__main__':
    p = argparse.ArgumentParser(); p.add_argument('--sizes', type=int, nargs='+', default=[32, 64])
    p.add_argument('--epochs', type=int, default=3)
    p.add_argument('--gpu-sizes', type=int, nargs='+', default=[128, 224])
    a = p.parse_args(); main(a.sizes, a.epochs, a.gpu_sizes)
