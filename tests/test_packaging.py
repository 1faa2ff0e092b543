"settings.ini is the single source of the version and the requirements: nothing else may drift from it."
from configparser import ConfigParser
from importlib.metadata import version, requires
from pathlib import Path
import tomllib
from packaging.requirements import Requirement
import compkit

ROOT = Path(__file__).parents[1]

def settings():
    cfg = ConfigParser(delimiters=['='])
    cfg.read(ROOT/'settings.ini')
    return cfg['DEFAULT']

def reqs(lines): return {(r.name.lower(), str(r.specifier)) for r in map(Requirement, lines)}

def test_version_is_settings_version():
    assert compkit.__version__ == settings()['version'] == version('compkit')

def test_installed_requirements_are_settings_requirements():
    meta = [Requirement(r) for r in requires('compkit')]
    plain = {(r.name.lower(), str(r.specifier)) for r in meta if r.marker is None}
    dev = {(r.name.lower(), str(r.specifier)) for r in meta if r.marker is not None and 'dev' in str(r.marker)}
    assert plain == reqs(settings()['requirements'].split())
    assert dev == reqs(settings()['dev_requirements'].split())

def test_no_other_file_declares_version_or_requirements():
    cfg = ConfigParser(); cfg.read(ROOT/'setup.cfg')
    assert not cfg.has_option('metadata', 'version') and not cfg.has_option('options', 'install_requires')
    assert 'version =' not in (ROOT/'setup.py').read_text() and "cfg['version']" in (ROOT/'setup.py').read_text()
    assert '==' not in (ROOT/'Makefile').read_text(), "pins belong in settings.ini; the Makefile installs .[dev]"
    assert not (ROOT/'requirements.txt').exists()
    project = tomllib.loads((ROOT/'pyproject.toml').read_text())['project'] # nbdev's: everything from setup.py
    assert {'version', 'dependencies', 'optional-dependencies'} <= set(project['dynamic'])
    assert not {'version', 'dependencies', 'optional-dependencies'} & set(project)
