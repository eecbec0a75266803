"""The ``dl-driver`` command: DLIO's command-line habits (``workload=NAME``, ``++workload.a.b=v``) plus our flags."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from dl_driver import _core, checkpoint, compare, distributed, htmlreport, launcher, mlperf, report, search
from dl_driver._core import DlDriverError
from dl_driver.config import Config, ConfigWarning, load_dlio_config
from dl_driver.runner import DlioRunner, measures


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dl-driver",
        description="Storage benchmark for AI training: runs DLIO workload configs unmodified.",
        epilog="Example: dl-driver validate workload=unet3d_h100 ++workload.dataset.num_files_train=16",
    )
    parser.add_argument("--version", action="version", version=f"dl-driver {_core.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    validate = commands.add_parser(
        "validate", help="load, validate and print a workload's resolved config and derived plan"
    )
    _workload_arguments(validate)
    validate.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    validate.set_defaults(handler=_validate)
    gen = commands.add_parser("generate", help="write a workload's dataset in DLIO's layout and format")
    _workload_arguments(gen)
    gen.add_argument("--rank", type=int, metavar="R", help="this process's rank, launched by hand (alone: no barriers)")
    _comm_argument(gen)
    gen.add_argument("--skip-existing", action="store_true", help="keep files already written (resumes a generation)")
    gen.add_argument("--threads", type=int, metavar="N", help="files produced at once (default: the number of CPUs)")
    gen.set_defaults(handler=_generate)
    run = commands.add_parser(
        "run",
        help="run a workload: generate its data (workflow.generate_data), train, evaluate; write DLIO's run files",
    )
    _workload_arguments(run)
    run.add_argument("--rank", type=int, metavar="R", help="this process's rank, launched by hand (alone: no barriers)")
    _comm_argument(run)
    run.add_argument("--output", metavar="DIR", help="the run's output folder (default: output.folder)")
    run.add_argument(
        "--drop-caches",
        action="store_true",
        help="drop the page cache of the data before each epoch and of the checkpoints between writes and reads "
        "(root: vm.drop_caches, else posix_fadvise; workflow.drop_caches)",
    )
    run.add_argument(
        "--runs",
        type=int,
        default=1,
        metavar="N",
        help="N consecutive runs (MLPerf: a warm-up and 5), each in a timestamped folder under the output folder, "
        "with seed train.seed + i; the data is generated once",
    )
    run.set_defaults(handler=_run, skip_existing=False, threads=None)
    ckpt = commands.add_parser("checkpoint", help="list, verify or delete the checkpoints under a location")
    ckpt.add_argument("action", choices=["list", "verify", "delete"])
    ckpt.add_argument("uri", help="the checkpoint folder (checkpoint.checkpoint_folder), a path or a URI")
    ckpt.add_argument(
        "names", nargs="*", help="checkpoints to verify or delete (default for verify: every complete one)"
    )
    ckpt.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE", help="a storage option (as in storage_options)"
    )
    ckpt.set_defaults(handler=_checkpoint)
    size = commands.add_parser(
        "datasize", help="MLPerf's minimum dataset for a workload and cluster (and a checkpoint's size per rank)"
    )
    _workload_arguments(size)
    size.add_argument("--num-accelerators", type=int, metavar="N", help="simulated accelerators (training)")
    size.add_argument("--host-memory-gb", type=float, metavar="M", help="memory of each client host, GiB (training)")
    size.add_argument("--num-hosts", type=int, default=1, metavar="H", help="client hosts (default 1)")
    size.add_argument("--num-processes", type=int, metavar="P", help="processes of a checkpointing run")
    size.add_argument("--json", action="store_true", help="print JSON")
    size.set_defaults(handler=_datasize)
    check = commands.add_parser(
        "check", help="MLPerf's rules on run folders: CLOSED, OPEN or INVALID with every reason, per run and submission"
    )
    check.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders, or folders holding them")
    check.add_argument(
        "--accelerator-memory-gb",
        type=float,
        default=80.0,
        metavar="GB",
        help="memory of one accelerator, for the checkpointing rule (default 80: H100/A100 80GB)",
    )
    check.add_argument("--json", action="store_true", help="print JSON")
    check.set_defaults(handler=_check)
    find = commands.add_parser(
        "search-accelerators",
        help="the most ranks (simulated accelerators) whose training keeps AU >= the threshold in every epoch",
    )
    _workload_arguments(find)
    find.add_argument("--au", type=float, metavar="F", help="the AU threshold, a fraction (default: metric.au)")
    find.add_argument("--max", type=int, default=64, metavar="N", help="the most ranks to try (default 64)")
    find.add_argument("--launcher", choices=search.LAUNCHERS, help="mpi (mpirun) or torch (torchrun); default: found")
    find.add_argument("--output", metavar="DIR", help="parent of the tries' run folders (default: output.folder)")
    find.set_defaults(handler=_search)
    cmp = commands.add_parser(
        "compare", help="seeded access-order parity of two runs (digests per rank and epoch) and their metrics"
    )
    cmp.add_argument("run_a", metavar="RUN_A", help="a dl-driver run folder")
    cmp.add_argument("run_b", metavar="RUN_B", help="another")
    cmp.add_argument("--json", action="store_true", help="print JSON")
    cmp.set_defaults(handler=_compare)
    dlio = commands.add_parser(
        "dlio-bin",
        help="print the folder holding dl-driver's drop-in 'dlio_benchmark' (for mlpstorage --dlio-bin-path)",
    )
    dlio.set_defaults(handler=_dlio_bin)
    rep = commands.add_parser(
        "report",
        help="every run folder under a results tree as mlpstorage's reportgen writes them (results.json, results.csv), "
        "MLPerf v3's table and the verdicts",
    )
    rep.add_argument("results", nargs="+", metavar="RESULTS_DIR", help="results trees or run folders")
    rep.add_argument("-o", "--output", default=".", metavar="OUT", help="where to write the files (default: .)")
    rep.add_argument("--html", metavar="FILE", help="also an HTML report with charts (needs 'dl-driver[report]')")
    rep.add_argument(
        "--accelerator-memory-gb",
        type=float,
        default=80.0,
        metavar="GB",
        help="memory of one accelerator, for the checkpointing rule (default 80)",
    )
    rep.set_defaults(handler=_report)
    return parser


def _comm_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--comm",
        choices=distributed.KINDS,
        help="how the ranks of a launched job talk (default: distributed.communicator, 'auto': MPI under "
        "mpirun/mpiexec/srun, torch.distributed under torchrun); see docs/scaling.md",
    )


def _workload_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "args",
        nargs="*",
        metavar="workload=NAME | ++workload.KEY=VALUE",
        help="the workload (default: DLIO's 'default') and DLIO/Hydra overrides",
    )
    parser.add_argument("--config", metavar="FILE", help="a workload YAML file instead of workload=NAME")
    parser.add_argument("--config-dir", metavar="DIR", help="look up workload=NAME as DIR/workload/NAME.yaml first")
    parser.add_argument("--strict", action="store_true", help="unknown keys are errors, not warnings")
    parser.add_argument(
        "--world-size",
        type=int,
        metavar="N",
        help=f"number of processes (default: from {', '.join(launcher.WORLD_SIZE_VARIABLES)}, else 1)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        after = (
            "; the files already there are complete: add --skip-existing to finish"
            if args.command == "generate"
            else ""
        )
        print(f"dl-driver {args.command}: interrupted{after}", file=sys.stderr)
        return 130
    except (DlDriverError, OSError) as e:  # OSError: FileNotFoundError from storage, and local files we open
        print(f"dl-driver {args.command}{_rank_of_job()}: error: {e}", file=sys.stderr)
        return 2


def _rank_of_job() -> str:
    """' (rank R of N)' in a launched job of several processes, so each rank's error says whose it is."""
    try:
        size = launcher.world_size()
        return f" (rank {launcher.rank(None, size)} of {size})" if size > 1 else ""
    except DlDriverError:
        return ""


