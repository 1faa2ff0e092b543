"""Build the docs site from the notebooks, offline (`make docs`): nbdev's own notebook processors (those
`nbdev_proc_nbs` runs), nbconvert's HTML for the cells and one page template with a sidebar. No notebook cell runs:
the pages show the stored outputs, and show_doc entries are rendered from the exported modules.
Run: python tools/docs.py [OUT_DIR]   (default: settings.ini's doc_path, _docs)"""
import ast, html, importlib, inspect, json, posixpath, re, shutil, sys
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import unquote, urlsplit
import jinja2, nbformat, yaml
from markupsafe import Markup
from execnb.nbio import mk_cell, nb2dict
from fastcore.docments import DocmentTbl, DocmentText
from nbconvert import HTMLExporter
from nbconvert.filters.markdown_mistune import markdown2html_mistune
from nbconvert.preprocessors import CoalesceStreamsPreprocessor, TagRemovePreprocessor
from nbdev.config import get_config
from nbdev.process import NBProcessor, Processor
from nbdev.doclinks import NbdevLookup
from nbdev.processors import FilterDefaults, add_links, add_show_docs, exec_show_docs
from nbdev.showdoc import BasicMarkdownRenderer, show_doc
from pygments.formatters import HtmlFormatter

SITE = Path(__file__).with_name('docs_site')  # page and cell templates, stylesheet

# The bands of the notebooks (issue 19): the first number of each band and its name. One map: the docs sidebar sections,
# the README's rows and the package folders follow it. A notebook goes under the last band at or below its number.
BANDS = [(0, 'Foundation'), (20, 'Classify'), (30, 'Boxes'), (40, 'Schedules'), (50, 'Prediction'), (60, 'Retrieval'),
         (80, 'App'), (90, 'Tutorials'), (99, 'API')]

def section(nb_path):
    "The sidebar section (band) of the notebook at `nb_path`, from its number (None: the home page; 'Other': no number)"
    if nb_path.stem == 'index' and len(nb_path.parts) == 1: return None
    m = re.match(r'(\d+)[a-zA-Z]*_', nb_path.stem)
    return [t for n, t in BANDS if n <= int(m[1])][-1] if m else 'Other'

class _BareSig(DocmentText):
    "fastcore's signature text without the docment comments: they go in the table under it"
    @property
    def params(self): return [(fmt, '') for fmt, _ in super().params]
    @property
    def _ret_str(self): return super()._ret_str.split(' # ')[0]

def _md_cell(v):
    "A markdown table cell: `|` escaped (in code spans too) so that `int | None` stays in its cell"
    v = v if isinstance(v, str) else getattr(v, '__name__', str(v))
    code = lambda t: f'<code>{html.escape(t).replace("|", "&#124;")}</code>'
    return re.sub(r'`([^`]*)`|\|', lambda m: r'\|' if m[1] is None else code(m[1]), v)

class _ParamTable(DocmentTbl):
    "fastcore's Type/Default/Details table of the docments, its cells escaped by `_md_cell`"
    def __init__(self, obj):
        super().__init__(obj)
        for d in self.dm.values():
            d.update({k: _md_cell(v) for k, v in d.items() if k in self._map and v is not inspect._empty})

class TableRenderer(BasicMarkdownRenderer):
    "nbdev's show_doc markdown: the bare signature, the docstring, then the parameters as a table (nbdev<2.4's look)"
    def __init__(self, sym, **kwargs):
        super().__init__(sym, **kwargs)
        self.dm = _BareSig(self.sym, maxline=self.maxline, docstring=False)
    def _repr_markdown_(self):
        md = super()._repr_markdown_()
        # nbdev looks the line up by the bare name a kernel defines; imported from the module the name is qualified
        try: md = md.replace('#LNone)', f'#L{inspect.getsourcelines(self.sym)[1]})')
        except (TypeError, OSError): md = md.replace('#LNone)', ')')
        try: tbl = _ParamTable(self.sym)._repr_markdown_()
        except (TypeError, ValueError): tbl = ''                # no signature (a constant, a builtin)
        return md + ('\n\n' + tbl if tbl else '')

def module(nb):
    "The module a notebook exports to (its `#|default_exp`), from the directives nbdev took out of its cells"
    exp = next((c.directives_['default_exp'][0] for c in nb.cells if 'default_exp' in (c.get('directives_') or {})),
               None)
    return exp and f'{get_config().lib_name}.{exp}'

