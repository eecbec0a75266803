"""The ``dl-driver`` command: DLIO's command-line habits (``workload=NAME``, ``++workload.a.b=v``) plus our flags."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence

from dl_driver import _core, checkpoint, distributed, launcher
from dl_driver._core import DlDriverError
from dl_driver.config import Config, ConfigWarning, load_dlio_config
from dl_driver.runner import DlioRunner

#: Subcommands that later versions bring, with what they will do.
PLANNED = {
    "datasize": "computes MLPerf's minimum dataset size for a workload and host",
    "report": "aggregates run folders into MLPerf JSON/CSV reports",
}


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
    for name, what in PLANNED.items():
        planned = commands.add_parser(name, help=f"(not available yet) {what}")
        planned.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        planned.set_defaults(handler=_not_available)
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
    runner = DlioRunner(
        cfg, rank=args.rank, world_size=args.world_size, console=True, progress=sys.stderr.isatty(), comm=args.comm
    )
    cfg.plan(runner.world_size, run=True)  # a run that cannot train fails before generation writes anything
    if cfg.workflow.generate_data:
        _print_generated(cfg, runner.generate(skip_existing=args.skip_existing, threads=args.threads))
    if not (cfg.workflow.train or cfg.workflow.checkpoint):
        return 0
    report = runner.run_benchmark(generate=False)
    if report.interrupted:
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


def _not_available(args: argparse.Namespace) -> int:
    print(
        f"dl-driver {args.command}: not available yet in dl-driver {_core.__version__} "
        f"(it {PLANNED[args.command]}); 'dl-driver validate' works today",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
