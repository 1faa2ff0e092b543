import os
import matplotlib
matplotlib.use('agg')
import pytest, torch
from compkit.core import seed_everything

if torch.cuda.is_available():
    # fp32 comparisons of passes of different batch sizes (tta10's chunks) need fp32 convolutions: cuDNN's default,
    # TF32, rounds to 10 bits (make test-cuda also sets NVIDIA_TF32_OVERRIDE=0, for the notebooks). The legacy
    # switches: torch 2.9's fp32_precision ones, set for convolutions alone, make a later read of `allow_tf32` raise
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False

def pytest_configure(config):
    config.addinivalue_line('markers', 'cuda: needs a CUDA GPU; skipped without one, failed when COMPKIT_DEVICE=cuda')

def pytest_runtest_setup(item):
    "A `cuda` test where CUDA is missing: skipped by `make test`, failed by `make test-cuda` (COMPKIT_DEVICE=cuda)"
    if item.get_closest_marker('cuda') is None or torch.cuda.is_available(): return
    if os.environ.get('COMPKIT_DEVICE', '').startswith('cuda'):
        dev = os.environ['COMPKIT_DEVICE']
        pytest.fail(f"COMPKIT_DEVICE={dev}, but torch {torch.__version__} sees no GPU", pytrace=False)
    pytest.skip('needs a CUDA GPU: `make test-cuda` runs it')

@pytest.fixture(autouse=True)
def _seed():
    seed_everything(0)

@pytest.fixture(autouse=True, scope='session')
def _image_cache(tmp_path_factory):
    "`load_images` caches fitted sets in a folder of this run, not the user's ~/.cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('COMPKIT_CACHE', str(tmp_path_factory.mktemp('image_cache')))
        yield

@pytest.fixture(scope='session')
def pair():
    """A small CNN on 28 px digits and an MLP on 16 px digits, the same fixed validation split, each trained once for
    the session (the prediction and retrieval bands both ensemble them)"""
    from torch import nn
    from fastai.layers import Flatten
    from compkit.datasets import digits
    from compkit.data import DeviceDataLoaders
    from compkit.augment import RandomPadCrop
    from compkit.learner import timm_learner
    seed_everything(0) # a session fixture is made before the per-test seed: the same start whatever ran before
    from _nets import tiny_cnn
    cnn = timm_learner(DeviceDataLoaders.from_tensorset(digits(28), bs=64, seed=0, batch_tfms=[RandomPadCrop(3)]),
                       tiny_cnn())
    mlp = timm_learner(DeviceDataLoaders.from_tensorset(digits(16), bs=64, seed=0),
                       nn.Sequential(Flatten(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10)))
    for learn in (cnn, mlp):
        with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(3, 1e-2)
    return cnn, mlp