def load_from_args(args: argparse.Namespace) -> Config:
    """Loads the workload named by DLIO-style arguments, printing unknown-key warnings to stderr."""
    workload = None
    overrides = []
    for token in args.args:
        if token.startswith("workload="):
            workload = token.removeprefix("workload=")
        elif token.startswith(("+", "~")) or "=" in token:
            overrides.append(token)
        else:
            raise DlDriverError(f"unexpected argument '{token}': expected workload=NAME or ++workload.KEY=VALUE")
    if workload and args.config:
        raise DlDriverError(f"give either workload={workload} or --config {args.config}, not both")
    if args.config:
        if not os.path.isfile(args.config):
            raise DlDriverError(f"--config {args.config}: no such file")
        source = args.config
    else:
        source = "workload=" + (workload if workload is not None else "default")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConfigWarning)
        cfg = load_dlio_config(source, overrides, args.config_dir, strict=args.strict)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    return cfg


def _validate(args: argparse.Namespace) -> int:
    cfg = load_from_args(args)
    plan = cfg.plan(launcher.world_size(args.world_size), run=True)
    if args.json:
        document = {
            "source": cfg.source_name,
            "overrides": cfg.overrides,
            "warnings": cfg.warnings,
            "config": json.loads(cfg.to_json()),
            "plan": plan,
        }
        print(json.dumps(document, indent=2))
        return 0
    print(f"# dl-driver {_core.__version__}: resolved config of {cfg.source_name}")
    print(cfg.to_yaml(), end="")
    print("---")
    print(f"# derived plan for {plan['world_size']} process(es)")
    print(_core.json_to_yaml(json.dumps(plan)), end="")
    return 0


