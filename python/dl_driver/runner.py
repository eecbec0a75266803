"""Training emulation: ``DlioRunner(cfg).run_benchmark()`` runs a workload's training and evaluation and returns a
``Report``; ``batches(cfg)`` reads an epoch through the same reader pipeline, batch by batch."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dl_driver import _core, distributed, htmlreport, launcher, report
from dl_driver.config import Config, as_config
from dl_driver.generation import generate
from dl_driver.results import MlperfRecord, record_of


def measures(cfg: Config) -> bool:
    """Whether a run has something to measure after generation: training, or a checkpoint-only workflow. A
    generation run (``generate_data`` on, ``train`` off: mlpstorage's datagen) whose checkpoint counts are not given
    only generates, as DLIO's does, even when the workload's ``workflow.checkpoint`` is on."""
    w, k = cfg.workflow, cfg.checkpoint
    counted = int(k.num_checkpoints_write) > 0 or int(k.num_checkpoints_read) > 0
    return bool(w.train or (w.checkpoint and (counted or not w.generate_data)))


@dataclass(frozen=True)
class Report:
    """What a run measured: DLIO's ``summary.json`` plus dl-driver's details (``dl_driver_report.json``)."""

    summary: dict[str, Any]
    details: dict[str, Any]
    interrupted: bool = False
    output_folder: str = ""

    @property
    def epochs(self) -> list[dict[str, Any]]:
        """This rank's epochs: AU, throughput, blocks, evaluation and access-order digests."""
        epochs: list[dict[str, Any]] = self.details.get("epochs", [])
        return epochs

    def to_mlperf_json(self) -> MlperfRecord:
        """The run as an MLPerf results record (mlpstorage's results.json fields plus dl-driver's: see
        ``dl_driver.results``), read from the run folder rank 0 wrote; ``.save(path)``, ``.to_dict()``,
        ``.to_csv(path)``."""
        if not self.summary:
            raise _core.DlDriverError("to_mlperf_json: this run measured nothing (a generation-only run)")
        return record_of(self.output_folder)

    def to_html(self, path: str | os.PathLike[str]) -> Path:
        """This run as a self-contained HTML page with charts (``dl-driver report --html`` of its folder); needs
        ``pip install 'dl-driver[report]'`` (matplotlib)."""
        return htmlreport.write(report.build([self.output_folder]), Path(path))

    @property
    def latency(self) -> dict[str, dict[str, float]]:
        """This rank's per-stage latency: count, mean and percentiles in microseconds."""
        latency: dict[str, dict[str, float]] = self.details.get("latency", {})
        return latency

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary,
            "details": self.details,
            "interrupted": self.interrupted,
            "output_folder": self.output_folder,
        }


