"A benchmark's figure, saved where `make bench` collects it (the folder $BENCH_OUT; nowhere when a benchmark runs by itself)."
import os
from pathlib import Path
import matplotlib; matplotlib.use('agg')
import matplotlib.pyplot as plt

def bar_chart(name:str, # file name without .png
              groups:dict, # {group: {series: value}}: one block of bars per group, one colour per series
              xlabel:str, title:str,
              log:bool=False, # a log-scale axis, for values that span orders of magnitude
              fmt:str='{:,.3g}', # how each bar's value is written beside it
             ):
    "Horizontal bars of `groups`, each labelled with its value, saved as $BENCH_OUT/`name`.png"
    if not os.environ.get('BENCH_OUT'): return
    series = list(dict.fromkeys(s for g in groups.values() for s in g))
    h = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.28 * len(series) * (len(groups) + 0.6)), layout='constrained')
    for j, s in enumerate(series):
        ys = [i + j * h for i, g in enumerate(groups.values()) if s in g]
        vs = [g[s] for g in groups.values() if s in g]
        ax.barh(ys, vs, h, label=s, color=f'C{j}')
        for y, v in zip(ys, vs): ax.annotate(fmt.format(v), (v, y), xytext=(3, 0), textcoords='offset points', va='center', fontsize=7)
    ax.set_yticks([i + h * (len(series) - 1) / 2 for i in range(len(groups))], list(groups)); ax.invert_yaxis()
    if log: ax.set_xscale('log')
    ax.margins(x=0.15); ax.set_xlabel(xlabel); ax.set_title(title, fontsize=10)
    fig.legend(fontsize=7, loc='outside lower center', ncol=1 if max(map(len, series)) > 30 else min(len(series), 4))
    fig.savefig(Path(os.environ['BENCH_OUT'])/f'{name}.png', dpi=110); plt.close(fig)
