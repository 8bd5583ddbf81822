"""The README is the front door: short, its results generated from the committed result files (no
hand-typed numbers), its Quickstart commands the ones CI runs, and every docs page linked from it with
links that resolve. The detailed tables live in docs/results.md, quoted verbatim by the same tool."""

from __future__ import annotations

import csv
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
SERIES_COMMAND = "python -m pip install -r requirements.txt -e . && python -m kdnb pipeline"
TEST_COMMAND = "python -m pip install -r requirements.txt -e . && python -m pytest -q"
MAX_WORDS = 2500

# a script in tools/, not a package: loaded from its file
_spec = importlib.util.spec_from_file_location("readme_results", ROOT / "tools" / "readme_results.py")
readme_results = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(readme_results)


def _text(path: Path) -> str:
    return path.read_text()


def _section(text: str, heading: str) -> str:
    """The body of the ``## heading`` section (up to the next ``## ``)."""
    m = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert m, f"no '## {heading}' section"
    return m.group(1)


def _bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)]


# --- the generated results ------------------------------------------------------------------------

def test_readme_and_docs_quote_the_result_files():
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "readme_results.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_generated_blocks_are_where_the_check_looks():
    """The check above passes vacuously for a file without markers, so the markers must be there: the
    headline in the README, the detailed tables in docs/results.md."""
    assert readme_results.README in readme_results.FILES and readme_results.RESULTS_DOC in readme_results.FILES
    readme, results = _text(README), _text(DOCS / "results.md")
    assert readme.count("<!-- headline:start -->") == 1 and readme.count("<!-- headline:end -->") == 1
    for name in ("results", "ablation"):
        assert results.count(f"<!-- {name}:start -->") == 1 and results.count(f"<!-- {name}:end -->") == 1
    # what the tool put there is the committed files' content
    assert "| KD+FA+AT |" in readme.split("<!-- headline:start -->")[1].split("<!-- headline:end -->")[0]
    table = (ROOT / "figures" / "results_table.md").read_text().splitlines()
    assert [line for line in table if line.startswith("| ")][2] in results


def test_the_check_catches_a_changed_number(tmp_path, monkeypatch):
    table = tmp_path / "results_table.md"
    table.write_text("# t\n\n| a |\n|---|\n| 83.77 |\n")
    monkeypatch.setattr(readme_results, "BLOCKS", {"results": table})
    doc = "x\n<!-- results:start -->\n<!-- results:end -->\ny\n"
    rendered = readme_results.render(doc)
    assert "| 83.77 |" in rendered and "### t" in rendered
    assert readme_results.render(rendered) == rendered
    assert readme_results.render(rendered.replace("83.77", "83.78")) == rendered


# an older figures/results.csv (3 seeds, two teachers, no MDE columns): fixed numbers for the wording tests
OLD_RESULTS = ROOT / "tests" / "reference" / "results_3seeds_two_teachers.csv"


def _csv_rows(changes: dict | None = None, path: Path = OLD_RESULTS) -> list[dict]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for (config, key), value in (changes or {}).items():
            if r["config"] == config:
                r[key] = value
    return rows


def _write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_the_headline_follows_results_csv(tmp_path, monkeypatch):
    """The README's table, figure and conclusion come from figures/results.csv: a changed number or
    verdict there makes the README stale."""
    monkeypatch.setattr(readme_results, "HEADLINE_CSV", tmp_path / "results.csv")
    readme = _text(README)
    _write_csv(tmp_path / "results.csv", _csv_rows(path=ROOT / "figures" / "results.csv"))
    assert readme_results.render(readme) == readme
    headline = readme.split("<!-- headline:start -->")[1].split("<!-- headline:end -->")[0]
    assert "![" in headline and "(figures/08_accuracy.png)" in headline
    assert headline.lstrip().startswith("**Conclusion")

    _write_csv(tmp_path / "results.csv", _csv_rows({("kd", "test_acc_mean"): "65.17333333"}, ROOT / "figures" / "results.csv"))
    changed = readme_results.render(readme)
    assert changed != readme and "| KD | 65.17 ± " in changed


def test_the_conclusion_says_what_the_numbers_say(tmp_path):
    path = tmp_path / "results.csv"
    _write_csv(path, [r for r in _csv_rows() if r["teacher_seed"] == "0"])
    text = readme_results._headline(path)
    assert "KD beats the baseline (+5.70 pp, 95 % CI [+1.55, +9.86], significant)" in text
    assert "none of KD+FA, KD+AT or KD+FA+AT beats KD significantly" in text
    assert "the other teachers" not in text

    rows = _csv_rows({("kd_at", "delta_vs_kd_label"): "significant", ("kd_at", "delta_vs_kd_ci_low"): "0.10"})
    _write_csv(path, [r for r in rows if r["teacher_seed"] == "0"])
    text = readme_results._headline(path)
    assert "KD+AT beats KD (+0.57 pp, 95 % CI [+0.10, +4.72], significant)" in text
    assert "KD+FA, KD+FA+AT do not differ from KD significantly" in text
    assert "none of" not in text

    rows = _csv_rows({("kd", "delta_vs_baseline_label"): "not significant"})
    _write_csv(path, rows)
    text = readme_results._headline(path)
    assert "KD does not differ significantly from the baseline" in text
    # ... while the configurations that add to KD do beat it: said, so that "distillation does not help" is not read
    assert "while KD+FA, KD+AT and KD+FA+AT do beat it (KD+FA +6.09 pp, 95 % CI [+4.18, +8.00], significant;" in text
    rows = _csv_rows({("kd", "delta_vs_baseline_label"): "not significant",
                      ("kd_fa", "delta_vs_baseline_label"): "not significant",
                      ("kd_at", "delta_vs_baseline_label"): "not significant"})
    _write_csv(path, rows)
    assert "while KD+FA+AT does beat it (KD+FA+AT +5.96 pp" in readme_results._headline(path)
    assert "the other teachers' blocks" in text  # two teacher seeds in the file