class DlioRunner:
    """Runs a DLIO workload: generation when ``workflow.generate_data``, then training and evaluation.

    Args:
        config: a Config, or anything ``load_dlio_config`` takes (a workload name, a YAML path, a dict).
        rank, world_size: this process's place when launched by hand (each rank then runs alone: no barriers, no
            reductions); by default the communicator's.
        comm: the communicator joining the ranks: ``auto`` (the launcher's: mpirun, mpiexec and srun through MPI,
            torchrun through torch.distributed), ``mpi``, ``torch`` or ``none``; default: the config's
            ``distributed.communicator``. See docs/scaling.md.
        console: print DLIO's ``[OUTPUT]`` lines and ``[METRIC]`` block to stdout.
        progress: show a progress line on stderr.
        plugins: objects whose ``initialize()``, ``before_epoch(epoch)``, ``after_epoch(epoch)``,
            ``before_step(epoch, step)``, ``after_step(epoch, step)`` and ``finalize()`` methods (those they have) are
            called at the loop's hook points, after the plugins the config enables (``workflow.checkpoint``). An
            exception stops the run with a DlDriverError naming the plugin and the hook.
    """

    def __init__(
        self,
        config: Config | str | dict[str, Any],
        *,
        rank: int | None = None,
        world_size: int | None = None,
        console: bool = False,
        progress: bool = False,
        plugins: Sequence[object] = (),
        comm: str | None = None,
    ) -> None:
        self.config = as_config(config)
        by_hand = rank is not None or world_size is not None
        d = self.config.distributed
        kind = "none" if by_hand and comm is None else (comm or d.communicator)
        self.comm = distributed.communicator(kind, d.timeout_seconds)
        if self.comm is not None:
            if by_hand and (rank, world_size) != (self.comm.rank, self.comm.size):
                raise _core.ConfigError(
                    f"rank {rank} of world size {world_size} given, but the {kind} communicator says rank "
                    f"{self.comm.rank} of {self.comm.size}: give one or the other"
                )
            self.world_size, self.rank = self.comm.size, self.comm.rank
        else:
            self.world_size = launcher.world_size(world_size)
            self.rank = launcher.rank(rank, self.world_size)
        self.console = console
        self.progress = progress
        self.plugins = list(plugins)

    def generate(self, *, skip_existing: bool = False, threads: int | None = None) -> dict[str, float]:
        """Writes this rank's share of the dataset (rank r writes files r, r + P, ...); with a communicator, returns
        once every rank's share is written (DLIO's barrier after generation)."""
        with self._telling_the_others():
            cfg = self.config
            _core.save_run_config(cfg.to_json(redact=False), cfg.source_name, list(cfg.overrides), self.rank)
            written = generate(
                self.config,
                rank=self.rank,
                world_size=self.world_size,
                skip_existing=skip_existing,
                threads=threads,
                progress=self.progress,
            )
            if self.comm is not None:
                self.comm.barrier()
        return written

    def run_benchmark(self, *, generate: bool | None = None) -> Report:
        """Generates data if the workflow asks, then trains (or runs the checkpoint-only workflow); Ctrl-C stops the
        run and returns what was measured, marked ``interrupted``.

        Args:
            generate: write the dataset first; by default when ``workflow.generate_data`` is on. Pass False when
                ``generate()`` has written it already.
        """
        cfg = self.config
        cfg.plan(self.world_size, run=True)  # a run that cannot train fails before generation writes anything
        if cfg.workflow.generate_data if generate is None else generate:
            self.generate()
        if not measures(cfg):
            return Report(summary={}, details={}, output_folder=cfg.output.folder)
        with self._telling_the_others(), self._sigterm_interrupts():
            summary, details, interrupted = _core.run_benchmark(
                cfg.to_json(redact=False),
                cfg.source_name,
                list(cfg.overrides),
                self.rank,
                self.world_size,
                self.console,
                self.progress,
                self.plugins,
                self.comm,
            )
        return Report(json.loads(summary), json.loads(details), interrupted, cfg.output.folder)

    def run_series(self, runs: int, *, generate: bool | None = None) -> list[Report]:
        """MLPerf's runs of one submission: ``runs`` consecutive runs (the first a warm-up), each in its own folder
        under ``output.folder`` named by its start as mlpstorage names run folders (``YYYYmmdd_HHMMSS``), run ``i``
        (from 0) with seed ``train.seed + i``; the data is generated once, before the first (by default when
        ``workflow.generate_data``; ``generate=False`` when ``generate()`` has written it).
        ``runs.json`` in the parent lists the folders, seeds and which is the warm-up. A run stopped by Ctrl-C ends
        the series."""
        if runs < 1:
            raise _core.ConfigError(f"--runs {runs}: expected 1 or more runs")
        base = self.config
        parent = Path(base.output.folder)
        base.plan(self.world_size, run=True)
        if base.workflow.generate_data if generate is None else generate:
            self.generate()
        done: list[Report] = []
        listed: list[dict[str, Any]] = []
        try:
            for i in range(runs):
                seed = int(base.train.seed) + i
                stamp = datetime.datetime.now().strftime("%Y%m%d_%H%M%S")
                name, n = stamp, 0
                while (parent / name).exists():  # a run shorter than a second
                    n += 1
                    name = f"{stamp}_{n}"
                if self.comm is not None:
                    name = self.comm.all_gather(name)[0]  # rank 0's clock names the folder for every rank
                # Each run is a Hydra run of its own: its folder is its run dir.
                given = [o for o in base.overrides if not o.lstrip("+~").startswith("hydra.run.dir=")]
                # The data is generated once, before the series: each run only trains (a training run to MLPerf's
                # tools, not a datagen one).
                record = [
                    *given,
                    f"++hydra.run.dir={parent / name}",
                    f"++workload.train.seed={seed}",
                    "++workload.workflow.generate_data=False",
                ]
                cfg = Config._from_json(base.to_json(redact=False), base.source_name, list(base.warnings), record)
                cfg.set("train.seed", seed)
                cfg.set("workflow.generate_data", False)
                cfg.set("output.folder", str(parent / name))
                self.config = cfg
                report = self.run_benchmark(generate=False)
                done.append(report)
                listed.append({"folder": name, "seed": seed, "warmup": i == 0, "interrupted": report.interrupted})
                if self.rank == 0:
                    (parent / "runs.json").write_text(json.dumps({"runs": listed}, indent=2) + "\n")
                if report.interrupted:
                    break
        finally:
            self.config = base
        return done

    @contextlib.contextmanager
    def _telling_the_others(self) -> Iterator[None]:
        """An error on this rank is sent to the others (MPI), which stop at their next wait with it instead of
        waiting for the timeout."""
        try:
            yield
        except Exception as e:
            if self.comm is not None:
                self.comm.fail(f"rank {self.rank} of {self.world_size} failed: {e}")
            raise

    @contextlib.contextmanager
    def _sigterm_interrupts(self) -> Iterator[None]:
        """In a multi-rank run, SIGTERM stops the run as Ctrl-C does (keeping what was measured): launchers turn a
        Ctrl-C into SIGTERM for every rank (Open MPI's mpirun, then SIGKILL after odls_base_sigkill_timeout, 1 s by
        default; torchrun)."""
        if self.comm is None or threading.current_thread() is not threading.main_thread():
            yield
            return

        def interrupt(signum: int, frame: object) -> None:
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, interrupt)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)


def batches(
    config: Config | str | dict[str, Any],
    *,
    split: str = "train",
    epoch: int = 1,
    rank: int | None = None,
    world_size: int | None = None,
) -> Iterator[_core.PyBatch]:
    """One epoch of ``split`` ('train' or 'valid') read through the reader pipeline, in the sampler's order.

    Each batch has ``samples`` (global sample ids), ``data`` (the samples' bytes back to back, a zero-copy buffer),
    ``spans`` (the (start, end) of each sample in ``data``) and ``bytes_read``.
    """
    cfg = as_config(config)
    size = launcher.world_size(world_size)
    return _core.Batches(cfg.to_json(redact=False), split, epoch, launcher.rank(rank, size), size)
