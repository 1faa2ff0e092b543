"""The layout of issue 19: one map (notebook = module, bands in dependency order), imports that run one way, and no
line over 120 characters in the code people read."""
import ast, json, re
from pathlib import Path

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

W = 120

def long_lines():
    """{file: [its lines over W]} of the code people read: nbs/ code cells (nbdev's `#|` directives aside), compkit/,
    tests/, bench/, tools/"""
    res = {}
    for nb in sorted((ROOT/'nbs').glob('*.ipynb')):
        lines = [l for c in json.loads(nb.read_text())['cells'] if c['cell_type'] == 'code'
                 for l in ''.join(c['source']).splitlines() if not l.lstrip().startswith('#|')]
        res[nb.relative_to(ROOT).as_posix()] = [l for l in lines if len(l) > W]
    for d in ('compkit', 'tests', 'bench', 'tools'):
        for p in sorted((ROOT/d).rglob('*.py')):
            if p.name == '_modidx.py': continue # nbdev's generated index
            lines = p.read_text().splitlines()
            if d == 'compkit': # nbdev writes the notebook's one-line summary as line 1 and the `__all__` list itself
                lines = [l for i, l in enumerate(lines) if not (i == 0 and l.startswith('"""'))
                         and not l.startswith('__all__')]
            res[p.relative_to(ROOT).as_posix()] = [l for l in lines if len(l) > W]
    return {f: ls for f, ls in res.items() if ls}

def test_no_line_over_120_characters():
    "A why-comment that long goes on its own line above its code; a long call breaks after a comma in its brackets"
    over = {f: len(ls) for f, ls in long_lines().items()}
    assert not over, f'lines over {W} characters (file: how many): {over}'

def test_every_script_compiles():
    "The scripts no test imports (benchmarks, tools) still parse: a re-wrapped line must not swallow code into a string"
    bad = {}
    for d in ('bench', 'tools', 'tests'):
        for p in sorted((ROOT/d).rglob('*.py')):
            try: compile(p.read_text(), str(p), 'exec')
            except SyntaxError as e: bad[p.relative_to(ROOT).as_posix()] = f'line {e.lineno}: {e.msg}'
    assert not bad, bad
