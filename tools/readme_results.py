#!/usr/bin/env python
"""Write the results into README.md and docs/results.md, between marker comments.

README.md carries the headline: a short table of kdnb's accuracies beside the paper's, built from
``figures/results.csv`` (written by ``08_results``), the accuracy figure and one sentence of
conclusion read off the same numbers. docs/results.md quotes ``figures/results_table.md`` (written by
``08_results``) and ``figures/ablation_table.md`` (written by ``09_mask_ablation``) verbatim. No number
in either is typed by hand; ``tests/test_readme.py`` fails when a file and the results disagree.

    python tools/readme_results.py          # rewrite the generated blocks
    python tools/readme_results.py --check  # exit 1 if they are stale
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RESULTS_DOC = ROOT / "docs" / "results.md"
FILES = (README, RESULTS_DOC)
# quoted verbatim (headings pushed down two levels) between <!-- name:start --> and <!-- name:end -->
BLOCKS = {"results": ROOT / "figures" / "results_table.md", "ablation": ROOT / "figures" / "ablation_table.md"}
# the headline (<!-- headline:start -->): built from these
HEADLINE_CSV = ROOT / "figures" / "results.csv"
HEADLINE_FIGURE = ROOT / "figures" / "08_accuracy.png"
LABELS = {"baseline": "baseline", "kd": "KD", "kd_fa": "KD+FA", "kd_at": "KD+AT", "kd_fa_at": "KD+FA+AT"}


def _quoted(path: Path) -> str:
    """The file's body with its headings pushed down two levels (it sits under a `##` section)."""
    lines = []
    for line in path.read_text().strip("\n").splitlines():
        lines.append("##" + line if line.startswith("#") else line)
    return "\n".join(lines)


def _num(value: str | None) -> float:
    try:
        return float(value) if value not in (None, "") else math.nan
    except ValueError:
        return math.nan


def _signed(x: float) -> str:
    return "–" if math.isnan(x) else f"{x:+.2f}"


def _delta(row: dict, ref: str) -> str:
    """``+5.70 [1.55, 9.86]`` for a table cell; "reference" for the reference itself."""
    if row["config"] == ref:
        return "reference"
    d = _num(row.get(f"delta_vs_{ref}"))
    if math.isnan(d):
        return "–"
    lo, hi = _num(row.get(f"delta_vs_{ref}_ci_low")), _num(row.get(f"delta_vs_{ref}_ci_high"))
    ci = "" if math.isnan(lo) else f" [{lo:+.2f}, {hi:+.2f}]"
    mde = _num(row.get(f"delta_vs_{ref}_mde"))
    return f"{d:+.2f}{ci}" + ("" if math.isnan(mde) else f", MDE {mde:.2f}")


def _difference(row: dict, ref: str) -> str:
    """The same in prose: ``+5.70 pp, 95 % CI [+1.55, +9.86], significant``."""
    d = _num(row.get(f"delta_vs_{ref}"))
    lo, hi = _num(row.get(f"delta_vs_{ref}_ci_low")), _num(row.get(f"delta_vs_{ref}_ci_high"))
    ci = "" if math.isnan(lo) else f", 95 % CI [{lo:+.2f}, {hi:+.2f}]"
    return f"{d:+.2f} pp{ci}, {row.get(f'delta_vs_{ref}_label') or 'no interval'}"


