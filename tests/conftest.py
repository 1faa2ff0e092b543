import matplotlib
matplotlib.use('agg')
import pytest
from compkit.core import seed_everything

@pytest.fixture(autouse=True)
def _seed():
    seed_everything(0)

@pytest.fixture(autouse=True, scope='session')
def _image_cache(tmp_path_factory):
    "`load_images` caches fitted sets in a folder of this run, not the user's ~/.cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('COMPKIT_CACHE', str(tmp_path_factory.mktemp('image_cache')))
        yield
