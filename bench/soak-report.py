#!/usr/bin/env python3
"""Judges a soak's samples (bench/soak.sh) and plots them as an SVG.

Pass: RSS, descriptors, threads and children at the end within 5 % of the
sample at the 5-minute mark (at half the run when it is shorter), no
unexpected failure, and every reload sent applied. Exit 0 pass, 1 fail.
Plain stdlib: the SVG is written by hand.
"""

import argparse
import csv
import sys

TOLERANCE = 0.05
WATCHED = [("rss_kib", "VmRSS, KiB"), ("fds", "open descriptors"),
           ("threads", "threads"), ("children", "children (traffic paused)")]


def load(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return [{k: float(v) for k, v in r.items()} for r in rows]


def reference(rows):
    last = rows[-1]["t_s"]
    mark = 300.0 if last >= 600 else last / 2
    return min(rows, key=lambda r: abs(r["t_s"] - mark))


def judge(rows):
    ref, final = reference(rows), rows[-1]
    lines, ok = [], True
    for key, label in WATCHED:
        a, b = ref[key], final[key]
        flat = abs(b - a) <= TOLERANCE * a
        ok &= flat
        lines.append(f"{label}: {a:g} at {ref['t_s']:g} s, {b:g} at the end "
                     f"(max {max(r[key] for r in rows):g}) -> {'flat' if flat else 'NOT flat'}")
    failed = final["failed"]
    ok &= failed == 0
    lines.append(f"exchanges: {final['ok']:g} served, {final['refused']:g} refused as expected, "
                 f"{failed:g} failed -> {'ok' if failed == 0 else 'FAILURES'}")
    sent, applied, bad = final["reloads_sent"], final["reloads_ok"], final["reloads_failed"]
    # The count includes nothing at startup: only reloads are counted.
    reloaded = applied == sent and bad == 0
    ok &= reloaded
    lines.append(f"reloads: {sent:g} sent, {applied:g} applied, {bad:g} failed -> "
                 f"{'ok' if reloaded else 'NOT all applied'}")
    zombies = max(r["zombies"] for r in rows)
    quiet = min(r["quiet"] for r in rows)
    lines.append(f"zombies seen at any sample: {zombies:g}; every sample taken with nothing "
                 f"in flight: {'yes' if quiet == 1 else 'no'}")
    return ok, lines


def svg(rows, title):
    w, h, pad_l, pad_r, top = 900, 190, 80, 20, 40
    panels = WATCHED + [("rate", "exchanges/s (10 s)")]
    for i, r in enumerate(rows):
        prev = rows[i - 1] if i else {"t_s": 0.0, "ok": 0.0, "refused": 0.0, "failed": 0.0}
        dt = r["t_s"] - prev["t_s"]
        done = sum(r[k] - prev[k] for k in ("ok", "refused", "failed"))
        r["rate"] = done / dt if dt > 0 else 0.0
    t_max = max(r["t_s"] for r in rows) or 1.0
    height = top + len(panels) * h + 30
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{height}" fill="white"/>',
           f'<text x="{w / 2}" y="22" text-anchor="middle" font-size="15">{title}</text>']
    for n, (key, label) in enumerate(panels):
        y0 = top + n * h
        ph = h - 45
        vals = [r[key] for r in rows]
        lo, hi = min(vals), max(vals)
        if key != "rate":
            lo = 0.0
        if hi - lo < 1e-9:
            hi = lo + 1
        hi += (hi - lo) * 0.1
        x = lambda t: pad_l + (w - pad_l - pad_r) * t / t_max  # noqa: E731
        y = lambda v: y0 + 20 + ph * (1 - (v - lo) / (hi - lo))  # noqa: E731
        out.append(f'<text x="{pad_l}" y="{y0 + 14}" font-weight="bold">{label}</text>')
        out.append(f'<rect x="{pad_l}" y="{y0 + 20}" width="{w - pad_l - pad_r}" height="{ph}" '
                   f'fill="none" stroke="#999"/>')
        for frac in (0, 0.5, 1):
            v = lo + (hi - lo) * frac
            out.append(f'<text x="{pad_l - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.4g}</text>')
        for m in range(0, int(t_max // 60) + 1, max(1, int(t_max // 60) // 10 or 1)):
            out.append(f'<line x1="{x(m * 60):.1f}" y1="{y0 + 20 + ph}" x2="{x(m * 60):.1f}" '
                       f'y2="{y0 + 24 + ph}" stroke="#999"/>')
            out.append(f'<text x="{x(m * 60):.1f}" y="{y0 + 36 + ph}" text-anchor="middle">'
                       f'{m} min</text>')
        pts = " ".join(f"{x(r['t_s']):.1f},{y(r[key]):.1f}" for r in rows)
        out.append(f'<polyline points="{pts}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("csv")
    p.add_argument("--svg")
    p.add_argument("--title", default="wininetd soak")
    a = p.parse_args()
    rows = load(a.csv)
    if len(rows) < 2:
        print("FAIL: fewer than two samples")
        sys.exit(1)
    ok, lines = judge(rows)
    for line in lines:
        print(line)
    if a.svg:
        with open(a.svg, "w") as f:
            f.write(svg(rows, a.title))
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