def test_the_headline_gives_each_difference_its_mde_and_says_what_the_table_can_resolve(tmp_path):
    """With the MDE columns 08 writes, each Δ carries its minimum detectable effect, and one sentence
    reads the MDE range off them and sets the paper's differences from KD against it."""
    rows = [dict(r) for r in _csv_rows() if r["teacher_seed"] == "0"]
    mde = {"baseline": ("", "3.10"), "kd": ("4.00", ""), "kd_fa": ("2.00", "1.50"), "kd_at": ("2.50", "0.60"),
           "kd_fa_at": ("2.20", "0.70")}
    for r in rows:
        r["delta_vs_baseline_mde"], r["delta_vs_kd_mde"] = mde[r["config"]]
    path = tmp_path / "results.csv"
    _write_csv(path, rows)
    text = readme_results._headline(path)
    assert "| KD | " in text and "+5.70 [+1.55, +9.86], MDE 4.00 |" in text
    assert "a true difference of about 2.00–4.00 pp against the baseline and 0.60–1.50 pp against KD" in text
    # the paper: KD+FA -0.86, KD+AT -0.11, KD+FA+AT +0.13 pp from KD, each below its MDE (1.50, 0.60, 0.70)
    assert "Of the paper's differences from KD" not in text and "are all below these MDEs" in text
    kd_fa = next(r for r in rows if r["config"] == "kd_fa")
    kd_fa["delta_vs_kd_mde"] = "0.50"  # the paper's -0.86 pp for KD+FA is now above its MDE
    _write_csv(path, rows)
    assert "KD+AT, KD+FA+AT lie below their MDE" in readme_results._headline(path)
    _write_csv(path, [r for r in _csv_rows() if r["teacher_seed"] == "0"])  # an older results.csv: no MDE columns
    assert "MDE" not in readme_results._headline(path).split("| configuration")[1]


# --- the front door -------------------------------------------------------------------------------

def test_readme_is_short():
    words = len(_text(README).split())
    assert words <= MAX_WORDS, f"README.md has {words} words; at most {MAX_WORDS} (move detail into docs/)"


def test_readme_order():
    """What kdnb is, the result, the Quickstart, the contents, how to cite: in this order."""
    text = _text(README)
    headings = re.findall(r"^## (.+)$", text, flags=re.M)
    assert headings == ["Result", "Quickstart", "Contents", "How to cite"], headings
    intro = text.split("## Result")[0]
    assert intro.startswith("# kdnb") and len(intro.split()) <= 250


def test_quickstart_starts_with_the_series_then_the_tests():
    blocks = _bash_blocks(_section(_text(README), "Quickstart"))
    assert blocks[:2] == [SERIES_COMMAND, TEST_COMMAND]


def test_ci_runs_the_readmes_test_command():
    """.ci/run installs from requirements.txt and then runs the README's test command as it stands."""
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith("#")]
    install, _, run = TEST_COMMAND.partition(" && ")
    assert ci[-1] == run
    assert any(line.startswith("python -m pip install -q -r requirements.txt") for line in ci)
    assert install.startswith("python -m pip install -r requirements.txt")


def test_first_contact_and_notebook_table():
    quick = _section(_text(README), "Quickstart")
    assert "python -m kdnb pipeline --profile smoke" in _bash_blocks(quick)
    notebooks = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    table = quick.split("### The notebooks")[1]
    for name in notebooks:
        if name[:2] in ("03", "04", "05"):  # in the row "`02_baseline` … `06_kd_fa_at`"
            continue
        assert f"`{name}`" in table, name
    assert "| `cpu`, measured |" in table and "estimate" in table and "not measured" in table


