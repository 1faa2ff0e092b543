"""Images/s of compkit's DeviceDataLoaders vs fastai's default DataBlock pipeline and a torch DataLoader with
torchvision v2 per-item augmentation: same digits, same batch size, augmentation as alike as each allows.
Run: python bench/dataloader.py [--sizes 32 64] [--epochs 3]"""
import argparse, os, platform, statistics, tempfile, time
from pathlib import Path
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
import torchvision.transforms.v2 as T
from fastai.vision.all import DataBlock, ImageBlock, CategoryBlock, get_image_files, parent_label, RandomSplitter, Resize, aug_transforms
from compkit.core import get_device
from compkit.datasets import digits
from compkit.data import DeviceDataLoaders, image_stats
from compkit.augment import RandomFlip, RandomResizedCrop, RandomAffine, RandomLighting
from _plot import bar_chart

def images_per_s(dl, epochs):
    "Median images/s over `epochs` full passes, after one warm-up pass; each batch is touched so lazy work is done"
    def one_pass():
        n, t = 0, time.perf_counter()
        for xb, yb in dl: n += len(xb); xb.sum().item()
        return n / (time.perf_counter() - t)
    one_pass()
    return statistics.median(one_pass() for _ in range(epochs))

class TVDataset(Dataset):
    "Per-item torchvision v2 augmentation over in-memory uint8 tensors"
    def __init__(self, x, y, tfm): self.x, self.y, self.tfm = x, y, tfm
    def __len__(self): return len(self.x)
    def __getitem__(self, i): return self.tfm(self.x[i]), self.y[i]

HEADLINE = 'compkit DeviceDataLoaders + compkit RandomAffine, RandomLighting'

def main(sizes, epochs, bs=64):
    torch.set_num_threads(os.cpu_count())
    d = digits(8)
    root = Path(tempfile.mkdtemp())
    for i, (img, y) in enumerate(zip(d.x, d.y)):
        (root/str(int(y))).mkdir(exist_ok=True); Image.fromarray(img[0].numpy()).save(root/str(int(y))/f'{i}.png')
    rows = []
    for size in sizes:
        ts, res = digits(size), {}
        compkit = {HEADLINE: [RandomAffine(max_rotate=10, max_zoom=1.1), RandomLighting(0.2)], # what aug_transforms() draws, less its warp
                   'compkit DeviceDataLoaders + compkit RandomFlip, RandomResizedCrop': [RandomFlip(), RandomResizedCrop(scale=(0.8, 1))],
                   "compkit DeviceDataLoaders + fastai aug_transforms": aug_transforms()}
        for name, tfms in compkit.items():
            res[name] = images_per_s(DeviceDataLoaders.from_tensorset(ts, bs=bs, seed=0, batch_tfms=tfms).train, epochs)
        block = DataBlock((ImageBlock, CategoryBlock), get_items=get_image_files, get_y=parent_label, splitter=RandomSplitter(0.2, seed=0),
                          item_tfms=Resize(size), batch_tfms=aug_transforms())
        for nw in (0, 2):
            fdls = block.dataloaders(root, bs=bs, num_workers=nw, device=get_device())
            res[f'fastai DataBlock (PIL files, Resize, aug_transforms), num_workers={nw}'] = images_per_s(fdls.train, epochs)
        mean, std = image_stats(ts.x)
        tfm = T.Compose([T.RandomHorizontalFlip(), T.RandomAffine(degrees=10, scale=(1., 1.1)), T.ColorJitter(0.2, 0.2),
                         T.ToDtype(torch.float32, scale=True), T.Normalize(mean.tolist(), std.tolist())])
        tdl = DataLoader(TVDataset(ts.x[:int(len(ts.x) * 0.8)], ts.y[:int(len(ts.x) * 0.8)], tfm), batch_size=bs, shuffle=True, drop_last=True)
        res['torch DataLoader + torchvision v2 per item, num_workers=0'] = images_per_s(tdl, epochs)
        rows += [(size, k, v, res[HEADLINE] / v) for k, v in res.items()]
    print(f"\n## DataLoader throughput ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, device {get_device()}, bs={bs}, torch {torch.__version__})\n")
    print("The headline row draws what fastai's `aug_transforms()` draws (flip, rotation up to 10 degrees, zoom up to 1.1, lighting 0.2) except its perspective warp.\n")
    print("| px | loader | images/s | headline / this |\n|---|---|---|---|")
    for size, k, v, r in rows: print(f"| {size} | {k} | {v:,.0f} | {r:.1f}x |")
    bar_chart('images_per_s', {f'{s} px': {k: v for size, k, v, _ in rows if size == s} for s in sizes}, 'images/s (log scale)',
              f'Training batches, {os.cpu_count()} cores, device {get_device()}, bs {bs}', log=True, fmt='{:,.0f}')

if __name__ == '__main__':
    p = argparse.ArgumentParser(); p.add_argument('--sizes', type=int, nargs='+', default=[32, 64]); p.add_argument('--epochs', type=int, default=3)
    a = p.parse_args(); main(a.sizes, a.epochs)
