"The main demo, as `make demo` runs it: a fresh process, accuracy above 97%, learner and plots written, a clean log."
import re, subprocess, sys
from fastai.learner import load_learner
from compkit.datasets import digits

def test_demo_reaches_97_percent_and_writes_its_outputs(tmp_path):
    out, log = tmp_path/'out', tmp_path/'demo.log'
    with open(log, 'w') as f: # stdout to a file, as `make demo > demo.log`: plain lines instead of progress bars
        res = subprocess.run([sys.executable, '-m', 'compkit.demo', '--out', str(out)], stdout=f,
                             stderr=subprocess.PIPE, text=True, timeout=1200) # ~70 s on 2 idle cores
    assert res.returncode == 0, res.stderr[-3000:]
    text = log.read_text()
    acc = float(re.search(r'valid accuracy: ([0-9.]+)', text).group(1))
    assert acc >= 0.97
    # the log: fastai's table (a header, one row per epoch) and the result, no bar frames (46 KB of them before)
    assert log.stat().st_size < 5000 and '\r' not in text, text[:2000]
    lines = text.splitlines()
    assert lines[0].split()[:2] == ['epoch', 'train_loss'] and [l.split()[0] for l in lines[1:11]] == list('0123456789')
    assert len(lines) == 12 and lines[-1].startswith('valid accuracy:'), lines
    assert {p.name for p in out.iterdir()} == {'digits.pkl', 'loss.png', 'confusion_matrix.png'}
    d = digits(32)
    learn = load_learner(out/'digits.pkl')
    preds = learn.get_preds(dl=learn.dls.test_dl(d.x[d.valid_idx], labels=d.y[d.valid_idx]))
    assert (preds[0].argmax(1) == preds[1]).float().mean() >= 0.97   # the saved learner is the trained one