def _conclusion(rows: list[dict], n_seeds: str) -> str:
    """One sentence, read off the numbers: KD against the baseline, then FA/AT added to KD against KD."""
    by = {r["config"]: r for r in rows}
    parts = []
    if "kd" in by and "baseline" in by:
        kd = by["kd"]
        d = _num(kd.get("delta_vs_baseline"))
        verb = "beats" if kd.get("delta_vs_baseline_label") == "significant" and d > 0 else (
            "falls below" if kd.get("delta_vs_baseline_label") == "significant" else "does not differ significantly from")
        parts.append(f"KD {verb} the baseline ({_difference(kd, 'baseline')})")
        if verb != "beats":  # whether distillation helps at all is then said by the others' rows
            above = [by[c] for c in ("kd_fa", "kd_at", "kd_fa_at") if c in by
                     and by[c].get("delta_vs_baseline_label") == "significant" and _num(by[c].get("delta_vs_baseline")) > 0]
            if above:
                names = [LABELS[r["config"]] for r in above]
                listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
                parts[-1] += (f", while {listed} "
                              f"{'does' if len(above) == 1 else 'do'} beat it ("
                              + "; ".join(f"{LABELS[r['config']]} {_difference(r, 'baseline')}" for r in above) + ")")
    added = [by[c] for c in ("kd_fa", "kd_at", "kd_fa_at") if c in by]
    if added and "kd" in by:
        names = [LABELS[r["config"]] for r in added]
        better = [r for r in added if r.get("delta_vs_kd_label") == "significant" and _num(r.get("delta_vs_kd")) > 0]
        worse = [r for r in added if r.get("delta_vs_kd_label") == "significant" and _num(r.get("delta_vs_kd")) < 0]
        if not better and not worse:
            deltas = ", ".join(f"{LABELS[r['config']]} {_signed(_num(r.get('delta_vs_kd')))}" for r in added)
            covered = ("every 95 % interval covers 0" if all(r.get("delta_vs_kd_label") == "not significant"
                                                              for r in added) else "no interval excludes 0")
            parts.append(f"none of {', '.join(names[:-1])} or {names[-1]} beats KD significantly "
                         f"(Δ vs KD in pp: {deltas}; {covered})" if len(names) > 1 else
                         f"{names[0]} does not beat KD significantly ({_difference(added[0], 'kd')})")
        else:
            for r in better:
                parts.append(f"{LABELS[r['config']]} beats KD ({_difference(r, 'kd')})")
            for r in worse:
                parts.append(f"{LABELS[r['config']]} falls below KD ({_difference(r, 'kd')})")
            rest = [LABELS[r["config"]] for r in added if r not in better and r not in worse]
            if rest:
                parts.append(f"{', '.join(rest)} {'does' if len(rest) == 1 else 'do'} not differ from KD significantly")
    if not parts:
        return ""
    paper = {c: _num(by[c].get("paper_test_acc")) for c in ("kd", "kd_fa_at") if c in by}
    if len(paper) == 2 and not any(math.isnan(v) for v in paper.values()):
        parts[-1] += f" — the paper's one run puts KD+FA+AT {paper['kd_fa_at'] - paper['kd']:+.2f} pp above KD"
    text = "; ".join(parts)
    return f"**Conclusion ({n_seeds} seeds, seed-paired differences):** {text}."


def _resolution(rows: list[dict], n_seeds: str) -> str:
    """What the table can and cannot resolve: the range of its minimum detectable effects against KD
    and the baseline, set against the differences the paper reports between KD and its additions."""
    parts = []
    for ref, name in (("baseline", "the baseline"), ("kd", "KD")):
        # against KD: the configurations that add to it (the baseline's row only mirrors KD's)
        others = [r for r in rows if r["config"] != ref and (ref != "kd" or r["config"] != "baseline")]
        mdes = [m for r in others if not math.isnan(m := _num(r.get(f"delta_vs_{ref}_mde")))]
        if mdes:
            span = f"{min(mdes):.2f}" if len(mdes) == 1 else f"{min(mdes):.2f}–{max(mdes):.2f}"
            parts.append(f"{span} pp against {name}")
    if not parts:
        return ""
    text = (f"**What it can resolve:** a paired t-test over these {n_seeds} seeds detects, with 80 % power at "
            f"α = 0.05, a true difference of about {' and '.join(parts)} (the MDE beside each Δ, from the "
            "observed SD of the paired differences); a smaller true effect would usually read as not significant.")
    by = {r["config"]: r for r in rows}
    paper = {c: _num(by[c].get("paper_test_acc")) for c in ("kd", "kd_fa", "kd_at", "kd_fa_at") if c in by}
    mde_kd = {c: _num(by[c].get("delta_vs_kd_mde")) for c in ("kd_fa", "kd_at", "kd_fa_at") if c in by}
    pairs = [(c, paper[c] - paper["kd"], mde_kd[c]) for c in mde_kd
             if "kd" in paper and not math.isnan(paper.get(c, math.nan)) and not math.isnan(mde_kd[c])]
    if pairs:
        below = [c for c, d, m in pairs if abs(d) < m]
        gaps = ", ".join(f"{LABELS[c]} {d:+.2f}" for c, d, _ in pairs)
        if len(below) == len(pairs):
            text += (f" The paper's differences from KD (pp: {gaps}) are all below these MDEs: this table can "
                     "neither confirm nor rule them out.")
        else:
            text += (f" Of the paper's differences from KD (pp: {gaps}), "
                     f"{', '.join(LABELS[c] for c in below) or 'none'} lie below their MDE.")
    return text


