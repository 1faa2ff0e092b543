"The main demo, as `make demo` runs it: a fresh process, accuracy above 97%, learner and plots written."
import re, subprocess, sys
from fastai.learner import load_learner
from compkit.datasets import digits

def test_demo_reaches_97_percent_and_writes_its_outputs(tmp_path):
    res = subprocess.run([sys.executable, '-m', 'compkit.demo', '--out', str(tmp_path)], capture_output=True, text=True,
                         timeout=1200) # ~70 s on 2 idle cores
    assert res.returncode == 0, res.stderr[-3000:]
    acc = float(re.search(r'valid accuracy: ([0-9.]+)', res.stdout).group(1))
    assert acc >= 0.97
    assert {p.name for p in tmp_path.iterdir()} == {'digits.pkl', 'loss.png', 'confusion_matrix.png'}
    d = digits(32)
    learn = load_learner(tmp_path/'digits.pkl')
    preds = learn.get_preds(dl=learn.dls.test_dl(d.x[d.valid_idx], labels=d.y[d.valid_idx]))
    assert (preds[0].argmax(1) == preds[1]).float().mean() >= 0.97   # the saved learner is the trained one
