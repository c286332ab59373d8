#!/usr/bin/env python3
"""Charts of `cargo xtask bench e2e`: reads DIR/STEM.json, writes DIR/STEM-*.png (STEM: the
second argument, `e2e` by default; `e2e6` for an `--ipv6` run).

Usage: plot_e2e.py DIR
"""
import json
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MODES = ["no-LB", "iptables", "nftables", "xlb"]
STYLE = {"no-LB": "k--", "iptables": "o-", "nftables": "s-", "xlb": "D-"}


def by_n(results, mode, summarize):
    """(N, centre, low, high) by N: `summarize` turns one N's samples of `mode` into the rest."""
    out = []
    for n in sorted(results, key=int):
        samples = results[n].get(mode)
        if samples:
            out.append((int(n), *summarize(samples)))
    return out


def series(results, mode, field):
    """(N, median, min, max) of `field` for `mode`, by N."""
    def summarize(samples):
        v = [s[field] for s in samples]
        return statistics.median(v), min(v), max(v)
    return by_n(results, mode, summarize)


def pooled(results, mode, field):
    """(N, median, first quartile, third quartile) of every run's `field` ratio, by N."""
    def summarize(samples):
        v = sorted(x for s in samples for x in s[field])
        q = statistics.quantiles(v, n=4, method="inclusive") if len(v) > 1 else v * 3
        return q[1], q[0], q[2]
    return by_n(results, mode, summarize)


def plot_modes(ax, results, points):
    """One error-bar line per mode; `points(results, mode)` gives its (N, centre, low, high)."""
    for mode in MODES:
        pts = points(results, mode)
        if not pts:
            continue
        xs = [p[0] for p in pts]
        med = [p[1] for p in pts]
        err = [[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]]
        ax.errorbar(xs, med, yerr=err, fmt=STYLE[mode], label=mode, capsize=3)
    ax.set_xscale("log")
    ax.set_xlabel("services (N)")
    ax.grid(True, which="both", alpha=0.3)


def save(fig, machine, path):
    fig.text(0.01, 0.01, machine, fontsize=6, alpha=0.7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def chart(results, machine, field, ylabel, title, path, logy=False):
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    plot_modes(ax, results, lambda r, m: series(r, m, field))
    if logy:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend()
    save(fig, machine, path)


def ratio_chart(results, machine, path):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=120, sharey=True)
    for ax, field, title in [
        (axes[0], "side_by_side", "to the last service (spread)"),
        (axes[1], "side_by_side_pinned", "one backend per wrk"),
    ]:
        plot_modes(ax, results, lambda r, m, f=field: pooled(r, m, f))
        ax.axhline(0.95, color="grey", linewidth=0.8, linestyle=":")
        ax.set_title(title, fontsize=10)
    axes[0].set_ylabel("conn/s over the ceiling's, side by side (median, quartiles)")
    axes[1].legend()
    save(fig, machine, path)


def main():
    out = Path(sys.argv[1])
    stem = sys.argv[2] if len(sys.argv) > 2 else "e2e"
    data = json.loads((out / f"{stem}.json").read_text())
    results, machine = data["results"], data["machine"]
    chart(results, machine, "last_p50", "µs (median, min–max)",
          "Connect latency (SYN → SYN/ACK) to the last service, p50",
          out / f"{stem}-latency-last.png")
    chart(results, machine, "last_p99", "µs (median, min–max)",
          "Connect latency to the last service, p99", out / f"{stem}-latency-last-p99.png")
    chart(results, machine, "conns_per_s", "connections/s",
          "Short connections (wrk, Connection: close) to the last service",
          out / f"{stem}-connections.png")
    chart(results, machine, "conns_per_s_pinned", "connections/s",
          "Short connections, one backend per wrk process (the ceiling's own pattern)",
          out / f"{stem}-connections-pinned.png")
    chart(results, machine, "gbit_s", "Gbit/s", "One-stream iperf3 throughput",
          out / f"{stem}-throughput.png")
    ratio_chart(results, machine, out / f"{stem}-connections-ratio.png")


if __name__ == "__main__":
    main()