def _run(args: argparse.Namespace) -> int:
    cfg = load_from_args(args)
    if args.output:
        cfg.output.folder = args.output
    if args.drop_caches:
        cfg.workflow.drop_caches = True
    runner = DlioRunner(
        cfg, rank=args.rank, world_size=args.world_size, console=True, progress=sys.stderr.isatty(), comm=args.comm
    )
    cfg.plan(runner.world_size, run=True)  # a run that cannot train fails before generation writes anything
    if cfg.workflow.generate_data:
        _print_generated(cfg, runner.generate(skip_existing=args.skip_existing, threads=args.threads))
    if not measures(cfg):
        return 0
    if args.runs != 1:
        reports = runner.run_series(args.runs, generate=False)
        interrupted = bool(reports) and reports[-1].interrupted
    else:
        interrupted = runner.run_benchmark(generate=False).interrupted
    if interrupted:
        print(f"dl-driver run: interrupted; what was measured is in {cfg.output.folder}", file=sys.stderr)
        return 130
    return 0


def _generate(args: argparse.Namespace) -> int:
    cfg = load_from_args(args)
    runner = DlioRunner(cfg, rank=args.rank, world_size=args.world_size, progress=sys.stderr.isatty(), comm=args.comm)
    _print_generated(cfg, runner.generate(skip_existing=args.skip_existing, threads=args.threads))
    return 0


def _print_generated(cfg: Config, report: dict[str, float]) -> None:
    mib = report["bytes_written"] / 2**20
    rate = mib / report["seconds"] if report["seconds"] else 0.0
    print(
        f"generated {int(report['files_written'])} files ({int(report['files_skipped'])} already present), "
        f"{mib:.1f} MiB in {report['seconds']:.3f} s ({rate:.0f} MiB/s) at {cfg.plan()['data_location']}"
    )


