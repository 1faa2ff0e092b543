"""tools/bench_report.py (`make bench`): each bench/*.py runs once, its tables and plots land in the report under a
machine header, a failure is reported and fails the run."""
import os, subprocess, sys
from pathlib import Path
import pytest, torch

ROOT = Path(__file__).parents[1]
FAST = '''"""Speed of a thing against its peer.
Run: python bench/fast.py"""
import os, sys
from pathlib import Path
import matplotlib; matplotlib.use('agg'); import matplotlib.pyplot as plt
print('## Thing speed\\n\\n| thing | ratio |\\n|---|---|\\n| ours | 2.0x |', sys.argv[1:])
plt.figure(figsize=(2, 2)); plt.plot([1, 2]); plt.savefig(Path(os.environ['BENCH_OUT'])/'curve.png')
'''

def report(tmp_path, *args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]))
    return subprocess.run([sys.executable, str(ROOT/'tools'/'bench_report.py'), '--bench', str(tmp_path/'bench'),
                           '--out', str(tmp_path/'B.md'), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

def test_report_sections_plots_and_failures(tmp_path):
    b = tmp_path/'bench'; (b/'plots'/'fast').mkdir(parents=True)
    (b/'fast.py').write_text(FAST)
    (b/'broken.py').write_text('raise SystemExit("the peer is not installed")')
    (b/'_helper.py').write_text('raise SystemExit("a helper the benchmarks import: never run")')
    (b/'plots'/'fast'/'stale.png').write_bytes(b'from an earlier run')
    r = report(tmp_path, '--args', '--sizes 32')
    assert r.returncode == 1 and 'failed: broken' in r.stdout, r.stdout + r.stderr
    md = (tmp_path/'B.md').read_text()
    head = md.split('\n## ')[0]
    assert f'| {os.cpu_count()} | cpu |' in head and f'| {torch.__version__} |' in head       # machine, device, torch
    fast = md[md.index('## fast'):]
    assert fast.startswith('## fast\n\nSpeed of a thing against its peer.\n\n`python ')
    # demoted heading, table, args passed
    assert "### Thing speed" in fast and "| ours | 2.0x |" in fast and "['--sizes', '32']" in fast
    assert '![curve](bench/plots/fast/curve.png)' in fast
    assert (b/'plots'/'fast'/'curve.png').read_bytes()[:4] == b'\x89PNG'
    assert 'stale' not in md and not (b/'plots'/'fast'/'stale.png').exists()
    assert 'Failed (1)' in md and 'the peer is not installed' in md
    assert md.index('## broken') < md.index('## fast')                                           # file-name order
    # bench/_*.py are not benchmarks
    assert 'helper' not in md

def test_named_benchmarks_only(tmp_path):
    (tmp_path/'bench').mkdir(); (tmp_path/'bench'/'fast.py').write_text(FAST)
    (tmp_path/'bench'/'broken.py').write_text('raise SystemExit(1)')
    r = report(tmp_path, 'fast')
    assert r.returncode == 0, r.stderr
    assert '## fast' in (tmp_path/'B.md').read_text() and '## broken' not in (tmp_path/'B.md').read_text()
    r = report(tmp_path, 'nope')
    assert r.returncode != 0 and 'no benchmark nope' in r.stderr

def test_fit_bench_smoke():
    "bench/fit.py runs end to end on the CPU (a small model, two batches): its table has the floor and the four fits"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]))
    r = subprocess.run([sys.executable, 'bench/fit.py', '--configs', 'resnet10t:16', '--max-batches', '2', '--reps',
                        '1'],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [l for l in r.stdout.splitlines() if l.startswith('| resnet10t, 16 | 2 + 1 |')]
    assert len(rows) == 5 and rows[0].split(' | ')[4] == '1.00x', r.stdout   # the floor, then each fit against it

def test_cv_bench_smoke():
    "bench/cv.py runs end to end on the CPU (2 folds of 200 images, one epoch): compkit's CV, the floor, fastai's loop"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]))
    r = subprocess.run([sys.executable, 'bench/cv.py', '--folds', '2', '--epochs', '1', '--size', '8', '--n', '200'],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [l for l in r.stdout.splitlines() if l.startswith('| ') and 'x |' in l]
    assert len(rows) == 3 and rows[0].split(' | ')[2] == '1.00x', r.stdout # compkit first, the others against it

# each benchmark's smallest settings: fit and cv have their own smoke tests above
QUICK = {'box_loss': ['--min_run_time', '0.01'], 'dataloader': ['--sizes', '16', '--epochs', '1'],
         'ingest': ['--n', '60', '--size', '32', '--repeats', '1'], 'mixup': ['--reps', '1', '--size', '16'],
         'retrieval': ['--gallery', '500', '--classes', '20'], 'schedules': ['--repeats', '1'],
         'tta': ['--epochs', '1', '--reps', '1']}

def test_every_bench_has_a_smoke_test():
    "A benchmark nothing runs breaks unseen (two did: a re-wrapped docstring, a renamed method): each one is run here"
    assert {p.stem for p in (ROOT/'bench').glob('*.py') if not p.name.startswith('_')} == set(QUICK) | {'fit', 'cv'}

@pytest.mark.parametrize('name', QUICK)
def test_bench_smoke(name, tmp_path):
    "The benchmark runs end to end on the CPU with its smallest settings: its table printed, its plot saved"
    env = dict(os.environ, BENCH_OUT=str(tmp_path),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]))
    r = subprocess.run([sys.executable, f'bench/{name}.py', *QUICK[name]], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert '|---' in r.stdout and list(tmp_path.glob('*.png')), r.stdout[-2000:]