def _headline(path: Path, figure: Path | None = None) -> str:
    """The README's headline: one sentence of conclusion, kdnb's accuracy beside the paper's for the
    first teacher seed's block, one line of provenance and the accuracy figure."""
    with path.open(newline="") as f:
        all_rows = list(csv.DictReader(f))
    teachers = sorted({r.get("teacher_seed", "") for r in all_rows}, key=lambda s: (s == "", _num(s)))
    teacher = teachers[0] if teachers else ""
    rows = [r for r in all_rows if r.get("teacher_seed", "") == teacher]
    first = rows[0]
    paper_base = _num(next((r["paper_test_acc"] for r in rows if r["config"] == "baseline"), None))
    seeds = first.get("prov_seeds") or "?"
    n = first.get("n_seeds") or "?"
    conclusion = _conclusion(rows, n)
    lines = [conclusion, ""] if conclusion else []
    lines += [
        f"Test top-1 accuracy on CIFAR-10, mean ± std over {n} seeds ({seeds}); Δ: seed-paired difference in "
        "percentage points with its 95 % interval and, where recorded, its minimum detectable effect (MDE). "
        "The paper's numbers are its best test epoch of one run.",
        "",
        "| configuration | kdnb (%) | Δ vs baseline (pp) | Δ vs KD (pp) | paper (%) | paper Δ vs baseline (pp) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        paper = _num(r.get("paper_test_acc"))
        lines.append(
            f"| {r.get('label') or LABELS.get(r['config'], r['config'])} "
            f"| {_num(r['test_acc_mean']):.2f} ± {_num(r['test_acc_std']):.2f} "
            f"| {_delta(r, 'baseline')} | {_delta(r, 'kd')} "
            f"| {'–' if math.isnan(paper) else f'{paper:.2f}'} | {_signed(paper - paper_base)} |")
    prov = [f"profile `{first.get('prov_profile', '?')}`"]
    if teacher != "":
        prov.append(f"teacher seed {teacher}" + (" (the other teachers' blocks: [docs/results.md](docs/results.md))"
                                                 if len(teachers) > 1 else ""))
    elif first.get("prov_teacher"):
        prov.append(f"teacher: {first['prov_teacher']}")
    for key, name in (("prov_student", "student"), ("prov_train/val/test images", "train/val/test images"),
                      ("prov_epochs (max)", "epochs (max)"), ("prov_hardware", "hardware"), ("prov_kdnb", "kdnb"),
                      ("prov_date", "date")):
        if first.get(key):
            prov.append(f"{name}: {first[key]}")
    resolution = _resolution(rows, n)
    if resolution:
        lines += ["", resolution]
    lines += ["", "Runs: " + "; ".join(prov) + "."]
    if figure is not None and figure.is_file():
        rel = figure.relative_to(ROOT).as_posix()
        lines += ["", f"![test accuracy per configuration, kdnb's seeds beside the paper's one run]({rel})"]
    return "\n".join(lines)


def render(text: str) -> str:
    """``text`` with every generated block it has (quoted tables, the headline) rewritten."""
    blocks = {name: (lambda path=path: _quoted(path) if path.is_file() else None) for name, path in BLOCKS.items()}
    blocks["headline"] = lambda: _headline(HEADLINE_CSV, HEADLINE_FIGURE) if HEADLINE_CSV.is_file() else None
    sources = {**BLOCKS, "headline": HEADLINE_CSV}
    for name, build in blocks.items():
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        if start not in text:
            continue
        body = build()
        if body is None:
            body = f"(`{sources[name].relative_to(ROOT)}` has not been written yet)"
        text = re.sub(re.escape(start) + r".*?" + re.escape(end),
                      lambda _, start=start, body=body, end=end: f"{start}\n{body}\n{end}", text, flags=re.S)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    stale = []
    for path in FILES:
        old = path.read_text()
        new = render(old)
        if new == old:
            continue
        if args.check:
            stale.append(path.relative_to(ROOT).as_posix())
        else:
            path.write_text(new)
    if stale:
        print(f"{', '.join(stale)} quote(s) stale results: run python tools/readme_results.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
