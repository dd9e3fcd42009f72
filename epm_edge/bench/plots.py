"""The three report plots: F1 vs pairs/s, single-pair latency, size vs F1 (one panel per dataset)."""

from __future__ import annotations

from pathlib import Path

MARKERS = ("o", "s", "^", "D")
PLOTS = {"f1_vs_throughput": "F1 vs offline throughput", "latency": "single-pair latency (warm)",
         "size_vs_f1": "model size vs F1"}


def _label(r: dict, multi_threads: bool) -> str:
    return f"{r['variant']}@{r['threads']}" if multi_threads else r["variant"]


def write_plots(rows: list[dict], out: Path) -> dict[str, str]:
    """PNG files under `out`; returns {plot key: file name}."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    ok = [r for r in rows if "error" not in r]
    datasets = list(dict.fromkeys(r["dataset"] for r in ok))
    multi = len({r["threads"] for r in ok if r["runtime"] != "tfidf"}) > 1
    files = {}
    for key, title in PLOTS.items():
        fig, axes = plt.subplots(1, max(len(datasets), 1), figsize=(8 * max(len(datasets), 1), 4.8), squeeze=False)
        for ax, name in zip(axes[0], datasets):
            rs = [r for r in ok if r["dataset"] == name]
            labels = [_label(r, multi) for r in rs]
            if key == "latency":
                ax.boxplot([r["latency_ms"]["samples"] for r in rs], whis=(1, 99), showfliers=False)
                ax.set_xticks(range(1, len(rs) + 1), labels, rotation=45, ha="right")
                ax.set_yscale("log")
                ax.set_ylabel("ms per pair (box: p25-p75, whiskers: p1-p99)")
            else:
                # One colour and marker per variant, named in a legend: labels next to the
                # points overlap where variants cluster.
                for i, (r, lab) in enumerate(zip(rs, labels)):
                    style = {"color": f"C{i % 10}", "marker": MARKERS[i // 10 % len(MARKERS)], "label": lab}
                    if key == "f1_vs_throughput":
                        ax.errorbar(r["pairs_per_s"]["mean"], r["f1"], xerr=r["pairs_per_s"]["sd"], **style)
                    else:
                        ax.plot(r["size_bytes"] / 1e6, r["f1"], linestyle="none", **style)
                ax.set_xlabel("pairs/s (mean ± sd)" if key == "f1_vs_throughput" else "size (MB)")
                ax.set_xscale("log")
                ax.set_ylabel(f"F1 ({rs[0]['split']}, threshold from valid)")
                ax.set_ylim(-0.02, 1.02)
                ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
            ax.set_title(f"{name}: {title}")
            ax.grid(alpha=0.3)
        fig.tight_layout()
        files[key] = f"{key}.png"
        fig.savefig(out / files[key], dpi=120)
        plt.close(fig)
    return files
