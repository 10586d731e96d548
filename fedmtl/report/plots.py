"""plots/<metric>.png: each test metric against the round, one line per configuration
(the mean over its runs, a band of one std; dashed where no run of it finished)."""

from __future__ import annotations

from pathlib import Path

from .groups import Report, is_grid, mean_std


def _safe(metric: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in metric.replace("@", "_at_"))


def write_plots(rep: Report) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out = rep.out_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for metric in (m for m in rep.metrics if not is_grid(m)):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        drawn, xs = 0, set()
        for g in rep.groups:
            runs, style = g.complete, "-"
            if not runs:  # show how far an unfinished configuration got
                runs, style = [r for r in g.runs if r.rows], "--"
            curves = [c for c in (r.curve(metric) for r in runs) if c]
            if not curves:
                continue
            rounds = sorted(set().union(*curves))
            xs |= set(rounds)
            stats = [mean_std([c[x] for c in curves if x in c]) for x in rounds]
            mean = [s[0] for s in stats]
            label = g.label if style == "-" else f"{g.label} (unfinished)"
            line, = ax.plot(rounds, mean, style, marker="o", markersize=3, label=label)
            if len(curves) > 1:
                lo = [m - (s or 0.0) for m, s in stats]
                hi = [m + (s or 0.0) for m, s in stats]
                ax.fill_between(rounds, lo, hi, color=line.get_color(), alpha=0.2)
            drawn += 1
        if not drawn:
            plt.close(fig)
            continue
        if len(xs) <= 12:
            ax.set_xticks(sorted(xs))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("round (epochs for the centralised and local-only baselines)")
        ax.set_ylabel(metric)
        ax.set_title(f"test {metric}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        path = out / f"{_safe(metric)}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
