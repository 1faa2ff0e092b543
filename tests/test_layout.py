"""The layout of issue 19: one map (notebook = module, bands in dependency order), imports that run one way, and no
line over 120 characters in the code people read."""
import ast, json, re
from pathlib import Path
import pytest

ROOT = Path(__file__).parents[1]

def notebooks():
    "{module: notebook number} from each notebook's `#|default_exp`"
    res = {}
    for nb in sorted((ROOT/'nbs').glob('*.ipynb')):
        src = ''.join(''.join(c['source']) for c in json.loads(nb.read_text())['cells'] if c['cell_type'] == 'code')
        if (m := re.search(r'^#\|\s*default_exp\s+([\w.]+)', src, re.M)): res[m[1]] = int(nb.name.split('_')[0])
    return res

def compkit_imports(path):
    "The compkit modules the module at `path` imports, dotted from the package root (`box.ops`)"
    pkg = path.relative_to(ROOT/'compkit').with_suffix('').parts[:-1]
    res = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import): names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level: base = '.'.join(['compkit', *pkg[:len(pkg) - node.level + 1], *([base] if base else [])])
            # `from . import core` names modules; `from .data import X` names one module
            names = [f'{base}.{a.name}' for a in node.names] if not node.module else [base]
        else: continue
        res |= {n.removeprefix('compkit.') for n in names if n.startswith('compkit.')}
    return res

def test_each_module_has_a_numbered_notebook():
    mods = {p.relative_to(ROOT/'compkit').with_suffix('').as_posix().replace('/', '.')
            for p in (ROOT/'compkit').rglob('*.py')}
    assert {m for m in mods if not m.endswith('__init__') and m != '_modidx'} == set(notebooks())

def test_imports_run_one_way():
    "A module imports only modules of notebooks numbered before its own: later bands build on earlier ones, never back"
    nums, bad = notebooks(), []
    for mod, n in nums.items():
        path = ROOT/'compkit'/(mod.replace('.', '/') + '.py')
        for dep in compkit_imports(path):
            # `from compkit.box import ops` names a module by its package
            dep = dep if dep in nums else dep.rsplit('.', 1)[0]
            if dep != 'all' and nums.get(dep, -1) >= n: bad.append(f'{mod} ({n}) imports {dep} ({nums.get(dep)})')
    assert not bad, bad

def test_no_band_goes_back():
    "Bands as packages: classify, box, schedule, predict, retrieval each import only the foundation and earlier bands"
    order = ['', 'classify', 'box', 'schedule', 'predict', 'retrieval']
    band = lambda m: order.index(m.split('.')[0]) if m.split('.')[0] in order else 0
    bad = [(m, d) for m in notebooks() if m not in ('demo', 'all')
           for d in compkit_imports(ROOT/'compkit'/(m.replace('.', '/') + '.py')) if band(d) > band(m)]
    assert not bad, bad
