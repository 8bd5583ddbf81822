"""Command line: ``python -m kdnb {train,pipeline,bench,export} ...``.

Every user error (bad setting, missing data, missing teacher) ends as one line on stderr and a
non-zero exit, before any long work starts; so does every storage fault (a full or read-only disk,
a damaged or untrusted checkpoint), naming the file, the cause and the fix.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .engine.config import CONFIGS, PROFILES, ConfigError, make_config


def _user_errors() -> tuple[type[Exception], ...]:
    from .engine.data import DataError
    from .engine.errors import TrainingError

    return (ConfigError, DataError, TrainingError)


def _parse_sets(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _cmd_train(args: argparse.Namespace) -> int:
    overrides = _parse_sets(args.set)
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    cfgs = [make_config(c, args.profile, args.seed, overrides) for c in args.config]
    from .engine.train import check_cohort, train_cohort

    check_cohort(cfgs)  # before any work: members must share seed, data and teacher
    for result in train_cohort(cfgs, args.runs_dir, force=args.force, progress=not args.quiet, wait=args.wait,
                               restart=args.restart):
        m, cfg = result.metrics, result.config
        print(f"{cfg.run_name} seed{cfg.seed}: best epoch {m['best_epoch']}, val acc {m['val_acc']:.4f}, "
              f"test acc {m['test_acc']:.4f}")
        print(f"results: {result.run_dir}")
    return 0


def _cmd_pipeline(args: argparse.Namespace) -> int:
    from .pipeline import run_pipeline

    overrides = _parse_sets(args.set)
    if overrides:  # one clear message before any notebook starts
        make_config("baseline", args.profile, args.seeds[0] if args.seeds else 0, overrides)
    parameters: dict = {"overrides": overrides} if overrides else {}
    if args.bench_json is not None:  # checked here, not in 08 after an hour of training
        bench = Path(args.bench_json).expanduser().resolve()
        if not bench.is_file():
            raise ConfigError(f"--bench-json {args.bench_json}: no such file ({bench}); write one with "
                             f"`python -m kdnb bench --profile {args.profile} --repeats 5 --json {args.bench_json}`")
        parameters["bench_json"] = str(bench)
    run_pipeline(profile=args.profile, seeds=args.seeds, runs_dir=args.runs_dir, data_dir=args.data_dir,
                 figures_dir=args.figures_dir, notebooks=args.only, ablation=args.ablation,
                 parameters=parameters or None,
                 cohort=not args.one_at_a_time, executor=args.executor, train_only=args.train_only,
                 scale={k: getattr(args, k) for k in SCALE_OPTIONS})
    return 0


# the pipeline's options for its executor (kdnb.executors), passed on as they are named here
SCALE_OPTIONS = ("jobs", "jobs_per_gpu", "cpus_per_job", "gpus_per_job", "max_retries", "ray_address",
                 "slurm_partition", "slurm_minutes", "submitit_cluster")


def _add_scale_options(pl: argparse.ArgumentParser) -> None:
    g = pl.add_argument_group("scaling out", "run independent jobs (seeds, the ablation, 07) side by side; "
                                             "the runs directory must be on storage every job's machine sees")
    g.add_argument("--executor", default=None,
                   help="local (default), ray or slurm (submitit); default $KDNB_EXECUTOR, else local")
    g.add_argument("--jobs", type=int, default=None,
                   help="local: up to this many jobs at once (default 1: one after another, as always); on GPUs "
                        "each job is pinned to one; on the CPU each job keeps the runs' threads (part of their "
                        "numbers), so fewer run at once where the cores cannot give every job its threads; "
                        "ray: at most this many tasks at once")
    g.add_argument("--jobs-per-gpu", type=int, default=None,
                   help="local: up to this many jobs per visible GPU (default --jobs = this x GPUs); "
                        "ray: each task asks for 1/this of a GPU")
    g.add_argument("--cpus-per-job", type=int, default=None,
                   help="ray, slurm: the CPUs each job asks for (default the runs' threads; fewer: same numbers, "
                        "jobs may share cores). The runs' threads are a setting: --set threads=N")
    g.add_argument("--gpus-per-job", type=float, default=None,
                   help="ray: GPUs per task (default 1 when the cluster has GPUs, else 0); slurm: GPUs per job")
    g.add_argument("--max-retries", type=int, default=None,
                   help="ray: retries of a task whose worker or node died (default 3)")
    g.add_argument("--ray-address", default=None,
                   help="ray: the cluster to use (e.g. auto, or ray://host:10001); default a local instance")
    g.add_argument("--slurm-partition", default=None, help="slurm: the partition")
    g.add_argument("--slurm-minutes", type=int, default=None, help="slurm: time limit per job (default 1440)")
    g.add_argument("--submitit-cluster", default=None,
                   help="slurm: submitit's cluster (default: slurm where sbatch is found; 'local' runs the jobs "
                        "as local processes, to try a setup)")


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    run_bench(profile=args.profile, steps=args.steps, device=args.device, json_path=args.json,
              data_dir=args.data_dir, repeats=args.repeats, overrides=_parse_sets(args.set))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .engine.export import export_run

    path = export_run(args.run_dir, args.format, out=args.out, force=args.force)
    print(f"wrote {path} ({args.format}): input float32 RGB images in [0, 1], shape (N, 3, 32, 32), normalisation "
          "included; output logits (N, classes). Loading it: docs/deploy.md")
    return 0


def _cmd_device_train(args: argparse.Namespace) -> int:
    from .device_train import run_device_training

    overrides = _parse_sets(args.set)
    make_config("baseline", args.profile, args.seed, overrides)  # one clear line before any work
    summary = run_device_training(args.out, profile=args.profile, seed=args.seed, budget=args.budget, data=args.data,
                                  work=args.work, overrides=overrides, progress=not args.quiet)
    return 0 if summary["complete"] else 3


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kdnb", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train one run (teacher or a student configuration), or a cohort of students")
    t.add_argument("--config", required=True, nargs="+",
                   help=f"one of {', '.join(CONFIGS)}; several student configurations of one seed train together "
                        "as a cohort (one teacher pass per batch, each run as it would be alone)")
    t.add_argument("--profile", default="smoke", help=f"one of {', '.join(PROFILES)} (default smoke)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--runs-dir", default="runs")
    t.add_argument("--data-dir", default=None, help="data source (default: $KDNB_DATA_DIR, else ./data)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one setting")
    t.add_argument("--force", action="store_true", help="retrain a finished run (the old one is kept aside)")
    t.add_argument("--restart", action="store_true",
                   help="start an unfinished run again from epoch 1 (its checkpoint, e.g. a damaged one, is moved "
                        "aside, never deleted)")
    t.add_argument("--quiet", action="store_true", help="no progress output")
    t.add_argument("--wait", action="store_true",
                   help="when another process is training one of these runs, wait for it instead of refusing")
    t.set_defaults(func=_cmd_train)

    pl = sub.add_parser("pipeline", help="execute the notebook series with papermill")
    pl.add_argument("--profile", default="cpu", help=f"one of {', '.join(PROFILES)} (default cpu)")
    pl.add_argument("--seeds", type=int, nargs="+", default=[0])
    pl.add_argument("--runs-dir", default="runs")
    pl.add_argument("--data-dir", default=None)
    pl.add_argument("--figures-dir", default=None,
                    help="where tables and figures go (default: RUNS_DIR/PROFILE/figures; "
                         "'figures' refreshes the committed reference)")
    pl.add_argument("--only", nargs="*", default=None, help="run only these notebooks (name prefixes, e.g. 00 01)")
    pl.add_argument("--ablation", action="store_true",
                    help="also run 09_mask_ablation (9 more KD+FA+AT runs per seed)")
    pl.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override one setting of every run of the series (each notebook's `overrides`), "
                         "e.g. cuda_graphs=true or threads=1")
    pl.add_argument("--bench-json", default=None, metavar="PATH",
                    help="a `python -m kdnb bench --json` report for 08's efficiency table: each configuration's "
                         "benchmarked ms/step trained alone, beside the runs' own costs")
    pl.add_argument("--train-only", action="store_true",
                    help="only train the series' runs (the teacher, each seed's cohort of the chosen student "
                         "configurations), exactly as their notebooks would, and execute no notebook")
    pl.add_argument("--one-at-a-time", action="store_true",
                    help="train each student configuration in its own notebook instead of the seed's "
                         "configurations together as a cohort (same runs, same numbers; slower)")
    _add_scale_options(pl)
    pl.set_defaults(func=_cmd_pipeline)

    b = sub.add_parser("bench", help="measure training-step throughput of every pipeline")
    b.add_argument("--profile", default="cpu")
    b.add_argument("--steps", type=int, default=20)
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--device", default="auto")
    b.add_argument("--data-dir", default=None, help="images for the benchmark (default: synthetic)")
    b.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting of every benchmarked configuration (e.g. compile=true)")
    b.set_defaults(func=_cmd_bench)

    d = sub.add_parser("device-train", help="train one seed's teacher and students within a time budget and write a "
                                             "small results bundle (for a time-limited GPU machine)",
                       description="One process: unpack the data, train the teacher, the students as one cohort, "
                                   "evaluate, and write OUT/{summary.json,results.md,histories.json,curves.png,"
                                   "device_train.log}. When time runs out, runs stop after a whole epoch and are "
                                   "evaluated from their best-so-far weights, marked partial (exit code 3).")
    d.add_argument("out", metavar="OUT", help="the folder that receives the bundle (at most 8 small files)")
    d.add_argument("--profile", default="paper", help=f"one of {', '.join(PROFILES)} (default paper)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--budget", type=float, default=540.0, help="seconds for the whole command (default 540)")
    d.add_argument("--data", default=None,
                   help="an image folder or a .tar.xz archive of one (unpacked once); default $KDNB_DATA_DIR")
    d.add_argument("--work", default=None, help="where data and runs go (default OUT-work beside OUT)")
    d.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one setting of every run")
    d.add_argument("--quiet", action="store_true", help="no per-epoch progress lines")
    d.set_defaults(func=_cmd_device_train)

    from .engine.export import FORMATS

    e = sub.add_parser("export", help="write a finished run's network as one deployable file (ONNX or TorchScript)",
                       description="The network alone (no connectors, no teacher), in eval mode, with the input "
                                   "normalisation inside: it takes float RGB images in [0, 1], shape (N, 3, 32, 32). "
                                   "See docs/deploy.md.")
    e.add_argument("run_dir", metavar="RUN_DIR", help="a finished run's folder, e.g. runs/cpu/kd_fa_at/seed0")
    e.add_argument("--format", choices=list(FORMATS), default="onnx", help="onnx (default) or torchscript")
    e.add_argument("--out", default=None,
                   help=f"the file to write (default RUN_DIR/{FORMATS['onnx']} or RUN_DIR/{FORMATS['torchscript']})")
    e.add_argument("--force", action="store_true", help="replace an existing file")
    e.set_defaults(func=_cmd_export)
    return p


def main(argv: list[str] | None = None) -> int:
    from .engine.errors import is_storage_fault, storage_error

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except _user_errors() as exc:
        print(f"kdnb: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full or read-only disk met outside kdnb's writers (a folder, a move)
        if not is_storage_fault(exc):
            raise
        print(f"kdnb: error: {storage_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kdnb: interrupted (completed epochs are checkpointed; rerun to resume)", file=sys.stderr)
        return 130
