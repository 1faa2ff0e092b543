"""Forward + backward time of compkit's scaled_iou_loss against torchvision's generalized_box_iou_loss and PyTorch's
l1_loss."""
import argparse, torch, torch.nn.functional as F
from torch.utils.benchmark import Timer
from torchvision.ops import generalized_box_iou_loss
from compkit.core import get_device
from compkit.box.losses import scaled_iou_loss
from _plot import bar_chart

def boxes(n, device, g):
    "n random valid xyxy boxes in a 512 px image, as torchvision's losses require"
    xy = torch.rand(n, 2, generator=g, device=device) * 256
    return torch.cat([xy, xy + 1 + torch.rand(n, 2, generator=g, device=device) * 256], 1)

def time_fwd_bwd(loss, pred, targ, min_run_time):
    "Median seconds of one forward and backward of `loss(pred, targ, reduction='mean')`"
    def step():
        p = pred.detach().requires_grad_()
        loss(p, targ, reduction='mean').backward()
    step() # warm up
    return Timer('step(); sync()', globals=dict(step=step, sync=torch.cuda.synchronize if pred.is_cuda
                                                else lambda: None)).blocked_autorange(min_run_time=min_run_time).median

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--device', default=None); ap.add_argument('--min_run_time', type=float, default=1.)
    args = ap.parse_args()
    device, g = get_device(args.device), torch.Generator(get_device(args.device)).manual_seed(0)
    losses = {'scaled_iou_loss (compkit)': scaled_iou_loss,
              'generalized_box_iou_loss (torchvision)': generalized_box_iou_loss, 'l1_loss (PyTorch)': F.l1_loss}
    print(f"forward + backward, mean reduction, float32, {device} ({torch.get_num_threads()} threads)\n")
    print('| box pairs | ' + ' | '.join(losses) + ' | scaled IoU / GIoU | scaled IoU / L1 |')
    print('|---:|' + '---:|' * (len(losses) + 2))
    ms = {}
    for n in (10_000, 1_000_000):
        pred, targ = boxes(n, device, g), boxes(n, device, g)
        t = {k: time_fwd_bwd(f, pred, targ, args.min_run_time) for k, f in losses.items()}
        ours, giou, l1 = t.values()
        ms[f'{n:,} pairs'] = {k: v * 1e3 for k, v in t.items()}
        print(f"| {n:,} | " + ' | '.join(f'{v*1e3:.3f} ms' for v in t.values()) + f" | {ours/giou:.2f}x | "
                                                                                  f"{ours/l1:.2f}x |")
    bar_chart('forward_backward', ms, 'ms per forward + backward (log scale)', f'Box losses, float32, {device}',
              log=True)