def _show_doc_calls(cell):
    "The `show_doc(...)` calls a code cell makes"
    trees = cell.parsed_() or []
    called = lambda e: getattr(getattr(e, 'func', None), 'id', None)
    return [t.value for t in trees if isinstance(t, ast.Expr) and called(t.value) == 'show_doc']

class show_docs_from_modules(Processor):
    """Stands in for nbdev's `exec_show_docs`, which re-runs every import, export and show_doc cell in a kernel (and
    stops on a cell mixing an import with code that needs earlier cells): each `show_doc(...)` is evaluated against the
    notebook's exported module, so no notebook cell runs. A call that cannot be evaluated keeps its stored output."""
    def begin(self):
        self.mod, self.ns = module(self.nb), {}
        for m in [f'{get_config().lib_name}.all', self.mod]:
            try: self.ns.update(vars(importlib.import_module(m)) if m else {})
            except ModuleNotFoundError as e:
                if e.name != m: raise
        self.ns['show_doc'] = partial(show_doc, renderer=TableRenderer)

    def __call__(self, cell):
        if cell.cell_type != 'code' or not (calls := _show_doc_calls(cell)): return
        outs = []
        for c in calls:
            src = ast.get_source_segment(cell.source, c)
            try: outs.append(dict(output_type='display_data', metadata={},
                                  data={'text/markdown': eval(src, self.ns)._repr_markdown_()}))
            except Exception as e:
                if cell.get('outputs'): return
                where = self.mod or 'a notebook without #|default_exp'
                raise ValueError(f"{self.nb.path_}: cannot render `{src}` from {where} ({e!r}); "
                                 "export the symbol, or run the notebook so that the cell keeps its output") from e
        cell.outputs = outs

def join_summary(cell):
    "nbdev keeps only the first line of a `> summary` as the page's description: join the lines of one that wraps"
    if cell.cell_type == 'markdown' and re.search(r'^#\s', cell.source, re.M):
        while (s := re.sub(r'^(>.*)\n>\s*', r'\1 ', cell.source, count=1, flags=re.M)) != cell.source: cell.source = s

def _documented(cell):
    return cell.cell_type == 'code' and {'export', 'exports'} & set(cell.directives_) and 'hide' not in cell.directives_

class add_constant_docs(Processor):
    """nbdev's `add_show_docs` gives each exported function and class its entry; this gives one to each public constant
    an exported cell assigns (nbdev puts those in `__all__` too): its name, and its source line with any comment on
    it"""
    def begin(self):
        mod = module(self.nb)
        public = set(getattr(importlib.import_module(mod), '__all__', [])) if mod else set()
        for cell in reversed([c for c in self.nb.cells if _documented(c)]):
            for t in reversed([t for t in cell.parsed_() or [] if isinstance(t, (ast.Assign, ast.AnnAssign))]):
                targets = t.targets if isinstance(t, ast.Assign) else [t.target]
                names = [n.id for tg in targets for n in ast.walk(tg) if isinstance(n, ast.Name) and n.id in public]
                for nm in names[::-1]:
                    src = '\n'.join(cell.source.splitlines()[t.lineno-1:t.end_lineno])
                    entry = mk_cell('#| echo: false\n#| output: asis\n')
                    md = f'---\n\n### {nm}\n\n```python\n{src}\n```'
                    entry.outputs = [dict(output_type='display_data', metadata={}, data={'text/markdown': md})]
                    self.nb.cells.insert(cell.idx_ + 1, entry)

# A code span after "fastai's" names fastai's symbol (or method of `Learner`), even where compkit has a namesake
_re_code = re.compile(r"(?<!\[)(fastai's\s+)?`([^`\s]+?)(\(\))?`(?!\])")