def _checkpoint(args: argparse.Namespace) -> int:
    options = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise DlDriverError(f"--option {item!r}: expected KEY=VALUE")
        options[key] = value
    listed = checkpoint.list_checkpoints(args.uri, **options)
    if args.action == "list":
        for c in listed:
            state = "complete" if c["complete"] else "INCOMPLETE (no manifest)"
            print(f"{c['name']}  {c['objects']} objects  {c['stored_bytes'] / 2**30:.3f} GiB  {state}")
        return 0
    names = args.names or ([c["name"] for c in listed if c["complete"]] if args.action == "verify" else [])
    if not names:
        raise DlDriverError(f"checkpoint {args.action}: name the checkpoints ({args.uri} holds {len(listed)})")
    failed = 0
    for name in names:
        if args.action == "delete":
            print(f"{name}: deleted {checkpoint.delete(args.uri, name, **options)} objects")
            continue
        try:
            read = checkpoint.verify(args.uri, name, **options)
            print(f"{name}: OK ({read / 2**30:.3f} GiB read and checked)")
        except (DlDriverError, FileNotFoundError) as e:
            print(f"{name}: FAILED: {e}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def _datasize(args: argparse.Namespace) -> int:
    cfg = load_from_args(args)
    result: dict[str, object] = {}
    if cfg.workflow.train or cfg.workflow.generate_data:
        if args.num_accelerators is None or args.host_memory_gb is None:
            raise DlDriverError("datasize of a training workload: give --num-accelerators N and --host-memory-gb M")
        result["training"] = mlperf.training_datasize(
            cfg, accelerators=args.num_accelerators, host_memory_gb=args.host_memory_gb, hosts=args.num_hosts
        )
    if cfg.workflow.checkpoint and (args.num_processes or not result):
        processes = args.num_processes or args.num_accelerators
        if processes is None:
            raise DlDriverError("datasize of a checkpointing workload: give --num-processes P")
        result["checkpointing"] = mlperf.checkpoint_datasize(cfg, processes=processes)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    training = result.get("training")
    if isinstance(training, dict):
        t = training
        print(f"{t['model']}: {t['accelerators']} accelerators, {t['hosts']} host(s) of {t['host_memory_gb']:g} GiB")
        print(
            f"  samples needed: {t['samples_by_memory']} for 5x the memory, {t['samples_by_steps']} for 500 steps "
            f"of every accelerator (dictated by {t['dictated_by']})"
        )
        print(
            f"  num_files_train: {t['num_files_train']}"
            + (
                f", num_subfolders_train: {t['num_subfolders_train']} (above 10,000 files)"
                if t["num_subfolders_train"]
                else ""
            )
        )
        print(f"  dataset: {t['dataset_bytes']} bytes ({t['dataset_bytes'] / 2**30:.2f} GiB)")
        print(f"  overrides: {' '.join(t['overrides'])}")
    checkpointing = result.get("checkpointing")
    if isinstance(checkpointing, dict):
        c = checkpointing
        print(f"{c['model']}: {c['processes']} processes, {c['ranks_writing']} writing")
        print(
            f"  checkpoint: {c['checkpoint_bytes']} bytes ({c['checkpoint_bytes'] / 2**30:.2f} GiB); largest rank "
            f"{c['largest_rank_bytes'] / 2**30:.2f} GiB, mean {c['mean_rank_bytes'] / 2**30:.2f} GiB"
        )
        print(f"  {c['writes']} writes: {c['written_bytes'] / 2**30:.2f} GiB on the checkpoint folder")
    return 0


def _check(args: argparse.Namespace) -> int:
    runs, unreadable = [], []
    for path in report.run_folders(args.runs):
        try:
            runs.append(mlperf.read_run(path))
        except DlDriverError as e:
            unreadable.append(
                {
                    "subject": path,
                    "verdict": mlperf.INVALID,
                    "reasons": [{"division": mlperf.INVALID, "reason": str(e)}],
                }
            )
    per_run, submissions = mlperf.check_submission(runs, accelerator_memory_gb=args.accelerator_memory_gb)
    verdicts = [v.to_dict() for v in per_run] + unreadable
    document = {"runs": verdicts, "submissions": [v.to_dict() for v in submissions]}
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        for title, items in (("runs", verdicts), ("submissions", document["submissions"])):
            print(f"{title}:")
            for v in items:
                print(f"  {v['subject']}: {v['verdict']}")
                for r in v["reasons"]:
                    print(f"    - {r['division']}: {r['reason']}")
    every = verdicts + document["submissions"]
    return 1 if any(v["verdict"] == mlperf.INVALID for v in every) else 0


def _search(args: argparse.Namespace) -> int:
    cfg = load_from_args(args)
    if not cfg.workflow.train:
        raise DlDriverError("search-accelerators: the workload does not train (workflow.train is False)")
    threshold = float(args.au if args.au is not None else cfg.metric.au)
    kind = args.launcher or search.default_launcher()
    parent = Path(args.output or cfg.output.folder)
    given = [
        *args.args,
        *(["--config", args.config] if args.config else []),
        *(["--config-dir", args.config_dir] if args.config_dir else []),
    ]
    if cfg.workflow.generate_data:
        _print_generated(cfg, DlioRunner(cfg, comm="none").generate())
    print(f"searching with {kind}: AU >= {100 * threshold:g}% in every epoch, up to {args.max} ranks")

    def attempt(ranks: int) -> search.Try:
        t = search.run_try(kind, ranks, given, parent / f"{ranks}_ranks", threshold)
        au = ", ".join(f"{a:.1f}" for a in t.au) or t.error
        print(f"  {ranks:>5} ranks: {'pass' if t.passed else 'FAIL'}  AU % per epoch: {au}  ({t.folder})", flush=True)
        return t

    answer, tries = search.search(threshold, args.max, attempt)
    parent.mkdir(parents=True, exist_ok=True)
    (parent / "search.json").write_text(
        json.dumps(
            {
                "threshold": threshold,
                "launcher": kind,
                "max": args.max,
                "answer": answer,
                "tries": [t.__dict__ for t in tries],
            },
            indent=2,
        )
        + "\n"
    )
    if answer == 0:
        print(f"answer: none: 1 rank already keeps AU under {100 * threshold:g}%")
        return 1
    print(f"answer: {answer} simulated accelerator(s) keep AU >= {100 * threshold:g}% in every epoch")
    return 0


def _report(args: argparse.Namespace) -> int:
    built = report.build(args.results, accelerator_memory_gb=args.accelerator_memory_gb)
    for path in report.write(built, args.output):
        print(f"wrote {path}")
    if args.html:
        print(f"wrote {htmlreport.write(built, args.html)}")
    print(f"{len(built['records'])} run(s), {len(built['unreadable'])} unreadable folder(s)")
    for item in built["unreadable"]:
        print(f"  unreadable: {item['folder']}: {item['why']}")
    for row, verdict in zip(built["table"], built["submissions"], strict=True):
        cells = ", ".join(f"{k}: {v}" for k, v in row.items() if k not in ("Division", "Benchmark Type", "Model"))
        print(f"  {verdict['subject']}: {verdict['verdict']}; {cells}")
        for r in verdict["reasons"]:
            print(f"    - {r['division']}: {r['reason']}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    result = compare.compare_runs(args.run_a, args.run_b)
    print(json.dumps(result, indent=2) if args.json else compare.render(result))
    return 0 if result["equal"] else 1


def dlio_bin_folder() -> str:
    """The folder, inside the installed package, whose executable ``dlio_benchmark`` runs ``dl-driver run`` with
    DLIO's arguments: what ``mlpstorage --dlio-bin-path`` wants. Nothing of that name is put on PATH."""
    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dlio_bin")
    shim = os.path.join(folder, "dlio_benchmark")
    if not os.path.isfile(shim):
        raise DlDriverError(f"{shim}: missing from the installed package; reinstall dl-driver")
    if not os.access(shim, os.X_OK):  # an installer that dropped the file's mode
        try:
            os.chmod(shim, os.stat(shim).st_mode | 0o111)
        except OSError as e:
            raise DlDriverError(f"{shim} is not executable and cannot be made so ({e}); run: chmod +x {shim}") from e
    return folder


def _dlio_bin(args: argparse.Namespace) -> int:
    print(dlio_bin_folder())
    return 0


if __name__ == "__main__":
    sys.exit(main())
