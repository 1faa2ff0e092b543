"""A benchmark's figure, saved where `make bench` collects it (the folder $BENCH_OUT; nowhere when a benchmark runs by
itself)."""
import os
from pathlib import Path
import matplotlib; matplotlib.use('agg')
import matplotlib.pyplot as plt

def bar_chart(name:str, # file name without .png
              groups:dict, # {group: {series: value}}: one block of bars per group, one colour per series
              xlabel:str, title:str,
              log:bool=False, # a log-scale axis, for values that span orders of magnitude (linear if any value is <= 0)
              fmt:str='{:,.3g}', # how each bar's value is written beside it
             ):
    "Horizontal bars of `groups`, each labelled with its value, saved as $BENCH_OUT/`name`.png"
    if not os.environ.get('BENCH_OUT'): return
    colours = {s: f'C{i}' for i, s in enumerate(dict.fromkeys(s for g in groups.values() for s in g))}
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.28 * (sum(map(len, groups.values())) + 0.6 * len(groups))),
                           layout='constrained')
    y, ticks = 0., []
    for g in groups.values(): # each group's own bars, one slot each, then a gap
        ticks.append(y + (len(g) - 1) / 2)
        for s, v in g.items():
            ax.barh(y, v, 0.8, color=colours[s], label=s if s not in ax.get_legend_handles_labels()[1] else None)
            ax.annotate(fmt.format(v), (v, y), xytext=(3, 0), textcoords='offset points', va='center', fontsize=7)
            y += 1
        y += 0.6
    ax.set_yticks(ticks, list(groups)); ax.invert_yaxis()
    if log and min(v for g in groups.values() for v in g.values()) > 0: ax.set_xscale('log')
    ax.margins(x=0.15); ax.set_xlabel(xlabel); ax.set_title(title, fontsize=10)
    fig.legend(fontsize=7, loc='outside lower center', ncol=1 if max(map(len, colours)) > 30 else min(len(colours), 4))
    fig.savefig(Path(os.environ['BENCH_OUT'])/f'{name}.png', dpi=110); plt.close(fig)
