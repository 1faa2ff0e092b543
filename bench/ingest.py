"""Cold ingest and cache reload of 2,000 JPEGs (500x375 to 1024x768, made from the photos scikit-learn ships,
re-encoded at quality 90) into a 128 px letterboxed set: compkit's `load_images` (thread pool, JPEG draft decoding,
on-disk cache) vs a serial PIL decode-and-resize loop, each in a fresh process, with its peak RSS.
Run: python bench/ingest.py [--n 2000] [--size 128] [--repeats 3]"""
import argparse, json, os, platform, resource, subprocess, sys, tempfile, time
from pathlib import Path
import numpy as np
from PIL import Image

def make_jpegs(folder, n, seed=0):
    "`n` JPEGs at quality 90, 500x375 to 1024x768 (a fifth portrait): random crops of the sample photos, some mirrored"
    from sklearn.datasets import load_sample_images
    photos, rng = [Image.fromarray(a) for a in load_sample_images().images], np.random.default_rng(seed)
    for i in range(n):
        im = photos[i % 2]
        w = int(rng.integers(500, 1025)); h = w * 3 // 4
        cw, ch = int(im.width * rng.uniform(0.6, 1)), int(im.height * rng.uniform(0.6, 1))
        x0, y0 = int(rng.integers(0, im.width - cw + 1)), int(rng.integers(0, im.height - ch + 1))
        out = im.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h) if rng.random() > 0.2 else (h, w), Image.BICUBIC)
        if rng.random() < 0.5: out = out.transpose(Image.FLIP_LEFT_RIGHT)
        out.save(folder/f'{i:05d}.jpg', quality=90)

def pil_loop(paths, size):
    "The serial baseline: decode each file with PIL, resize it to fit `size` (antialiased bilinear), letterbox it"
    out = np.zeros((len(paths), size, size, 3), np.uint8)
    for i, p in enumerate(paths):
        im = Image.open(p).convert('RGB')
        s = min(size / im.height, size / im.width)
        nw, nh = max(1, round(im.width * s)), max(1, round(im.height * s))
        top, left = (size - nh) // 2, (size - nw) // 2
        out[i, top:top + nh, left:left + nw] = np.asarray(im.resize((nw, nh), Image.BILINEAR))
    return out

def child(mode, folder, size, cache_dir):
    "Run one `mode` in this (fresh) process; print its seconds and peak RSS above the RSS after imports, as JSON"
    import torch # loaded before the baseline below, as the modes measured import it
    from compkit.ingest import load_images
    paths = sorted(Path(folder).glob('*.jpg'))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    if mode == 'pil': pil_loop(paths, size)
    # what load_images did before: serial, full decode
    elif mode == 'today': load_images(paths, size, cache=False, draft=False, n_workers=1)
    elif mode == 'threads': load_images(paths, size, cache=False, draft=False)
    elif mode == 'threads+draft': load_images(paths, size, cache=False)
    elif mode == 'cold': load_images(paths, size, cache_dir=cache_dir)
    elif mode == 'reload': load_images(paths, size, cache_dir=cache_dir).clone() # clone: every row read from disk
    s = time.perf_counter() - t
    print(json.dumps(dict(s=s, rss_mb=(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)))

LABELS = {'pil': 'serial PIL decode + resize loop', 'today': 'load_images before: serial, full decode',
          'threads': 'load_images, threads, full decode (draft=False, cache=False)',
          'threads+draft': 'load_images, threads + JPEG draft (cache=False)',
          'cold': 'load_images cold: threads + draft, written to the cache',
          'reload': 'load_images from the cache (read into RAM)'}

def run(mode, folder, size, cache_dir):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    args = ['--child', mode, '--folder', str(folder), '--size', str(size), '--cache', str(cache_dir)]
    r = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if r.returncode: raise SystemExit(f'{mode} failed:\n{r.stderr[-2000:]}')
    return json.loads(r.stdout.strip().splitlines()[-1])

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--n', type=int, default=2000); ap.add_argument('--size', type=int, default=128)
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--child'); ap.add_argument('--folder'); ap.add_argument('--cache')
    a = ap.parse_args()
    if a.child: return child(a.child, a.folder, a.size, a.cache)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)/'jpg'; folder.mkdir()
        t = time.perf_counter(); make_jpegs(folder, a.n)
        mb = sum(f.stat().st_size for f in folder.iterdir()) / 2**20
        print(f'{a.n} JPEGs made in {time.perf_counter() - t:.0f} s ({mb:.0f} MB); '
              f'{os.cpu_count()} cores, {platform.processor() or platform.machine()}, best of {a.repeats} runs\n')
        res = {m: [] for m in LABELS}
        for r in range(a.repeats): # the modes take turns, so that a busy spell of a shared machine slows them alike
            for m in LABELS:
                cache = Path(tmp)/f'cache{r}' # cold writes it; reload (next) reads it
                res[m].append(run(m, folder, a.size, cache))
    best = {m: min(v, key=lambda d: d['s']) for m, v in res.items()}
    pil = best['pil']['s']
    print(f'## Ingest: {a.n} JPEGs into a {a.size} px letterboxed set\n')
    print('| ingest | seconds | images/s | vs serial PIL loop | peak RSS above imports (MB) |\n|---|---|---|---|---|')
    for m, d in best.items():
        print(f"| {LABELS[m]} | {d['s']:.2f} | {a.n / d['s']:,.0f} | {pil / d['s']:.1f}x | {d['rss_mb']:.0f} |")
    print(f"\nGoals (issue 22): cold ingest >= 2.5x the serial loop on 2 cores: {pil / best['cold']['s']:.1f}x; "
          f"cache reload >= 20x: {pil / best['reload']['s']:.0f}x.")
    try:
        sys.path.insert(0, str(Path(__file__).parent)); from _plot import bar_chart
        bar_chart('ingest', {f'{a.n} JPEGs -> {a.size} px': {LABELS[m]: a.n / d['s'] for m, d in best.items()}},
                  'images/s (higher is better)', f'Ingest of {a.n} JPEGs, {os.cpu_count()} cores', log=True)
    except ImportError: pass

if __name__ == '__main__': main()
