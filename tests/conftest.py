import matplotlib
matplotlib.use('agg')
import pytest
from compkit.core import seed_everything

@pytest.fixture(autouse=True)
def _seed():
    seed_everything(0)
