"""Record what the five configurations compute, to prove a refactor changes nothing.

Trains the teacher and then the five student configurations as one cohort (as the pipeline does)
under a profile, and writes every run's history and metrics (less the wall-clock fields, which
differ between any two runs) with the platform they came from: the numbers are bit-exact only on
the same torch, CPU instruction set and thread count. ``tests/test_reference_runs.py`` compares the
smoke series the suite trains anyway with the recorded smoke reference.

    python tools/record_reference.py --profile smoke --out tests/reference/smoke.json
    python tools/record_reference.py --profile cpu --set epochs=1 --out tests/reference/cpu-1epoch.json
    python tools/record_reference.py --check tests/reference/cpu-1epoch.json   # trains again, compares
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from kdnb.engine.config import STUDENT_CONFIGS, TEACHER, make_config
from kdnb.engine.reference import comparable, differences, platform_fingerprint
from kdnb.engine.runs import read_json
from kdnb.engine.train import train, train_cohort


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="applied to every run")
    ap.add_argument("--runs-dir", default=None, help="default: a temporary folder")
    ap.add_argument("--out", help="where to write the reference")
    ap.add_argument("--check", metavar="REFERENCE", help="train as that reference says and compare with it")
    args = ap.parse_args()
    if bool(args.out) == bool(args.check):
        ap.error("give one of --out and --check")
    overrides = dict(s.split("=", 1) for s in args.set)
    if args.check:
        ref = json.loads(Path(args.check).read_text())
        args.profile, overrides = ref["profile"], ref["overrides"]
    runs = Path(args.runs_dir or tempfile.mkdtemp(prefix="kdnb-reference-"))
    train(make_config(TEACHER, args.profile, 0, overrides), runs, progress=False)
    cfgs = [make_config(c, args.profile, 0, overrides) for c in STUDENT_CONFIGS]
    train_cohort(cfgs, runs, progress=False)
    out = {"profile": args.profile, "overrides": overrides, "platform": platform_fingerprint(), "runs": {}}
    for name in (TEACHER, *STUDENT_CONFIGS):
        run = runs / args.profile / name / "seed0"
        out["runs"][name] = comparable(read_json(run / "history.json"), read_json(run / "metrics.json"))
    if args.check:
        same = ref["platform"] == out["platform"]
        diff = differences(ref, out["runs"])
        print(f"platform {'matches' if same else 'differs: ' + str(ref['platform']) + ' vs ' + str(out['platform'])}")
        print("\n".join(diff) if diff else f"every recorded number reproduced exactly ({len(ref['runs'])} runs)")
        raise SystemExit(1 if diff else 0)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out} from {runs}")


if __name__ == "__main__":
    main()