class _Links:
    """nbdev's doc links: compkit's names to their entries, other names fastai has to docs.fast.ai, `fastai's X` to
    fastai's. A bare name several fastai modules define (`encodes`) links only to fastai.data.core's (`show_batch`)."""
    def __init__(self):
        lib = get_config().lib_name
        self.ours = NbdevLookup(strip_libs=(lib, 'fastai'))
        self.fastai = NbdevLookup(strip_libs=('fastai',), incl_libs=('fastai',))
        mods = {}
        for mod, syms in self.fastai.entries.get('fastai', {}).get('syms', {}).items():
            for k in syms: mods.setdefault(k[len(mod)+1:], set()).add(mod)
        self.ambiguous = {k: 'fastai.data.core' in v for k, v in mods.items() if len(v) > 1}
    def _fastai(self, name):
        if name in self.ambiguous: return self.fastai.doc(f'fastai.data.core.{name}') if self.ambiguous[name] else None
        return self.fastai.doc(name)
    def url(self, name, fastai=False):
        if name.split('.')[-1].startswith('_'): return None    # a private name has no entry to link to
        if not fastai and (u := self.ours.doc(name)) and 'docs.fast.ai' not in u: return u
        # after "fastai's", a bare name may be a `Learner` method (fastai's `tta`)
        names = (name, f'Learner.{name}')[:1 + fastai]
        return next((u for n in names if (u := self._fastai(n)) and 'docs.fast.ai' in u), None)
    def sub(self, m):
        u = self.url(m[2], fastai=bool(m[1]))
        return m[0] if u is None else f"{m[1] or ''}[`{m[2]}{m[3] or ''}`]({u})"
    def md(self, md):
        "`md` with its code spans linked, outside fenced code"
        parts = re.split(r'(^```.*?^```[^\n]*$)', md, flags=re.M | re.S)
        return ''.join(p if i % 2 else _re_code.sub(self.sub, p) for i, p in enumerate(parts))

class add_doc_links(Processor):
    "Stands in for nbdev's `add_links`, whose lookup links `fastai's Normalize` to compkit's `Normalize` (see `_Links`)"
    def begin(self): self.links = _Links()
    def __call__(self, cell):
        if cell.cell_type == 'markdown': cell.source = self.links.md(cell.source)
        for o in cell.get('outputs', []):
            if 'text/markdown' in o.get('data', {}):
                md = o['data']['text/markdown']
                o['data']['text/markdown'] = self.links.md(''.join(md))

def _procs():
    swap = {exec_show_docs: show_docs_from_modules, add_links: add_doc_links}
    procs = [swap.get(p, p) for p in FilterDefaults().procs()]
    i = procs.index(add_show_docs) + 1
    return [join_summary] + procs[:i] + [add_constant_docs] + procs[i:]

def _quarto_opts(src):
    "The Quarto options (`#| echo: false`) nbdev leaves at the top of a code cell's `src`, and the code without them"
    lines = src.splitlines(keepends=True)
    n = next((i for i, l in enumerate(lines) if not l.lstrip().startswith('#|')), len(lines))
    # YAML, for a list value (`fig-cap: [a, b]`)
    try: opts = yaml.safe_load(''.join(re.sub(r'^\s*#\|\s?', '', l) for l in lines[:n]))
    except yaml.YAMLError: opts = None
    if not isinstance(opts, dict):
        opts = {m[1]: m[2].strip('"\'') for l in lines[:n] if (m := re.match(r'\s*#\|\s*([\w-]+)\s*:?\s*(.*?)\s*$', l))}
    return {k: str(v).lower() if isinstance(v, bool) else v for k, v in opts.items()}, ''.join(lines[n:])

def _figures(cell, opts):
    """A figure's caption is its cell's Quarto `fig-cap` (a list: one per figure of the cell), shown under it as Quarto
    does; its alt text is `fig-alt`, else the caption"""
    imgs = [o for o in cell.get('outputs', []) if any(k.startswith('image/') for k in o.get('data', {}))]
    per = lambda v: (v if isinstance(v, list) else [v] * len(imgs)) if v else [None] * len(imgs)
    for o, cap, alt in zip(imgs, per(opts.get('fig-cap')), per(opts.get('fig-alt'))):
        md = o.setdefault('metadata', {})
        if cap: md['fig_cap'] = re.sub(r'`([^`]+)`', r'<code>\1</code>', html.escape(str(cap)))
        if alt or cap:
            for k in o['data']:
                if k.startswith('image/'): md.setdefault(k, {})['alt'] = str(alt or cap).replace('`', '')

