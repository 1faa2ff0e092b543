"Small models the test modules share: defined once, so that a change to one reaches every test that trains it"
from torch import nn
from fastai.layers import ConvLayer

class SmallNet(nn.Module):
    "A small CNN with one linear head per entry of `n_outs`: a tensor for one head, a tuple for several"
    def __init__(self, *n_outs, c_in=1, width=32): # width: the first convolution's channels (the second has twice)
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c_in, width, 3, 1, 1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, 2 * width, 3, 2, 1), nn.BatchNorm2d(2 * width), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.heads = nn.ModuleList(nn.Linear(8 * width, n) for n in n_outs)
    def forward(self, x):
        f = self.body(x)
        return self.heads[0](f) if len(self.heads) == 1 else tuple(h(f) for h in self.heads)

def small_cnn(n_out=10):
    "Three strided convolutions (32, 64, 128 channels), pooled, and one linear layer of `n_out`"
    return nn.Sequential(nn.Conv2d(1, 32, 3, 1, 1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 64, 3, 2, 1), nn.BatchNorm2d(64), nn.ReLU(),
                         nn.Conv2d(64, 128, 3, 2, 1), nn.BatchNorm2d(128), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, n_out))

def tiny_cnn(n_in=1):
    "Three strided `ConvLayer`s (16, 32, 64 channels: conv, BatchNorm, ReLU), pooled, and a linear layer of 10"
    return nn.Sequential(ConvLayer(n_in, 16, stride=2), ConvLayer(16, 32, stride=2), ConvLayer(32, 64, stride=2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
