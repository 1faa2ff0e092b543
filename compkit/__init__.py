__version__ = "0.1.0"

import warnings
# fastai 2.8.7 calls `torch.jit.script`, which torch 2.14 deprecates, when `fastai.layers` is imported:
# that import, quietly
with warnings.catch_warnings():
    warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated')
    import fastai.layers
del warnings