def _for_nbconvert(nb):
    "nbdev's processed notebook as an nbformat node, with the Quarto cell options it relies on applied"
    cells = []
    for c in nb2dict(nb)['cells']:
        c['source'] = ''.join(c['source'])
        # front matter, nbdev's warning
        if c['cell_type'] == 'raw' or re.fullmatch(r'\s*<!--.*?-->\s*', c['source'], re.S): continue
        if c['cell_type'] == 'code':
            (opts, c['source']), md = _quarto_opts(c['source']), c.setdefault('metadata', {})
            if opts.get('include') == 'false': continue
            if opts.get('output') == 'false': c['outputs'] = []
            if opts.get('echo') == 'false' or not c['source'].strip(): md.setdefault('tags', []).append('remove_input')
            if opts.get('code-fold') in ('true', 'show'):
                md.update(code_fold=opts['code-fold'], code_summary=opts.get('code-summary', 'Code'))
            _figures(c, opts)
            c.pop('has_sd', None)
        cells.append(c)
    node = nbformat.reads(json.dumps(dict(nb2dict(nb), cells=cells)), as_version=4)   # reads joins the outputs' lines
    # a progress bar's \r-updates end as Jupyter shows them
    node, _ = CoalesceStreamsPreprocessor().preprocess(node, {})
    for c in node.cells:
        if c.cell_type == 'code': c.outputs = [o for o in c.outputs if o.output_type != 'stream' or o.text.strip()]
    return node

def _exporter():
    ex = HTMLExporter(template_name='classic', template_file=str(SITE/'cells.html.j2'), exclude_input_prompt=True,
                      exclude_output_prompt=True)
    ex.register_preprocessor(TagRemovePreprocessor(remove_input_tags={'remove_input'}), enabled=True)
    return ex

def _heading_id(s): return re.sub(r'[^\w\-. ]', '', html.unescape(s).lower()).strip().replace(' ', '-')

def _postprocess(body, page, files, doc_url):
    "Site-relative links and lowercase heading ids (nbdev's doc links use them)"
    root = page.root
    body = re.sub(r'(<h[1-6] id=")([^"]*)(")', lambda m: m[1] + _heading_id(m[2]) + m[3], body)
    body = re.sub(r'(class="anchor-link" href="#)([^"]*)(")', lambda m: m[1] + _heading_id(m[2]) + m[3], body)
    # nbdev's doc links point at the published site
    body = body.replace(f'href="{doc_url}', f'href="{root}')
    def nb_link(m):
        url = urlsplit(m[2])
        if url.scheme or url.netloc or not url.path.endswith('.ipynb'): return m[0]
        target = files.get(posixpath.normpath(posixpath.join(posixpath.dirname(page.source), unquote(url.path))))
        return m[0] if target is None else f'{m[1]}{root}{target}{"#" + url.fragment if url.fragment else ""}"'
    return re.sub(r'(href=")([^"]*)"', nb_link, body)

def _method_anchors(page, ids):
    "nbdev links every method in its index; one without its own show_doc entry is linked to its class's entry instead"
    def fix(m):
        file, frag = posixpath.normpath(posixpath.join(posixpath.dirname(page.file), m[2])), m[3]
        if file not in ids or frag in ids[file] or '.' not in frag or frag.rsplit('.', 1)[0] not in ids[file]:
            return m[0]
        return f'{m[1]}{m[2]}#{frag.rsplit(".", 1)[0]}"'
    return re.sub(r'(href=")([^"#:]*\.html)#([^"]+)"', fix, page.html_body)

def _quarto_attrs(md):
    "Quarto's `[text](url){target=\"_blank\" style=...}` (nbdev's source links) as an HTML link"
    link = lambda m: f'<a href="{m[2]}" class="{m[1]}-link" {m[3]}>{m[1]}</a>'
    return re.sub(r'\[([^\]]+)\]\(([^)\s]+)\)\{([^}]*)\}', link, md)

def _local_refs(body):
    "Relative `src`/`href` targets in `body` that are files to copy (not pages, anchors or data)"
    for u in re.findall(r'(?:src|href)="([^"#?]+)', body):
        if not urlsplit(u).scheme and not u.startswith('//') and not u.endswith('.html'): yield unquote(u)

def _text(html_body):
    "The words a reader sees in `html_body`: no tags, scripts, styles or anchor marks, whitespace collapsed"
    s = re.sub(r'<(script|style)\b.*?</\1>', ' ', html_body, flags=re.S | re.I)
    blocks = r'<(?:/?(?:p|div|li|ul|ol|pre|br|hr|table|tr|td|th|h\d|blockquote|details|summary)\b)[^>]*>'
    s = re.sub(blocks, ' ', s, flags=re.I)
    return re.sub(r'\s+', ' ', html.unescape(re.sub(r'<[^>]+>', '', s)).replace('¶', '')).strip()

