"""Write README.md from nbs/index.ipynb offline (nbdev_readme needs Quarto): markdown cells as they are, code cells
fenced, text outputs kept."""
import json, re, sys
from pathlib import Path

def nb2md(nb_path):
    nb, out = json.loads(Path(nb_path).read_text()), []
    for c in nb['cells']:
        src = ''.join(c['source']).rstrip()
        if not src or re.match(r'#\|\s*(hide|default_exp)', src): continue
        if c['cell_type'] == 'markdown': out.append(src); continue
        out.append('```python\n' + re.sub(r'^#\|.*\n?', '', src, flags=re.M).rstrip() + '\n```')
        text = ''.join(''.join(o.get('text', '')) for o in c.get('outputs', []) if o.get('output_type') == 'stream')
        if text.strip(): out.append('```\n' + text.rstrip() + '\n```')
    head = '<!-- generated from nbs/index.ipynb by tools/nb2md.py (make export): edit the notebook -->'
    return head + '\n\n' + '\n\n'.join(out) + '\n'

if __name__ == '__main__':
    src, dst = (sys.argv[1:] + ['nbs/index.ipynb', 'README.md'][len(sys.argv)-1:])[:2]
    Path(dst).write_text(nb2md(src))
