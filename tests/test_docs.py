"""The docs site (`make docs`): built from the notebooks' stored outputs without running them, served on 127.0.0.1,
opened in headless Chromium: each page's title, sidebar and public names, no broken internal link or image, nothing
loaded from the network, a screenshot of each page. New notebooks are picked up from nbs/ with no change here."""
import base64, html, importlib.util, json, os, re, shutil, subprocess, sys, threading
from functools import partial
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import unquote, urldefrag, urljoin, urlsplit
from urllib.request import urlopen
import pytest
from PIL import Image

ROOT = Path(__file__).parents[1]
NBS = sorted(p for p in (ROOT/'nbs').rglob('*.ipynb') if not any(s.startswith(('.', '_'))
                                                                 for s in p.relative_to(ROOT/'nbs').parts))
PAGES = [p.relative_to(ROOT/'nbs').as_posix() for p in NBS]
CHROMIUM_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                  '--disable-background-networking', '--disable-component-update', '--disable-sync',
                  '--window-size=1280,900']

def _docs_tool():
    spec = importlib.util.spec_from_file_location('compkit_docs_tool', ROOT/'tools'/'docs.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod

def build(root, out):
    "Run `tools/docs.py` (what `make docs` runs) on the project at `root`"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]))
    return subprocess.run([sys.executable, str(ROOT/'tools'/'docs.py'), str(out)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)

class Html(HTMLParser):
    "What the checks need from a page: ids, links and resources, headings, the sidebar, the text"
    def __init__(self, s):
        super().__init__()
        self.ids, self.links, self.res, self.heads = set(), [], [], {}
        self.side, self.active, self.text, self._in = [], None, [], []
        self.feed(s)
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if 'id' in a: self.ids.add(a['id'])
        if tag == 'a' and 'href' in a: self.links.append(a['href'])
        if tag in ('img', 'script') and a.get('src'): self.res.append(a['src'])
        if tag == 'link' and a.get('href'): self.res.append(a['href'])
        if tag == 'nav' and 'sidebar' in a.get('class', ''): self._in.append('side')
        if tag == 'a' and 'side' in self._in:
            self.side.append(a['href'])
            if a.get('aria-current') == 'page': self.active = a['href']
        if tag in ('h1', 'h2', 'h3'): self._in.append(tag); self.heads.setdefault(tag, []).append('')
    def handle_endtag(self, tag):
        if self._in and (tag == self._in[-1] or (tag == 'nav' and self._in[-1] == 'side')): self._in.pop()
    def handle_data(self, d):
        self.text.append(d)
        for h in ('h1', 'h2', 'h3'):
            if h in self._in: self.heads[h][-1] += d
    @property
    def all_text(self): return re.sub(r'\s+', ' ', ''.join(self.text))

@pytest.fixture(scope='session')
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp('site')
    r = build(ROOT, out)
    assert r.returncode == 0, r.stdout + r.stderr
    pages = {}
    for f in out.rglob('*.html'):
        src = re.search(r'<meta name="generator" content="tools/docs.py from ([^"]+)">', f.read_text())[1]
        pages[src] = f.relative_to(out).as_posix()
    return SimpleNamespace(out=out, pages=pages)

@pytest.fixture(scope='session')
def server(site):
    "The site on 127.0.0.1 at a free port"
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args): pass
    httpd = ThreadingHTTPServer(('127.0.0.1', 0), partial(Quiet, directory=str(site.out)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f'http://127.0.0.1:{httpd.server_address[1]}/'
    httpd.shutdown(); httpd.server_close()

@pytest.fixture(scope='session')
def chromium():
    "Debian's headless Chromium, installed on first use where we are root (as CI is)"
    exe = shutil.which('chromium')
    if exe is None and os.geteuid() == 0:
        env = dict(os.environ, DEBIAN_FRONTEND='noninteractive')
        install = ['apt-get', 'install', '-y', '-q', 'chromium']
        # a fresh machine needs the lists first
        if subprocess.run(install, env=env, capture_output=True, timeout=900).returncode:
            subprocess.run(['apt-get', 'update', '-q'], env=env, capture_output=True, timeout=600)
            subprocess.run(install, env=env, capture_output=True, timeout=900, check=True)
        exe = shutil.which('chromium')
    if exe is None:
        pytest.skip('headless Chromium is missing and only root can install it: apt-get install -y chromium')
    return exe

@pytest.fixture(scope='session')
def shots(tmp_path_factory): return tmp_path_factory.mktemp('screenshots')

def browse(exe, url, tmp, *action):
    r = subprocess.run([exe, *CHROMIUM_FLAGS, f'--user-data-dir={tmp}', *action, url], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout

def nb_title(nb):
    "The notebook's `# Title`, as the page heading shows it"
    src = next(''.join(c['source']) for c in json.loads(nb.read_text())['cells'] if c['cell_type'] == 'markdown')
    return re.search(r'^#\s+(.+?)\s*$', src, re.M)[1]

@pytest.mark.parametrize('nb', PAGES)
def test_page_in_chromium(nb, site, server, chromium, shots, tmp_path):
    assert nb in site.pages, f'nbs/{nb} has no page in the site'
    file = site.pages[nb]
    dom = Html(browse(chromium, server + file, tmp_path/'profile', '--dump-dom'))
    title = re.sub(r'`([^`]*)`', r'\1', nb_title(ROOT/'nbs'/nb))
    assert dom.heads['h1'][0].strip() == title
    # the sidebar lists every page once, this one marked as the current page
    assert sorted(urljoin(file, h) for h in dom.side) == sorted(site.pages.values())
    assert urljoin(file, dom.active) == file
    # every public name of the page's module has its entry (tools/docs.py fails the build otherwise; this is the
    # browser's view)
    src = (ROOT/'nbs'/nb).read_text()
    if (m := re.search(r'#\|\s*default_exp\s+([\w.]+)', src)):
        mod = importlib.import_module(f'compkit.{m[1]}')
        own = [n for n in getattr(mod, '__all__', []) if getattr(getattr(mod, n),
                                                                 '__module__', mod.__name__) == mod.__name__
                                                                 and callable(getattr(mod, n))]
        assert not [n for n in own if n.lower() not in dom.ids], f'{nb}: public names without a doc entry'
        if own: assert 'Details' in dom.all_text   # the show_doc parameter tables
    if nb == 'index.ipynb':
        assert {'Quick start', 'In a notebook'} <= {h.strip('¶ ') for h in dom.heads.get('h2', [])}
        assert 'make test' in dom.all_text and 'valid accuracy after 3 epochs' in dom.all_text  # a stored output
    shot = shots/(Path(file).stem + '.png')
    browse(chromium, server + file, tmp_path/'profile', f'--screenshot={shot}')
    img = Image.open(shot).convert('RGB')
    assert img.size == (1280, 900) and len(img.getcolors(1 << 16) or range(1 << 16)) > 20, f'{shot} looks blank'

def test_links_images_and_no_network(site, server):
    """Crawl from the home page: every internal link and image resolves (anchors too), every page is reachable, nothing
    external is loaded"""
    seen, todo, broken, external, ids = set(), [server + 'index.html'], [], [], {}
    anchors = []
    while todo:
        url = todo.pop()
        if url in seen: continue
        seen.add(url)
        try: body = urlopen(url, timeout=10).read()
        except Exception as e: broken.append(f'{url}: {e}'); continue
        if not url.endswith('.html'): continue
        page = Html(body.decode())
        ids[url] = page.ids
        for res in page.res:
            if res.startswith('data:'):
                kind, data = re.match(r'data:image/(\w+);base64,(.*)', res, re.S).groups()
                assert base64.b64decode(data)[:8].startswith({'png': b'\x89PNG', 'jpeg': b'\xff\xd8'}[kind])
            elif urlsplit(res).scheme or res.startswith('//'): external.append(f'{url} loads {res}')
            else: todo.append(urljoin(url, res))
        for href in page.links:
            target, frag = urldefrag(urljoin(url, href))
            if not target.startswith(server): continue                 # an outside link (fastai docs, the repository)
            todo.append(target)
            if frag: anchors.append((url, target, unquote(frag)))
    assert not broken, broken
    assert not external, external
    assert not [f'{u} -> {t}#{f}' for u, t, f in anchors if f not in ids.get(t, set())], 'links to missing anchors'
    assert {u[len(server):] for u in ids} == set(site.pages.values()), 'pages not reachable from the home page'

def _nb(*cells):
    return json.dumps({'cells': [dict(cell_type=t, metadata={}, source=s,
                                      **({'outputs': o, 'execution_count': 1} if t == 'code' else {}))
                                 for t, s, o in cells], 'metadata': {}, 'nbformat': 4, 'nbformat_minor': 5})

def test_new_notebooks_are_picked_up_not_run_and_checked(tmp_path):
    """A notebook dropped in nbs/ gets its page in the section its name says and shows its stored outputs without
    running; a module page that lacks a public name fails the build, naming it"""
    proj = tmp_path/'proj'; (proj/'nbs').mkdir(parents=True)
    shutil.copy(ROOT/'settings.ini', proj); shutil.copy(ROOT/'nbs'/'index.ipynb', proj/'nbs')
    stored = [{'output_type': 'stream', 'name': 'stdout', 'text': ['stored output 1234\n']}]
    (proj/'nbs'/'95_tutorial.fake.ipynb').write_text(_nb(('markdown', '# Fake tutorial\n\n> A summary that\n> wraps.',
                                                          None), ('code', "raise RuntimeError('a docs build must not "
                                                                          "run notebooks')", stored)))
    (proj/'nbs'/'00_core.ipynb').write_text(_nb(('code', '#|default_exp core', []),
                                                ('markdown', '# Core\n\n> documents nothing', None)))
    r = build(proj, proj/'_docs')
    assert r.returncode != 0 and re.search(r'compkit.core: seed_everything, .*get_device, .*atomic_write',
                                           r.stderr), r.stderr
    page = Html((proj/'_docs'/'tutorial.fake.html').read_text())
    assert 'stored output 1234' in page.all_text and page.heads['h1'] == ['Fake tutorial']
    # nbdev alone keeps the first line of a summary only
    assert 'A summary that wraps.' in page.all_text
    home = (proj/'_docs'/'index.html').read_text()
    assert re.search(r'section-title">Foundation</div>\s*<ul>\s*<li><a href="core.html"', home)
    assert re.search(r'section-title">Tutorials</div>\s*<ul>\s*<li><a href="tutorial.fake.html"', home)

def test_sections_are_the_bands():
    "A notebook's sidebar section is its number's band (the map of package folders, test files and README rows)"
    section = _docs_tool().section
    test = {'index.ipynb': None, '00_core.ipynb': 'Foundation', '17_precision.ipynb': 'Foundation',
            '20_classify.mixup.ipynb': 'Classify', '30_box.ops.ipynb': 'Boxes', '44_schedule.ema.ipynb': 'Schedules',
            '53_predict.cv.ipynb': 'Prediction', '62_retrieval.search.ipynb': 'Retrieval', '80_demo.ipynb': 'App',
            '90_tutorial.mixup.ipynb': 'Tutorials', '91_digits_end_to_end.ipynb': 'Tutorials', '99_all.ipynb': 'API',
            'notes.ipynb': 'Other'}
    assert {k: section(Path(k)) for k in test} == test

def test_one_h1_per_page_and_no_hash_titles(site):
    "Each page has one H1, its title; prose kept in `# ` comments renders as a stack of H1s titled '# ...'"
    bad = {}
    for src, file in site.pages.items():
        text = (site.out/file).read_text()
        page, title = Html(text), re.search(r'<title>(.*?)</title>', text, re.S)[1]
        h1s = page.heads.get('h1', [])
        if len(h1s) != 1 or title.lstrip().startswith('#') or h1s[0].lstrip().startswith('#'): bad[src] = (title, h1s)
    assert not bad, bad

def _search_index(site):
    js = (site.out/'search-index.js').read_text(encoding='utf-8')
    return json.loads(re.fullmatch(r'window\.SEARCH_INDEX = (.*);\s*', js, re.S)[1])

def test_search_index_covers_every_page(site):
    "The offline index has entries for every page, each linking to a part of it that exists"
    index, ids = _search_index(site), {f: Html((site.out/f).read_text()).ids for f in site.pages.values()}
    assert {e['h'].split('#')[0] for e in index} == set(site.pages.values())
    assert not [e['h'] for e in index if '#' in e['h'] and e['h'].split('#', 1)[1] not in ids[e['h'].split('#')[0]]]
    assert all(e['t'] and (e['s'] or e['x']) for e in index)

def _results(dom):
    "The links and text of the search box's results in a page's DOM"
    ul = re.search(r'<ul id="search-results"[^>]*>(.*?)</ul>', dom, re.S)[1]
    return re.findall(r'<a href="([^"]*)"', ul), Html(ul).all_text

def test_search_in_chromium(site, server, chromium, tmp_path):
    "The search box in the browser (`?q=` searches on load): a name's entry first, all words must occur, a miss says so"
    search = lambda page, q: _results(browse(chromium, f'{server}{page}?q={q}', tmp_path/'p', '--dump-dom'))
    hrefs, _ = search('index.html', 'from_folder')
    assert hrefs[0] == 'data.html#devicedataloaders.from_folder', hrefs
    hrefs, text = search('tutorial.tta.html', 'snapshot+ensemble+tta10')
    index = {e['h']: (e['t'] + ' ' + e['s'] + ' ' + e['x']).lower() for e in _search_index(site)}
    assert hrefs and all(all(w in index[h] for w in ('snapshot', 'ensemble', 'tta10')) for h in hrefs)
    assert len(hrefs) < len([h for h, t in index.items() if 'snapshot' in t])   # all words, not any
    _, text = search('core.html', 'zqxj+nothing')
    assert 'No results for' in text
    # opened from disk (`make docs`, then open _docs/index.html), where browsers refuse to fetch a JSON index
    local = (site.out/'index.html').as_uri() + '?q=from_folder'
    hrefs, _ = _results(browse(chromium, local, tmp_path/'p', '--dump-dom'))
    assert hrefs[0] == 'data.html#devicedataloaders.from_folder', hrefs

def test_fastai_names_link_to_fastai_docs(site):
    "A name after \"fastai's\" links to docs.fast.ai despite a compkit namesake, as fastai names compkit lacks do"
    pages = {f: (site.out/f).read_text() for f in site.pages.values()}
    after = [(f, u) for f, h in pages.items() for u in re.findall(r"fastai's\s+<a href=\"([^\"]*)\"", h)]
    assert len(after) > 10 and not [a for a in after if not a[1].startswith('https://docs.fast.ai/')], after
    link = lambda url, name: f'<a href="{url}"><code>{name}</code></a>'
    normalize = link('https://docs.fast.ai/data.transforms.html#normalize', 'Normalize')
    assert f"fastai's {normalize}" in pages['augment.html']
    assert any(link('augment.html#normalize', 'Normalize') in h for h in pages.values())  # compkit's own
    assert any(link('https://docs.fast.ai/learner.html#learner', 'Learner') in h for h in pages.values())

def test_figures_have_alt_text_from_captions(site):
    "Every figure has its caption under it and as its alt text (the cell's `#| fig-cap`), not nbconvert's placeholder"
    bad = []
    for f in site.pages.values():
        text = (site.out/f).read_text()
        for img, cap in re.findall(r'(<img [^>]*>)\s*</div>\s*(<div class="figcaption">.*?</div>)?', text, re.S):
            alt = re.search(r'alt="([^"]*)"', img)
            if not alt or not alt[1].strip() or 'No description' in alt[1] or not cap: bad.append(f'{f}: {img[:80]}')
            elif html.unescape(alt[1]) != html.unescape(re.sub(r'<[^>]+>', '', cap)).strip():
                bad.append(f'{f}: {alt[1]}')
    assert not bad, f'figures without their caption as alt text (add `#| fig-cap: "..."` to the cell): {bad}'

def test_every_public_name_and_method_has_its_entry(site):
    """compkit.all's public API, module by module (`MODULES`), has an entry on its module's page: every name, and
    the methods a user calls (each `DeviceDataLoaders` constructor, `test_dl`, `class_weights`, patched `Learner`
    methods)"""
    import compkit.all
    from fastai.learner import Learner
    tool, fm = _docs_tool(), _docs_tool()._fastai_methods()
    api = {m: tool.public_api(importlib.import_module(f'compkit.{m}'), fm) for m in compkit.all.MODULES}
    names = {n for v in api.values() for n in v}
    assert set(compkit.all.__all__) <= names | {'MODULES'}
    dls_methods = 'from_folder', 'from_df', 'from_tensors', 'from_tensorset', 'from_arrays', 'test_dl', 'class_weights'
    wanted = {f'DeviceDataLoaders.{k}' for k in dls_methods}
    patched = [k for k, v in vars(Learner).items() if str(getattr(v, '__module__', '')).startswith('compkit')]
    wanted |= {f'Learner.{k}' for k in patched}
    assert len(wanted) > 15 and wanted <= names, wanted - names
    ids = {m: Html((site.out/f'{m}.html').read_text()).ids for m in api}
    missing = {m: [n for n in ns if n.lower() not in ids[m]] for m, ns in api.items()}
    assert not {m: ns for m, ns in missing.items() if ns}, missing

def test_readme_rows_are_the_bands():
    """The README's table (from nbs/index.ipynb) has a row per band in the sidebar's order, each naming its test file
    and the modules its notebooks export (one map: tools/docs.py's `BANDS`)"""
    tool, readme = _docs_tool(), (ROOT/'README.md').read_text()
    rows = [[c.strip() for c in l.strip('|').split('|')] for l in readme[readme.index('## What is in it'):].splitlines()
            if l.startswith('|')][2:]                                     # after the header and its rule
    assert [r[0] for r in rows] == [t for _, t in tool.BANDS if t != 'API']
    exports = {}
    for nb in NBS:
        m = re.search(r'#\|\s*default_exp\s+([\w.]+)', nb.read_text())
        if m: exports.setdefault(tool.section(nb), set()).add(m[1])
    for band, pkg, mods, _ in rows:
        assert set(re.findall(r'`([\w.]+)`', mods)) == exports.get(band, set()), band
        tests = re.findall(r'`(test_\w+\.py)`', pkg)
        assert all((ROOT/'tests'/t).exists() for t in tests) and (tests or band == 'Tutorials'), (band, pkg)