def search_entries(page):
    "The search index entries of `page`: one per part under an h2/h3 heading (and one for the text above the first)"
    parts = re.split(r'(<h[23] id="[^"]*">.*?</h[23]>)', page.html_body, flags=re.S)
    entries = [dict(t=page.title, s='', h=page.file, x=_text(parts[0]))]
    for head, body in zip(parts[1::2], parts[2::2]):
        m = re.match(r'<h[23] id="([^"]*)">(.*?)</h[23]>', head, re.S)
        entries.append(dict(t=page.title, s=_text(m[2]), h=f'{page.file}#{m[1]}', x=_text(body)))
    return [e for e in entries if e['s'] or e['x']]

def write_search_index(pages, out):
    """The offline search index, `search-index.js` (a script rather than JSON, so that the search box works on pages
    opened from disk, where browsers refuse to fetch files), and the client, `search.js`"""
    index = [e for p in pages for e in search_entries(p)]
    js = json.dumps(index, ensure_ascii=False, separators=(',', ':'))
    (out/'search-index.js').write_text(f'window.SEARCH_INDEX = {js};\n', encoding='utf-8')
    shutil.copy(SITE/'search.js', out/'search.js')
    return index

def build(out=None):
    "Build the site from the notebooks of the project we are in (nbdev reads its settings.ini) into `out`: the pages"
    cfg = get_config()
    nbs, out = cfg.nbs_path, Path(out or cfg.doc_path)
    doc_url = cfg.doc_host.rstrip('/') + '/' + cfg.doc_baseurl.strip('/') + '/'
    paths = sorted(p.relative_to(nbs) for p in nbs.rglob('*.ipynb')
                   if not any(s.startswith(('.', '_')) for s in p.relative_to(nbs).parts))
    pages = []
    for rel in paths:
        proc = NBProcessor(nbs/rel, _procs())
        mod = module(proc.nb)
        proc.process()
        raw = proc.nb.cells and proc.nb.cells[0].cell_type == 'raw'
        fm = yaml.safe_load(proc.nb.cells[0].source.strip().strip('-')) if raw else {}
        file = (rel.parent/fm.get('output-file', rel.with_suffix('.html').name)).as_posix()
        pages.append(SimpleNamespace(source=rel.as_posix(), file=file, title=fm.get('title', rel.stem),
                                     description=fm.get('description', ''), module=mod, section=section(rel),
                                     nb=proc.nb, root='../' * (len(rel.parts) - 1)))
    files = {p.source: p.file for p in pages}
    order = {s: min(i for i, p in enumerate(pages) if p.section == s) for s in {p.section for p in pages}}
    sections = [(s, [p for p in pages if p.section == s])
                for s in sorted(order, key=lambda s: (s is not None, order[s]))]
    if out.exists(): shutil.rmtree(out)
    out.mkdir(parents=True)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(SITE), autoescape=jinja2.select_autoescape(['html', 'j2']))
    tmpl, ex = env.get_template('page.html.j2'), _exporter()
    site = dict(title=cfg.title, version=cfg.version, tagline=cfg.description.split(':')[0], sections=sections)
    for p in pages:
        for c in p.nb.cells:
            for o in c.get('outputs', []):
                if 'text/markdown' in o.get('data', {}):
                    o['data']['text/markdown'] = _quarto_attrs(''.join(o['data']['text/markdown']))
        p.html_body = _postprocess(ex.from_notebook_node(_for_nbconvert(p.nb))[0], p, files, doc_url)
    ids = {p.file: set(re.findall(r' id="([^"]*)"', p.html_body)) for p in pages}
    for p in pages:
        p.html_body = _method_anchors(p, ids)
        heads = re.findall(r'<h([23]) id="([^"]*)">(.*?)</h\1>', p.html_body, re.S)
        p.toc = [(int(l), i, re.sub(r'<[^>]+>|¶', '', t).strip()) for l, i, t in heads]
        desc = markdown2html_mistune(p.description).strip() if p.description else ''
        p.html = tmpl.render(page=dict(vars(p), body=Markup(p.html_body), description_html=Markup(desc)), site=site)
        (out/p.file).parent.mkdir(parents=True, exist_ok=True)
        (out/p.file).write_text(p.html, encoding='utf-8')
        for ref in _local_refs(p.html_body):
            src, dst = (nbs/p.source).parent/ref, (out/p.file).parent/ref
            if src.is_file(): dst.parent.mkdir(parents=True, exist_ok=True); shutil.copy2(src, dst)
    css = HtmlFormatter(style='friendly').get_style_defs('.highlight')
    (out/'site.css').write_text((SITE/'site.css').read_text() + css)
    write_search_index(pages, out)
    return pages