def test_the_timings_are_traceable():
    """Every time in the README's notebook table is in the measurement it comes from: the `cpu`
    column in docs/profiles.md (and docs/results.md for the ablation), the `paper` column in the
    device checks' JSON files."""
    import json

    from kdnb.engine.config import make_config

    table = _section(_text(README), "Quickstart").split("### The notebooks")[1]
    profiles, results = _text(DOCS / "profiles.md"), _text(DOCS / "results.md")
    for minutes in ("00 0.3", "teacher 16.1", "cohort 16.9", "02–06 0.4", "07 0.9", "08 13.6", "48 min 09 s"):
        assert minutes in profiles, minutes
        assert minutes.split(" ", 1)[1] in table or minutes in table, minutes
    # the ablation's training time, from the five-seed runs' histories (the same number everywhere)
    assert "133.6 min" in results and "133.6 min" in profiles and "133.6 min of training for five" in table

    quick = _section(_text(README), "Quickstart")
    log = (ROOT / "figures" / "smoke_pipeline_2026-12-06.log").read_text()
    done = {m[0]: int(m[1]) for m in re.findall(r"\] (\S+).* done in (\d+) s", log)}
    students = sum(done[n] for n in ("02_baseline", "03_kd", "04_kd_fa", "05_kd_at", "06_kd_fa_at"))
    elapsed = re.search(r"kdnb pipeline finished in (\d+) min (\d+) s", log)
    assert (f"it took {int(elapsed[1])} min {elapsed[2]} s: `00` {done['00_setup_and_data']} s, teacher\n"
            f"{done['01_train_teacher']} s, cohort {done['cohort']} s, `02`–`06` {students} s together, "
            f"`07` {done['07_masks_and_attention']} s, `08` {done['08_results']} s") in quick

    summary = json.loads((ROOT / "figures" / "device" / "summary_h200_2026-11-27.json").read_text())
    earlier = json.loads((ROOT / "figures" / "paper" / "device_check_h200_2026-11-26.json").read_text())
    first = {nb["notebook"]: nb for nb in summary["pipeline"]["notebooks"]}["00_setup_and_data"]["seconds"]
    before = {nb["notebook"]: nb for nb in earlier["pipeline"]["notebooks"]}["00_setup_and_data"]["seconds"]
    assert f"{first:.0f} s, measured ({before:.0f} s in an earlier run)" in table
    teacher = summary["configs"]["teacher"]
    paper = make_config("kd", "paper", seed=0)
    paper_teacher = make_config("teacher", "paper", seed=0)
    assert f"a first epoch of {teacher['first_epoch_seconds']:.0f} s" in table
    assert f"{paper_teacher.epochs} epochs at the measured {teacher['median_epoch_seconds']:.1f} s" in table
    assert f"after {teacher['epochs_run']} and {earlier['configs']['teacher']['epochs_run']} of 30 epochs" in table
    steps = (50_000 - paper.val_size) // paper.batch_size
    cohort = summary["bench"]["variants"]["cohort"]["ms_per_step"]
    assert f"{steps} steps per epoch × {cohort:.1f} ms" in table and f"× {paper.epochs} epochs" in table
    assert not paper_teacher.compile  # no compilation in the estimate: the profile trains eager under CUDA graphs
    estimate = paper_teacher.epochs * teacher["median_epoch_seconds"] / 60
    assert f"about {estimate:.0f} min, estimate" in table
    assert f"at most about {steps * cohort / 1000 * paper.epochs / 60:.0f} min per seed, estimate" in table


# --- docs and links -------------------------------------------------------------------------------

def _pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def test_every_docs_page_is_linked_from_the_readme():
    contents = _section(_text(README), "Contents")
    missing = [p.name for p in _pages() if f"](docs/{p.name})" not in contents]
    assert not missing, f"docs pages not in the README's contents: {missing}"
    assert len(_pages()) >= 12


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (not - or _), spaces to -."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} (.+)$", _strip_fences(text), flags=re.M):
        slug = _slug(heading)
        out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return out


def _strip_fences(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _strip_code(text: str) -> str:
    return re.sub(r"`[^`\n]*`", "", _strip_fences(text))


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _links(text: str) -> list[str]:
    return LINK.findall(_strip_code(text))


def _broken(path: Path) -> list[str]:
    bad = []
    for target in _links(path.read_text()):
        if re.match(r"^[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            bad.append(f"{path.relative_to(ROOT)}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest.read_text()):
            bad.append(f"{path.relative_to(ROOT)}: {target} (no such heading)")
    return bad


def test_relative_links_resolve():
    bad = [b for path in [README, *_pages()] for b in _broken(path)]
    assert not bad, "broken links:\n" + "\n".join(bad)


def test_the_link_check_catches_a_broken_link(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "a.md").write_text("# A title (x)\n\n[ok](#a-title-x) [ok](b.md#b) [bad](c.md) [bad](b.md#nope)\n"
                                   "`[not a link](zzz.md)`\n")
    (tmp_path / "b.md").write_text("# B\n")
    assert _broken(tmp_path / "a.md") == ["a.md: c.md (no such file)", "a.md: b.md#nope (no such heading)"]


@pytest.mark.parametrize("heading, slug", [
    ("Why our absolute numbers are lower than the paper's", "why-our-absolute-numbers-are-lower-than-the-papers"),
    ("Causal-mask ablation (`09_mask_ablation`)", "causal-mask-ablation-09_mask_ablation"),
    ("The `kdnb` API (what the notebooks call)", "the-kdnb-api-what-the-notebooks-call"),
])
def test_slugs_as_github_makes_them(heading, slug):
    assert _slug(heading) == slug
