"settings.ini is the single source of the version and the requirements: nothing else may drift from it."
from configparser import ConfigParser
from importlib.metadata import version, requires, distribution, PackageNotFoundError
from pathlib import Path
import json, os, re, shutil, subprocess, sys, sysconfig, tomllib, venv
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
import compkit

ROOT = Path(__file__).parents[1]

def settings():
    cfg = ConfigParser(delimiters=['='])
    cfg.read(ROOT/'settings.ini')
    return cfg['DEFAULT']

def reqs(lines): return {(r.name.lower(), str(r.specifier)) for r in map(Requirement, lines)}

def test_version_is_settings_version():
    assert compkit.__version__ == settings()['version'] == version('compkit')

def assert_settings_requirements(meta):
    "`meta`, a package's Requires-Dist lines, are settings.ini's requirements, and its dev extra the dev_requirements"
    meta = [Requirement(r) for r in meta]
    plain = {(r.name.lower(), str(r.specifier)) for r in meta if r.marker is None}
    dev = {(r.name.lower(), str(r.specifier)) for r in meta if r.marker is not None and 'dev' in str(r.marker)}
    assert plain == reqs(settings()['requirements'].split())
    assert dev == reqs(settings()['dev_requirements'].split())

def test_installed_requirements_are_settings_requirements(): assert_settings_requirements(requires('compkit'))

def test_no_other_file_declares_version_or_requirements():
    cfg = ConfigParser(); cfg.read(ROOT/'setup.cfg')
    assert not cfg.has_option('metadata', 'version') and not cfg.has_option('options', 'install_requires')
    assert 'version =' not in (ROOT/'setup.py').read_text() and "cfg['version']" in (ROOT/'setup.py').read_text()
    assert '==' not in (ROOT/'Makefile').read_text(), "pins belong in settings.ini; the Makefile installs .[dev]"
    assert not (ROOT/'requirements.txt').exists()
    project = tomllib.loads((ROOT/'pyproject.toml').read_text())['project'] # nbdev's: everything from setup.py
    assert {'version', 'dependencies', 'optional-dependencies'} <= set(project['dynamic'])
    assert not {'version', 'dependencies', 'optional-dependencies'} & set(project)

def pins():
    "constraints.txt: the exact set `make` installs, as {canonical name: version}"
    lines = [l for l in (ROOT/'constraints.txt').read_text().splitlines() if l.strip() and not l.startswith('#')]
    return {canonicalize_name(r.name): str(r.specifier).removeprefix('==') for r in map(Requirement, lines)}

def ranges(key): return {canonicalize_name(r.name): r.specifier for r in map(Requirement, settings()[key].split())}

def test_ranges_take_the_torch_builds_users_have():
    "torch 2.11-2.14 with the torchvision built for each (a GPU image's 2.11 + 0.26 among them) install beside compkit"
    req = ranges('requirements')
    for torch, vision in [('2.11.0', '0.26.0'), ('2.12.1', '0.27.1'), ('2.13.0+cpu', '0.28.0'), ('2.14.1', '0.29.1')]:
        assert torch in req['torch'] and vision in req['torchvision'], (torch, vision)
    # fastai 2.8.0-2.8.6 cap torch below 2.7-2.10: a range that took them would let pip downgrade a GPU image's torch
    assert '2.8.6' not in req['fastai'] and '2.8.7' in req['fastai'] and '1.14.5' in req['fastcore']
    assert not any('==' in str(s) for s in (req | ranges('dev_requirements')).values()), "pins go in constraints.txt"

def test_constraints_pin_every_requirement_inside_its_range():
    p = pins()
    for name, spec in (ranges('requirements') | ranges('dev_requirements')).items():
        assert name in p and p[name] in spec, f"constraints.txt pins {name}=={p.get(name)}, settings.ini asks {spec}"
    assert 'compkit' not in p and not re.search(r'^-e', (ROOT/'constraints.txt').read_text(), re.M)
    assert '-c constraints.txt -e ".[dev]"' in (ROOT/'Makefile').read_text()

TORCH_WHL = Path('/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl')
VISION_WHL = Path('/opt/pypi-more/files/torchvision-0.28.0-cp311-cp311-manylinux_2_28_x86_64.whl')

def image_packages(dst, skip=('torch', 'torchvision', 'triton', 'compkit')):
    "`dst`: links to this environment's packages less `skip`, standing for what a GPU image ships beside its torch"
    own = {f.parts[0] for name in skip for f in _files(name)}
    dst.mkdir()
    for p in Path(sysconfig.get_paths()['purelib']).iterdir():
        if p.name not in own and p.suffix != '.pth' and p.name != '__pycache__': (dst/p.name).symlink_to(p)
    return dst

def _files(name):
    try: return distribution(name).files or []
    except PackageNotFoundError: return []

@pytest.fixture
def scratch(tmp_path):
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True) # a torch install is 800 MB; pytest keeps the last three runs' folders

def test_pip_install_keeps_the_torch_it_finds(scratch):
    "A real `pip install compkit` into a venv holding torch 2.13 + torchvision 0.28 (not the 2.14.1 `make` pins)"
    if not (TORCH_WHL.exists() and VISION_WHL.exists() and sys.version_info[:2] == (3, 11)):
        pytest.skip(f'needs Python 3.11, {TORCH_WHL} and {VISION_WHL}')
    venv.create(scratch/'env') # pip and setuptools come with the image's other packages below
    py = str(scratch/'env'/'bin'/'python')
    clean = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'} # only what the venv holds is importable
    def run(*args, python=py):
        r = subprocess.run([python, *args], capture_output=True, text=True, cwd=scratch, env=clean)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout
    pip = lambda *a: run('-m', 'pip', '--python', py, 'install', '--no-compile', *a, python=sys.executable)
    pip('--no-deps', TORCH_WHL, VISION_WHL)
    # the image's other packages (fastai, timm, ...) are visible as if installed: nothing to download or unpack
    site = Path(run('-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])').strip())
    (site/'image.pth').write_text(str(image_packages(scratch/'image')))
    src = scratch/'src'
    shutil.copytree(ROOT/'compkit', src/'compkit', ignore=shutil.ignore_patterns('__pycache__'))
    for f in 'setup.py', 'settings.ini', 'pyproject.toml', 'README.md', 'MANIFEST.in': shutil.copy(ROOT/f, src)
    out = pip('--no-build-isolation', src) # the image's setuptools builds it: no build environment to download
    assert re.findall(r'^Successfully installed (.*)$', out, re.M) == [f"compkit-{settings()['version']}"], out
    got = json.loads(run('-c', 'import json, importlib.metadata as m, torch, compkit.core; print(json.dumps({n: '
                         '[m.version(n), m.requires(n)] for n in ("torch", "torchvision", "compkit")} | '
                         '{"imported": [torch.__version__, compkit.core.__file__]}))'))
    assert got['torch'][0] == got['imported'][0] == '2.13.0+cpu' and got['torchvision'][0] == '0.28.0'
    assert Path(got['imported'][1]).is_relative_to(scratch/'env'), got # the installed copy, not this checkout
    assert_settings_requirements(got['compkit'][1]) # what setup.py emits into a built package is settings.ini's
    run('-m', 'pip', 'check')