def _defines(mod, nm):
    "Whether `mod` defines `nm` rather than re-exporting it (as `compkit.all` does)"
    o = getattr(mod, nm)
    if inspect.isclass(o) or inspect.isfunction(o): return o.__module__ == mod.__name__
    return re.search(rf'^{re.escape(nm)}\s*[:=]', inspect.getsource(mod), re.M) is not None

def _signature(f):
    try: return inspect.signature(f)
    except (TypeError, ValueError): return None

def _fastai_methods():
    "The method names fastai's classes define (its index): duck-typed protocols such as a loss's `activation`/`decodes`"
    import fastai._modidx
    return {k.rsplit('.', 1)[1] for syms in fastai._modidx.d['syms'].values() for k in syms
            if k.count('.') > 2 and k.rsplit('.', 2)[1][:1].isupper()}

def _hooks(cls):
    "The names the base classes of `cls` define or call on `self`: hooks a subclass fills in"
    names = set()
    for b in cls.__mro__[1:]:
        names |= set(vars(b))
        try: names |= set(re.findall(r'self\.(\w+)\(', inspect.getsource(b)))
        except (TypeError, OSError): pass
    return names

def api_methods(cls, fastai_methods=None):
    """The methods of `cls` that need their own entry: its constructors (class and static methods), the methods it
    adds (no base class defines or calls them, fastai has no method of their name), fastai methods it re-signs"""
    fastai_methods = _fastai_methods() if fastai_methods is None else fastai_methods
    from fastai.callback.core import _events
    hooks, out = _hooks(cls), []
    for k, v in vars(cls).items():
        if k.startswith('_') or k in _events: continue
        if isinstance(v, (classmethod, staticmethod)): out.append(k); continue
        if not inspect.isfunction(v): continue
        base = next((b for b in cls.__mro__[1:] if k in vars(b)), None)
        fastai_base = base is not None and base.__module__.split('.')[0] == 'fastai'
        if fastai_base and _signature(getattr(base, k)) != _signature(v): out.append(k)
        elif k not in hooks and k not in fastai_methods: out.append(k)
    return [f'{cls.__name__}.{k}' for k in out]

def patched_methods(mod):
    "The `Class.method` names `mod` adds to other libraries' classes with fastcore's `@patch` (`Learner.tta10`)"
    out = []
    for f in ast.walk(ast.parse(inspect.getsource(mod))):
        if not isinstance(f, ast.FunctionDef) or f.name.startswith('_') or not f.args.args: continue
        decos = [d.func if isinstance(d, ast.Call) else d for d in f.decorator_list]
        ann = f.args.args[0].annotation
        if any(getattr(d, 'id', None) == 'patch' for d in decos) and isinstance(ann, ast.Name):
            out.append(f'{ann.id}.{f.name}')
    return out

def public_api(mod, fastai_methods=None):
    """The names that need an entry on the page of module `mod`: what its `__all__` defines, the methods its classes add
    (`api_methods`) and the methods it patches onto fastai's classes (`patched_methods`)"""
    fastai_methods = _fastai_methods() if fastai_methods is None else fastai_methods
    names = [nm for nm in getattr(mod, '__all__', []) if _defines(mod, nm)]
    methods = [m for nm in names if inspect.isclass(o := getattr(mod, nm)) for m in api_methods(o, fastai_methods)]
    return names + methods + patched_methods(mod)

def missing_api(pages):
    "The public names of each module (`public_api`) without an entry (a heading of their name) on the module's page(s)"
    ids, fm = {}, _fastai_methods()
    for p in pages:
        if p.module: ids.setdefault(p.module, set()).update(re.findall(r'<h[1-6] id="([^"]*)"', p.html_body))
    missing = {m: [nm for nm in public_api(mod, fm) if _heading_id(nm) not in hs]
               for m, hs in ids.items() if (mod := importlib.import_module(m))}
    return {m: nms for m, nms in missing.items() if nms}

def main(out=None):
    pages = build(out)
    if missing := missing_api(pages):
        sys.exit('docs: public names without a doc entry on their page (export them from a cell that is not hidden; '
                 'a method gets its entry from `show_doc(Class.method)`): ' +
                 '; '.join(f'{m}: {", ".join(nms)}' for m, nms in missing.items()))
    print(f'docs: {len(pages)} pages in {Path(out or get_config().doc_path)}')

if __name__ == '__main__': main(*sys.argv[1:2])
