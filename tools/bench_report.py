"""Run every benchmark in bench/ and write BENCHMARKS.md (`make bench`): the machine, then each benchmark's markdown
tables as it printed them and the plots it saved to the folder named by $BENCH_OUT.
Run: python tools/bench_report.py [NAME ...] [--args "--sizes 32 --epochs 2"] [--out BENCHMARKS.md] [--bench bench]"""
import argparse, ast, datetime, os, platform, re, shlex, subprocess, sys, time
from pathlib import Path
import torch
from compkit.core import atomic_write, get_device

ROOT = Path(__file__).resolve().parents[1]

def cpu_name():
    "The processor's model name, from /proc/cpuinfo where there is one"
    try: return next(l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name'))
    except (OSError, StopIteration): return platform.processor() or platform.machine()

def machine():
    "The header table: when, on what, with which torch"
    d = get_device()
    dev = f'{d} ({torch.cuda.get_device_name(d)})' if d.type == 'cuda' else str(d)
    row = [datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z'), cpu_name(), str(os.cpu_count()), dev,
           torch.__version__, platform.python_version()]
    return '| date | CPU | cores | device | torch | Python |\n|---|---|---|---|---|---|\n| ' + ' | '.join(row) + ' |'

def _text(b): return b.decode(errors='replace') if isinstance(b, bytes) else b or ''

def run(script, args, out_dir, report, timeout):
    """Run one benchmark with its plots going to `out_dir`: (its markdown section for the `report` file, whether it
    succeeded)"""
    summary = (ast.get_docstring(ast.parse(script.read_text())) or '').split('\nRun:')[0].strip()
    # plots of an earlier run must not pass for this one's
    for f in out_dir.glob('*.png'): f.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, os.path.relpath(script, ROOT), *args]
    t = time.perf_counter()
    try:
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                           env=dict(os.environ, BENCH_OUT=str(out_dir)))
    except subprocess.TimeoutExpired as e: r = subprocess.CompletedProcess(cmd, f'timed out after {timeout} s',
                                                                           _text(e.stdout), _text(e.stderr))
    secs = time.perf_counter() - t
    ok = r.returncode == 0
    md = [f'## {script.stem}', summary, f'`{shlex.join(["python", *cmd[1:]])}` ({secs:.0f} s)']
    # the script's headings sit under its section
    if ok: md.append(re.sub(r'^(#{1,5}) ', r'#\1 ', r.stdout.strip(), flags=re.M))
    else:
        tail = '\n'.join((r.stdout + r.stderr).splitlines()[-30:])
        md.append(f'**Failed ({r.returncode}).** Last lines of its output:\n\n```\n' + tail + '\n```')
    md += [f'![{p.stem}]({Path(os.path.relpath(p, report.parent)).as_posix()})' for p in sorted(out_dir.glob('*.png'))]
    return '\n\n'.join(m for m in md if m), ok

def main(names=(), args='', out='BENCHMARKS.md', timeout=3600, bench='bench'):
    bench, out = ROOT/bench, ROOT/out
    # `_*.py`: helpers the benchmarks import
    scripts = sorted(s for s in bench.glob('*.py') if not s.name.startswith('_'))
    if unknown := set(names) - {s.stem for s in scripts}:
        sys.exit(f'no benchmark {", ".join(sorted(unknown))} in {bench} (there are: '
                 f'{", ".join(s.stem for s in scripts)})')
    sections, failed = [], []
    for s in [s for s in scripts if not names or s.stem in names]:
        print(f'{os.path.relpath(s, ROOT)} ...', flush=True)
        md, ok = run(s, shlex.split(args), bench/'plots'/s.stem, out, timeout)
        sections.append(md)
        if not ok: failed.append(s.stem)
    head = ('# Benchmarks\n\nWritten by `make bench` (tools/bench_report.py), which runs every benchmark in `bench/` '
            'once on this machine. '
            'Each benchmark measures compkit against its peers in the same run; ratios are in its tables.\n\n'
            + machine())
    with atomic_write(out) as tmp: Path(tmp).write_text('\n\n'.join([head, *sections]) + '\n')
    print(f'wrote {os.path.relpath(out, ROOT)}' + (f'; failed: {", ".join(failed)}' if failed else ''))
    if failed: sys.exit(1)

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('names', nargs='*', help='benchmarks to run (file names in bench/ without .py); default: all')
    p.add_argument('--args', default='', help='arguments passed to every benchmark, e.g. "--sizes 32 --epochs 2" for a '
                                              'quick check')
    p.add_argument('--out', default='BENCHMARKS.md')
    p.add_argument('--timeout', type=int, default=3600, help='seconds one benchmark may run')
    p.add_argument('--bench', default='bench', help='the folder of benchmark scripts')
    a = p.parse_args(); main(a.names, a.args, a.out, a.timeout, a.bench)
