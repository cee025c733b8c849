"""C-STORE benchmark: dimse against dcmtk and pynetdicom, over 127.0.0.1, in one run.

Every sender/receiver pair sends the same generated data sets, three times, and
the medians are compared with dcmtk's and pynetdicom's own pairs measured in the
same run, so the ratios hold on any machine even when the absolute numbers do not.

    python bench/run.py                    # full run (~5 min on 2 cores)
    python bench/run.py --quick            # less data, 2 runs per pair (< 1 min)
    python bench/run.py --dimse-ref HEAD   # dimse as committed, not src/ as it is
    python bench/run.py --profile          # where dimse serve/store spend their time

What a number means:
- wall: from spawning the sender until it exits (start-up, file scanning,
  association, every C-STORE answered, release). Each receiver answers Success
  only after it has written the file (dimse and the pynetdicom SCP also fsync it;
  storescp does not, and has no option to), so "+sync" times an os.sync() right
  after the sender exits: what making storescp's files durable costs afterwards.
- start: the sender starting and exiting with nothing to do (Python imports),
  measured apart; "net img/s" is the count over (wall - start).
- peak RSS and CPU: the kernel's accounting of each process (wait4 rusage), see
  PeakRss for the one case where VmHWM samples stand in for it.
- the "[no fsync]" pair runs dimse serve under libeatmydata (with --sync filesystem,
  whose syncfs it stops): what durability costs.
Results go to bench/results/<timestamp>.json; bench/plot.py charts them.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import multiprocessing
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
# Absolute paths: pynetdicom installs console scripts of the same names, and a
# pyenv shim may shadow the Debian binaries on PATH.
STORESCP = "/usr/bin/storescp"
STORESCU = "/usr/bin/storescu"
# The dcmtk reference ran both tools with the largest PDU they accept
# (storescp and storescu take 4096..131072): 16 KB, their default, split a 40 KB
# image into three PDUs.
DCMTK_MAX_PDU = "131072"
AE_TITLE = "BENCH"
HOST = "127.0.0.1"
MB = 1e6
MIB = 1 << 20
BASELINES = ("dcmtk", "pynetdicom")
# A run during which other processes used more than this share of the CPUs is
# "disturbed": measured again (--retries), and flagged when it still is.
DISTURBED = 0.2
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
ROWS = COLUMNS = 512
FRAME_BYTES = ROWS * COLUMNS * 2


class BenchError(Exception):
    """A benchmark step failed in a way that makes its numbers meaningless."""


# --- what is measured --------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """A data set: `count` copies of pydicom's bundled `source` file with fresh
    UIDs, or else `count` Explicit VR LE images of `frames` 512x512 16-bit frames."""

    name: str
    count: int
    frames: int = 1
    source: str | None = None

    @property
    def sop_class(self) -> str:
        return CT_IMAGE_STORAGE if self.frames == 1 else ENHANCED_CT_IMAGE_STORAGE

    @property
    def keep_outputs(self) -> bool:
        """Whether each run's received files stay until the benchmark ends.

        ext4 without a journal (this project's machines) avoids reusing an inode
        freed up to 5 minutes ago, and scans past every such inode at each file it
        creates (`recently_deleted()` in fs/ext4/ialloc.c). Deleting one run's 1000
        files made every receiver of the next run pay about 1 ms of kernel CPU per
        file created, against 0.08 ms with none deleted. A few large files cost
        nothing to delete and much space to keep.
        """
        return self.count > 100


@dataclass(frozen=True)
class Pair:
    """A sender and a receiver; `key` names it in the JSON and the chart."""

    key: str
    sender: str  # dcmtk | dimse | pynetdicom
    receiver: str  # dcmtk | dimse | pynetdicom
    async_ops: int = 256  # dimse store's default (dimse.negotiation.MAX_ASYNC_OPS)
    no_fsync: bool = False  # receiver under libeatmydata: a diagnostic, not a contender
    sync: str = "file"  # dimse serve --sync: file (its default) or filesystem
    associations: int = 1  # dimse store --associations: parallel associations

    @property
    def label(self) -> str:
        sender = f"dimse (async {self.async_ops})" if self.sender == "dimse" else self.sender
        if self.associations > 1:
            sender += f" x{self.associations}"
        receiver = self.receiver + (" --sync fs" if self.sync == "filesystem" else "")
        return f"{sender} -> {receiver}" + (" [no fsync]" if self.no_fsync else "")


PAIRS = (
    Pair("dcmtk", "dcmtk", "dcmtk"),
    Pair("pynetdicom", "pynetdicom", "pynetdicom"),
    Pair("dimse", "dimse", "dimse"),
    Pair("dimse-syncfs", "dimse", "dimse", sync="filesystem"),
    # The "many associations" goal: 20 at once, the aggregate no lower than one's.
    Pair("dimse-20", "dimse", "dimse", associations=20),
    Pair("dimse-async1", "dimse", "dimse", 1),
    Pair("dimse-to-dcmtk", "dimse", "dcmtk"),
    Pair("dcmtk-to-dimse", "dcmtk", "dimse"),
    # What durability costs dimse serve: the same, with every flush a no-op. With
    # --sync filesystem: libeatmydata stops libc's fsync and syncfs, but not the
    # fsyncs `--sync file` hands to the kernel itself (Linux native AIO).
    Pair("dcmtk-to-dimse-nofsync", "dcmtk", "dimse", no_fsync=True, sync="filesystem"),
)
# libeatmydata (Debian package eatmydata) turns fsync, fdatasync, syncfs,
# sync_file_range and O_SYNC into no-ops for a process it is preloaded into; the pair
# above needs it.
EATMYDATA = "/usr/lib/x86_64-linux-gnu/libeatmydata.so"

# The corpus: many small CT images (pydicom's CT_small.dcm, 39 KB) and a
# few 100 MB multi-frame images (200 frames of 512 KiB: 104.9 MB).
FULL = (Scenario("small", 1000, source="CT_small.dcm"), Scenario("large", 3, frames=200))
QUICK = (Scenario("small", 100, source="CT_small.dcm"), Scenario("large", 2, frames=8))


# --- data ---------------------------------------------------------------------------


def copies(scenario: Scenario, folder: Path) -> list[Path]:
    """`scenario.source` saved `count` times: new study, series and instance UIDs."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    assert scenario.source is not None
    source = get_testdata_file(scenario.source)
    if source is None:
        raise SystemExit(f"pydicom's test file {scenario.source} is missing")
    ds = dcmread(source)
    # CT_small.dcm ends with Data Set Trailing Padding (FFFC,FFFC), which storescu
    # drops when it sends (PS3.10 §7.2 allows it): the byte-for-byte check would fail.
    if 0xFFFCFFFC in ds:
        del ds[0xFFFCFFFC]
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    paths = []
    for number in range(scenario.count):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = number + 1
        path = folder / f"IM{number:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def generate(scenario: Scenario, folder: Path) -> list[Path]:
    """Write `scenario`'s images with pydicom: unique UIDs, one study, one series.

    Pixel data is random (incompressible) and differs per image; no receiver
    looks at it, but identical files could flatter a cache somewhere.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    if scenario.source is not None:
        return copies(scenario, folder)
    pool = os.urandom(FRAME_BYTES + 8192)
    study, series = generate_uid(), generate_uid()
    paths = []
    for number in range(scenario.count):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = scenario.sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientName, ds.PatientID = "BENCH^DIMSE", "BENCH-0001"
        ds.StudyDate, ds.Modality, ds.Manufacturer = "20240101", "CT", "dimse bench"
        ds.SeriesNumber, ds.InstanceNumber = 1, number + 1
        ds.ImagePositionPatient = [0, 0, -number]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = ROWS, COLUMNS
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        if scenario.frames > 1:
            ds.NumberOfFrames = scenario.frames
        start = (number * 2) % 8192
        frames = [
            pool[(start + 2 * f) % 8192 : (start + 2 * f) % 8192 + FRAME_BYTES]
            for f in range(scenario.frames)
        ]
        ds.PixelData = b"".join(frames)
        path = folder / f"IM{number:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def dataset_start(path: Path) -> tuple[str, int]:
    """The SOP instance UID of `path` and the offset where its data set begins."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    with path.open("rb") as fp:
        read_preamble(fp, force=False)
        meta = _read_file_meta_info(fp)
        return str(meta.MediaStorageSOPInstanceUID), fp.tell()


def same_dataset(sent: Path, received: Path) -> bool:
    """Whether both files hold the same data set bytes after their (different) file meta.

    Read in chunks: holding two 50 MB files would raise this process's peak RSS,
    which children inherit in their wait4 accounting (see PeakRss).
    """
    with sent.open("rb") as a, received.open("rb") as b:
        a.seek(dataset_start(sent)[1])
        b.seek(dataset_start(received)[1])
        while True:
            chunk = a.read(1 << 20)
            if chunk != b.read(1 << 20):
                return False
            if not chunk:
                return True


def received_files(folder: Path) -> Iterator[Path]:
    """Every stored file under `folder`, at any depth, hidden folders (.incoming) skipped."""
    for current, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.startswith("."):
                yield Path(current) / name


def is_dicom(path: Path) -> bool:
    """A PS3.10 file: 128-byte preamble, then "DICM"."""
    with path.open("rb") as fp:
        return fp.read(132)[128:] == b"DICM"


def verify(sent: Sequence[Path], folder: Path) -> list[str]:
    """Check every instance arrived once, and two of them byte-for-byte (all receivers
    are bit-preserving here, so the data set after the file meta must be identical).

    Returns the other files the receiver keeps there (an index database, say): no
    error, but recorded.
    """
    expected = {dataset_start(p)[0]: p for p in sent}
    files = list(received_files(folder))
    dicom = [p for p in files if is_dicom(p)]
    others = sorted(str(p.relative_to(folder)) for p in set(files).difference(dicom))
    if len(dicom) != len(sent):
        raise BenchError(f"{len(dicom)} DICOM file(s) in {folder}, expected {len(sent)}")
    seen: dict[str, Path] = {}
    for path in dicom:
        uid = dataset_start(path)[0]
        if uid not in expected or uid in seen:
            raise BenchError(f"{path}: unexpected or duplicate instance {uid}")
        seen[uid] = path
    for uid in (next(iter(expected)), list(expected)[-1]):
        if not same_dataset(expected[uid], seen[uid]):
            raise BenchError(f"{seen[uid]}: data set differs from what was sent")
    return others


# --- processes ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def listening(port: int) -> bool:
    """Whether something listens on `port`, read from /proc: probing with a connection
    would make each SCP handle (and log) an aborted association."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def dcmtk_env() -> dict[str, str]:
    """Debian's dcmtk leaves Nagle on unless told, then stalls on delayed ACKs."""
    return {**os.environ, "TCP_NODELAY": "1"}


def receiver_command(kind: str, port: int, out: Path, sync: str = "file") -> list[str]:
    if kind == "dcmtk":
        # +B bit-preserving, +xe prefer Explicit VR LE, -dhl no reverse DNS lookup.
        return [
            *(STORESCP, "+B", "+xe", "-dhl", "-pdu", DCMTK_MAX_PDU),
            *("-aet", AE_TITLE, "-od", str(out), str(port)),
        ]
    if kind == "dimse":
        return [
            *(sys.executable, "-m", "dimse", "serve", str(port)),
            *("--bind", HOST, "-aet", AE_TITLE, "-od", str(out)),
            *(("--sync", sync) if sync != "file" else ()),
        ]
    return [sys.executable, str(BENCH / "pynetdicom_scp.py"), str(port), str(out)]


def sender_command(pair: Pair, port: int, data: Path) -> list[str]:
    if pair.sender == "dcmtk":
        return [
            *(STORESCU, "-aec", AE_TITLE, "-pdu", DCMTK_MAX_PDU),
            *("+sd", "+r", HOST, str(port), str(data)),
        ]
    if pair.sender == "dimse":
        return [
            *(sys.executable, "-m", "dimse", "store", HOST, str(port), str(data)),
            *("-r", "-aec", AE_TITLE, "--async-ops", str(pair.async_ops)),
            *("--associations", str(pair.associations)),
        ]
    return [
        *(sys.executable, str(BENCH / "pynetdicom_scu.py"), HOST, str(port), str(data)),
        *("--called-ae", AE_TITLE),
    ]


def startup_command(sender: str) -> list[str]:
    """The sender starting and exiting at once (imports included): a fixed cost that
    every wall time contains, measured so that it can be told apart."""
    if sender == "dcmtk":
        return [STORESCU, "--version"]
    if sender == "dimse":
        return [sys.executable, "-m", "dimse", "store", "--help"]
    return [sys.executable, str(BENCH / "pynetdicom_scu.py"), "--help"]


def startup_time(sender: str) -> float:
    """How long the sender takes to start and exit, in s."""
    started = time.perf_counter()
    subprocess.run(startup_command(sender), stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def vm_hwm(pid: int | str) -> int:
    """VmHWM (peak RSS) of a live process, in bytes; 0 once it has exited."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fp:
            for line in fp:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class PeakRss:
    """A child's peak RSS, from the kernel when its figure can be trusted.

    wait4's ru_maxrss has one quirk: a child starts with a copy of (vforked: a share
    in) its parent's memory map, and exec() keeps that map's high-water mark, so
    ru_maxrss = max(the child's real peak, our peak when it was spawned). When it
    exceeds our peak it is exact; otherwise the child's peak is the largest VmHWM
    read from /proc/<pid>/status, sampled every 10 ms while it runs (VmHWM only
    grows, so only growth in the last few ms before exit can be missed). Popen
    returns once exec() has succeeded, so no sample sees the parent's image.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.parent_peak = vm_hwm("self")  # read after the fork: an upper bound
        self.sampled = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.sampled = max(self.sampled, vm_hwm(self.pid))
            self._stop.wait(0.01)

    def finish(self, ru_maxrss_kib: int) -> tuple[int, str]:
        """The peak in bytes and where it came from ("wait4" or "sampled")."""
        self._stop.set()
        self._thread.join()
        kernel = ru_maxrss_kib * 1024
        if kernel > self.parent_peak:
            return kernel, "wait4"
        return self.sampled, "sampled"


@dataclass(frozen=True)
class Exited:
    """How a process ended, with the kernel's accounting of it."""

    code: int
    seconds: float
    peak_rss: int  # bytes
    rss_source: str
    cpu: float  # user + system seconds


@dataclass(frozen=True)
class Running:
    """A started process and the watch on its memory."""

    process: subprocess.Popen[bytes]
    peak: PeakRss


def spawn(command: list[str], log: BinaryIO, env: dict[str, str] | None) -> Running:
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    return Running(process, PeakRss(process.pid))


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_times() -> tuple[float, float]:
    """CPU seconds the machine has spent busy (user, system, interrupts) and stolen
    (a virtual machine's CPU time that the host gave to someone else)."""
    user, nice, system, _, _, irq, softirq, steal = (
        int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    return (user + nice + system + irq + softirq) / CLOCK_TICKS, steal / CLOCK_TICKS


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a live process has used so far; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def disk_writes() -> int:
    """Sectors written and discarded so far by the machine's disks (/proc/diskstats; a
    partition counts twice, with its disk: good enough for a threshold)."""
    total = 0
    for line in Path("/proc/diskstats").read_text().splitlines():
        fields = line.split()
        if fields[2].startswith(("loop", "ram", "zram", "dm-")):
            continue
        total += int(fields[9]) + (int(fields[16]) if len(fields) > 16 else 0)
    return total


def wait_for_quiet(limit: float, threshold: float = 0.15) -> float:
    """Wait up to `limit` s for the machine to be idle (another session's tests may share
    it) and its disks to have stopped writing (the device may still be busy with the
    last run's files, synced and deleted); returns the busy share of the last half
    second, 0..1."""
    deadline = time.perf_counter() + limit
    cpus = os.cpu_count() or 1
    sample = 0.5 if limit > 0 else 0.1
    while True:
        before, written = cpu_times()[0], disk_writes()
        time.sleep(sample)
        share = (cpu_times()[0] - before) / (sample * cpus)
        idle_disk = disk_writes() - written < 2048  # under 1 MiB in the sample
        if (share < threshold and idle_disk) or time.perf_counter() >= deadline:
            return share


def file_creation_ms(folder: Path, count: int = 200) -> float:
    """Milliseconds to create and close an empty file, from `count` in a new folder
    (left in place: deleting them would cause what this detects). ext4 without a
    journal skips the inodes freed in the last minutes, scanning past each, so that
    within minutes of deleting many files (another benchmark's outputs, a test run)
    each creation costs ~1 ms instead of ~0.05 ms, and storescp suffers most."""
    folder.mkdir(parents=True)
    started = time.perf_counter()
    for number in range(count):
        os.close(os.open(folder / str(number), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    return (time.perf_counter() - started) * 1000 / count


def sequential_write_mb_s(folder: Path, sizes: Sequence[int]) -> float:
    """The disk's own pace for what a receiver of the large images writes: files of
    these sizes written in 1 MiB blocks, each fsynced before it is closed (as `dd
    bs=1M conv=fsync` does), in MB/s. The issue asks the archive for 80 % of it. The
    files are deleted after: a few large files cost nothing to delete."""
    folder.mkdir(parents=True, exist_ok=True)
    block = memoryview(os.urandom(MIB))
    paths = [folder / f"{number}.bin" for number in range(len(sizes))]
    started = time.perf_counter()
    for path, size in zip(paths, sizes, strict=True):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for offset in range(0, size, MIB):
                chunk = block[: min(MIB, size - offset)]
                if os.write(fd, chunk) != len(chunk):
                    raise BenchError(f"short write to {path}")
            os.fsync(fd)
        finally:
            os.close(fd)
    elapsed = time.perf_counter() - started
    for path in paths:
        path.unlink()
    return sum(sizes) / MB / elapsed


#: File creation slower than this (ms) means many files were deleted in the minutes
#: before: undisturbed, this machine takes 0.03-0.05 ms; a run started a minute
#: after another's clean-up measured 0.21 ms, and its storescp was 30 % slower.
SLOW_CREATE_MS = 0.1


def wait_for_fast_creation(work: Path, limit: float) -> float:
    """Wait up to `limit` s for file creation to be fast again (file_creation_ms);
    returns the last figure. Each probe is a new folder, left in place."""
    deadline = time.perf_counter() + limit
    probe = 0
    while True:
        ms = file_creation_ms(work / f"probe-{probe}")
        probe += 1
        if ms <= SLOW_CREATE_MS or time.perf_counter() >= deadline:
            return ms
        print(
            f"creating a file takes {ms:.2f} ms (files were deleted in the last minutes): "
            "waiting for it to be fast again",
            flush=True,
        )
        time.sleep(min(30.0, max(0.0, deadline - time.perf_counter())))


def dimse_reported_seconds(log: Path) -> float | None:
    """The transfer time `dimse store` prints in its last line ("... in 3.81 s (..."):
    association to release, without start-up and file scanning. None if not found."""
    lines = log.read_text(errors="replace").splitlines()
    found = re.search(r" in ([0-9.]+) s \(", lines[-1]) if lines else None
    return float(found.group(1)) if found else None


def has_exited(pid: int) -> bool:
    """Whether a child has exited, without reaping it (wait4 must see it for rusage)."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def reap(running: Running, timeout: float, started: float) -> Exited:
    """wait4() the process (killing it after `timeout`) for its peak RSS and CPU time."""
    process = running.process
    watchdog = threading.Timer(timeout, process.kill)
    watchdog.start()
    try:
        _, status, usage = os.wait4(process.pid, 0)
    finally:
        watchdog.cancel()
    ended = time.perf_counter()
    process.returncode = os.waitstatus_to_exitcode(status)
    peak, source = running.peak.finish(usage.ru_maxrss)
    return Exited(
        process.returncode, ended - started, peak, source, usage.ru_utime + usage.ru_stime
    )


def measure(
    pair: Pair,
    sent: Sequence[Path],
    data: Path,
    work: Path,
    tag: str,
    timeout: float,
    quiet: float,
    keep_output: bool,
) -> dict[str, Any]:
    """One transfer of `data` from `pair.sender` to `pair.receiver`, checked afterwards.

    Also records how much CPU the rest of the machine used meanwhile ("other_cpu":
    busy time less what the two processes used; it includes kernel work the
    transfer causes, such as loopback softirqs and writeback), and the share of CPU
    time the hypervisor stole: a disturbed run shows in them.
    """
    out = work / f"out-{tag}"
    out.mkdir()
    port = free_port()
    recv_env = dcmtk_env() if pair.receiver == "dcmtk" else None
    if pair.no_fsync:
        recv_env = {**(recv_env or os.environ), "LD_PRELOAD": EATMYDATA}
    send_env = dcmtk_env() if pair.sender == "dcmtk" else None
    with (
        (work / f"{tag}.receiver.log").open("wb") as recv_log,
        (work / f"{tag}.sender.log").open("wb") as send_log,
    ):
        receiver = spawn(receiver_command(pair.receiver, port, out, pair.sync), recv_log, recv_env)
        recv_started = time.perf_counter()
        deadline = recv_started + 30
        while not listening(port):
            if has_exited(receiver.process.pid) or time.perf_counter() > deadline:
                receiver.process.kill()
                reap(receiver, 10, recv_started)
                shutil.rmtree(out)
                raise BenchError(f"{pair.receiver} receiver did not start; see {recv_log.name}")
            time.sleep(0.02)  # reading /proc/net/tcp costs ~10 ms of CPU here
        busy_before_start = wait_for_quiet(quiet)
        receiver_cpu = process_cpu(receiver.process.pid)
        busy, steal = cpu_times()
        started = time.perf_counter()
        sender = spawn(sender_command(pair, port, data), send_log, send_env)
        sent_result = reap(sender, timeout, started)
        busy_after, steal_after = cpu_times()
        busy, steal = busy_after - busy, steal_after - steal
        receiver_cpu = process_cpu(receiver.process.pid) - receiver_cpu
        other_cpu = max(0.0, busy - sent_result.cpu - receiver_cpu)
        sync_started = time.perf_counter()
        os.sync()
        sync_seconds = time.perf_counter() - sync_started
        receiver.process.send_signal(signal.SIGTERM)
        recv_result = reap(receiver, 60, recv_started)
    error, others = None, []
    reported = dimse_reported_seconds(Path(send_log.name)) if pair.sender == "dimse" else None
    try:
        if sent_result.code != 0:
            raise BenchError(f"sender exited with {sent_result.code}; see {send_log.name}")
        others = verify(sent, out)
    except BenchError as failure:
        error = str(failure)
    if not keep_output:  # else deleted with `work` at the end (see Scenario.keep_outputs)
        shutil.rmtree(out)
    os.sync()  # leave no dirty pages behind for the next run to pay for
    return {
        "wall_s": sent_result.seconds,
        "sync_s": sync_seconds,
        "sender_rss": sent_result.peak_rss,
        "receiver_rss": recv_result.peak_rss,
        "sender_rss_from": sent_result.rss_source,
        "receiver_rss_from": recv_result.rss_source,
        "sender_cpu_s": sent_result.cpu,
        "receiver_cpu_s": recv_result.cpu,
        "sender_exit": sent_result.code,
        "receiver_other_files": others,
        "sender_reported_s": reported,
        "busy_before_start": round(busy_before_start, 3),
        "other_cpu_share": round(other_cpu / (sent_result.seconds * (os.cpu_count() or 1)), 3),
        "steal_share": round(steal / (sent_result.seconds * (os.cpu_count() or 1)), 3),
        "error": error,
    }


# --- summary ------------------------------------------------------------------------

METRICS = (
    *("wall_s", "sync_s", "sender_rss", "receiver_rss", "sender_cpu_s", "receiver_cpu_s"),
    *("other_cpu_share", "steal_share"),
)


def summarize(
    runs: list[dict[str, Any]],
    scenarios: Sequence[Scenario],
    sizes: dict[str, int],
    pairs: Sequence[Pair],
    startup: dict[str, float],
) -> dict[str, dict[str, dict[str, Any]]]:
    """Medians per scenario and pair, then every number as a ratio to each baseline."""
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for scenario in scenarios:
        table: dict[str, dict[str, Any]] = {}
        for pair in pairs:
            mine = [
                r
                for r in runs
                if r["scenario"] == scenario.name
                and r["pair"] == pair.key
                and not r.get("superseded")
            ]
            good = [r for r in mine if r["error"] is None]
            row: dict[str, Any] = {
                "label": pair.label,
                "runs": len(mine),
                "failed_runs": len(mine) - len(good),
                "disturbed_runs": sum(1 for r in good if r.get("disturbed")),
            }
            if good:
                for metric in METRICS:
                    row[metric] = statistics.median(r[metric] for r in good)
                row["images_per_s"] = scenario.count / row["wall_s"]
                row["mb_per_s"] = sizes[scenario.name] / MB / row["wall_s"]
                row["durable_s"] = statistics.median(r["wall_s"] + r["sync_s"] for r in good)
                row["cpu_s"] = statistics.median(
                    r["sender_cpu_s"] + r["receiver_cpu_s"] for r in good
                )
                row["sender_startup_s"] = startup[pair.sender]
                net = row["wall_s"] - startup[pair.sender]
                if net > 0:
                    row["net_images_per_s"] = scenario.count / net
                reported = [r["sender_reported_s"] for r in good if r.get("sender_reported_s")]
                if reported:
                    row["sender_reported_s"] = statistics.median(reported)
            table[pair.key] = row
        for row in table.values():
            for base in BASELINES:
                reference = table[base]
                if "wall_s" not in row or "wall_s" not in reference:
                    continue
                row[f"vs_{base}"] = {
                    metric: row[metric] / reference[metric]
                    for metric in (
                        "wall_s",
                        "durable_s",
                        "images_per_s",
                        "mb_per_s",
                        "net_images_per_s",
                        "cpu_s",
                        "receiver_rss",
                        "sender_rss",
                        "receiver_cpu_s",
                        "sender_cpu_s",
                    )
                    if metric in row and reference.get(metric, 0) > 0
                }
        summary[scenario.name] = table
    return summary


def _table(head: list[str], rows: list[list[str]], markdown: bool) -> list[str]:
    """Columns right-aligned (the first left-aligned), as plain text or as Markdown."""
    if markdown:
        rule = ["---"] + ["---:"] * (len(head) - 1)
        return ["| " + " | ".join(r) + " |" for r in (head, rule, *rows)]
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    lines = []
    for number, cells in enumerate((head, *rows)):
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()
        )
        if number == 0:
            lines.append("-" * len(lines[-1]))
    return lines


def size_label(size: float) -> str:
    """39 KB, 104.9 MB: a file size for a title (decimal units, as in the tables)."""
    return f"{size / 1e3:.0f} KB" if size < MB else f"{size / MB:.1f} MB"


def render(
    summary: dict[str, dict[str, dict[str, Any]]],
    scenarios: Sequence[dict[str, Any]],
    markdown: bool = False,
) -> str:
    """Two tables per scenario: the medians, and the ratios to the baselines."""
    lines = []
    for scenario in scenarios:
        size = scenario["bytes"] / MB
        title = (
            f"{scenario['name']}: {scenario['count']} x "
            f"{size_label(scenario['bytes'] / scenario['count'])} ({size:.0f} MB), medians"
        )
        lines += ["", f"**{title}**" if markdown else title, ""]
        head = [
            *("pair", "wall s", "img/s", "MB/s", "start s", "net img/s", "+sync s"),
            *("recv MiB", "send MiB", "recv CPU s", "send CPU s", "CPU ms/img"),
            *("others %", "steal %"),
        ]
        disk = scenario.get("disk_mb_per_s")
        if disk:
            head.append("disk %")
        rows = []
        for row in summary[scenario["name"]].values():
            if "wall_s" not in row:
                rows.append(
                    [row["label"], f"all {row['runs']} run(s) failed"] + [""] * (len(head) - 2)
                )
                continue
            notes = [
                f"{row[key]} {word}"
                for key, word in (("failed_runs", "failed"), ("disturbed_runs", "disturbed"))
                if row.get(key)
            ]
            failed = f" ({', '.join(notes)})" if notes else ""
            rows.append(
                [
                    row["label"] + failed,
                    f"{row['wall_s']:.2f}",
                    f"{row['images_per_s']:.1f}",
                    f"{row['mb_per_s']:.1f}",
                    f"{row['sender_startup_s']:.2f}",
                    f"{row['net_images_per_s']:.1f}" if "net_images_per_s" in row else "-",
                    f"{row['sync_s']:.2f}",
                    f"{row['receiver_rss'] / MIB:.1f}",
                    f"{row['sender_rss'] / MIB:.1f}",
                    f"{row['receiver_cpu_s']:.2f}",
                    f"{row['sender_cpu_s']:.2f}",
                    f"{row['cpu_s'] * 1000 / scenario['count']:.1f}" if "cpu_s" in row else "-",
                    f"{row['other_cpu_share'] * 100:.0f}" if "other_cpu_share" in row else "-",
                    f"{row['steal_share'] * 100:.0f}" if "steal_share" in row else "-",
                    *([f"{row['mb_per_s'] * 100 / disk:.0f}"] if disk else []),
                ]
            )
        lines += _table(head, rows, markdown)
        if disk:
            lines += [
                "",
                f"*disk %*: of the disk's own pace at the same moments, {disk:.0f} MB/s "
                "(the same bytes written in files of the same sizes, each fsynced, "
                "as `dd conv=fsync`; median)",
            ]
        lines.append("")
        metrics = {
            "images_per_s": "img/s",
            "net_images_per_s": "net img/s",
            "durable_s": "wall+sync",
            "cpu_s": "CPU s (both)",
            "receiver_rss": "recv RSS",
            "sender_rss": "send RSS",
        }
        for base in BASELINES:
            head = [f"ratio to {base}", *metrics.values()]
            rows = []
            for row in summary[scenario["name"]].values():
                ratios = row.get(f"vs_{base}", {})
                rows.append(
                    [row["label"]] + [f"{ratios[m]:.2f}" if m in ratios else "-" for m in metrics]
                )
            lines += _table(head, rows, markdown)
            lines.append("")
    return "\n".join(lines)


# --- machine facts ------------------------------------------------------------------


_EVENT_LOOP = """
try:
    from dimse.transport import event_loop_factory
except ImportError:
    print("asyncio")
else:
    print("uvloop" if event_loop_factory() else "asyncio")
"""


def _output(command: Sequence[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (done.stdout or done.stderr).strip()


def machine(work: Path, ref: str | None) -> dict[str, Any]:
    """What the numbers depend on, recorded next to them."""
    import pydicom
    import pynetdicom

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kib = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
    dcmtk = _output([STORESCP, "--version"]).splitlines()[0].strip("$ ").strip()
    try:
        from importlib.metadata import version

        dimse_version = version("dimse")
    except Exception:
        dimse_version = "unknown"
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "ram_gib": round(mem_kib / (1 << 20), 1),
        "kernel": platform.release(),
        "os": _output(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "python": platform.python_version(),
        "pydicom": pydicom.__version__,
        "pynetdicom": pynetdicom.__version__,
        "dcmtk": dcmtk,
        "dcmtk_package": _output(["dpkg-query", "-W", "-f=${Version}", "dcmtk"]),
        "dimse": dimse_version,
        "dimse_commit": _output(["git", "-C", str(ROOT), "rev-parse", "--short", ref or "HEAD"]),
        "dimse_src_modified": ref is None
        and bool(_output(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"])),
        "dimse_imported_from": _output(
            [sys.executable, "-c", "import dimse; print(dimse.__file__)"]
        ),
        # The loop the measured `dimse` runs on (asyncio's before event_loop_factory).
        "dimse_event_loop": _output([sys.executable, "-c", _EVENT_LOOP]),
        "filesystem": _output(["findmnt", "-n", "-o", "FSTYPE", "--target", str(work)]),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def snapshot(ref: str | None, work: Path) -> Path:
    """A private copy of `src/dimse`, byte-compiled, for every dimse process to import.

    A copy, because the package is installed editable and its sources may change
    during a run; `ref` takes it from git (HEAD, a tag) instead of the work tree.
    Byte-compiled, because with PYTHONDONTWRITEBYTECODE set (as on this project's
    machines) an editable dimse would be compiled at each start, while pydicom and
    pynetdicom, installed by pip, have their .pyc files.
    """
    target = work / "dimse-src"
    if ref is None:
        shutil.copytree(
            ROOT / "src" / "dimse",
            target / "src" / "dimse",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    else:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", ref, "src/dimse"],
            capture_output=True,
            check=True,
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(target, filter="data")
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(target / "src")], check=True)
    return target / "src"


def check_requirements() -> None:
    """Fail early, with the fix, when a tool or package is missing."""
    missing = [m for m in ("pydicom", "pynetdicom", "dimse") if not importlib.util.find_spec(m)]
    if missing:
        sys.exit(
            f"missing Python packages: {', '.join(missing)}\n"
            "  pip install -e . && pip install -r bench/requirements.txt"
        )
    tools = [t for t in (STORESCP, STORESCU) if not os.access(t, os.X_OK)]
    if tools:
        sys.exit(f"missing {', '.join(tools)}: apt-get install dcmtk")


# --- profile ------------------------------------------------------------------------


def profile(scenario: Scenario, work: Path, top: int) -> None:
    """Run `dimse store` -> `dimse serve` once under cProfile, print where time goes.

    bench/profile_dimse.py profiles worker threads too: `dimse serve` writes and
    fsyncs in them, which the event loop thread only sees as waiting in select.
    """
    import pstats

    data = work / "data" / scenario.name
    generate(scenario, data)
    out = work / "out-profile"
    out.mkdir()
    port = free_port()
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    serve_prof = RESULTS / f"{stamp}-serve.prof"
    store_prof = RESULTS / f"{stamp}-store.prof"
    launcher = [sys.executable, str(BENCH / "profile_dimse.py")]
    receiver = receiver_command("dimse", port, out)[3:]  # without python -m dimse
    sender = sender_command(PAIRS[2], port, data)[3:]
    serve = subprocess.Popen(
        [*launcher, str(serve_prof), *receiver],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while not listening(port):
        time.sleep(0.02)
    started = time.perf_counter()
    subprocess.run([*launcher, str(store_prof), *sender], stdout=subprocess.DEVNULL, check=True)
    elapsed = time.perf_counter() - started
    serve.send_signal(signal.SIGTERM)
    serve.wait(60)
    print(f"{scenario.count} images in {elapsed:.2f} s under cProfile ({' '.join(sender)})\n")
    for title, path in (
        ("dimse serve, event loop thread", serve_prof),
        ("dimse serve, worker threads", Path(f"{serve_prof}.threads")),
        ("dimse store, event loop thread", store_prof),
        ("dimse store, worker threads", Path(f"{store_prof}.threads")),
    ):
        if not path.exists():
            continue
        stats = pstats.Stats(str(path)).strip_dirs()
        for order in ("cumulative", "tottime"):
            print(f"=== {title}: top {top} by {order} time ({path.name}) ===")
            stats.sort_stats(order).print_stats(top)


# --- latency ------------------------------------------------------------------------

LATENCY_FILES = 200  # small images stored one at a time per receiver


def latencies(files: Sequence[Path], work: Path) -> dict[str, Any]:
    """C-ECHO round trip and C-STORE latency p50/p99 of each receiver (bench/latency.py:
    dimse as the client for all, one request in flight)."""
    results: dict[str, Any] = {}
    for kind in ("dcmtk", "pynetdicom", "dimse"):
        out = work / f"out-latency-{kind}"
        out.mkdir()
        port = free_port()
        env = dcmtk_env() if kind == "dcmtk" else None
        with (work / f"latency-{kind}.receiver.log").open("wb") as log:
            receiver = spawn(receiver_command(kind, port, out), log, env)
            started = time.perf_counter()
            try:
                while not listening(port):
                    if time.perf_counter() - started > 30:
                        raise BenchError(f"{kind} receiver did not start; see {log.name}")
                    time.sleep(0.02)
                measured = subprocess.run(
                    [sys.executable, str(BENCH / "latency.py"), str(port)]
                    + [str(f) for f in files[:LATENCY_FILES]],
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
                if measured.returncode != 0:
                    raise BenchError(f"latency against {kind}: {measured.stderr.strip()}")
                results[kind] = json.loads(measured.stdout)
            except BenchError as failure:
                results[kind] = {"error": str(failure)}
            finally:
                receiver.process.send_signal(signal.SIGTERM)
                reap(receiver, 60, started)
        shutil.rmtree(out)
        print(f"latency, dimse -> {kind}: {results[kind]}", flush=True)
    return results


def render_latency(latency: dict[str, Any], markdown: bool) -> list[str]:
    head = ["receiver", "C-ECHO p50 ms", "C-ECHO p99 ms", "C-STORE p50 ms", "C-STORE p99 ms"]
    rows = [
        [kind, *(f"{r[op][p]:.2f}" for op in ("echo", "store") for p in ("p50_ms", "p99_ms"))]
        for kind, r in latency.items()
        if "error" not in r
    ]
    title = f"latency: dimse as the client, one request in flight, {LATENCY_FILES} small images"
    return ["", f"**{title}**" if markdown else title, "", *_table(head, rows, markdown)]


# --- main ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small data, for a smoke run")
    parser.add_argument(
        "--repeat", type=int, help="runs per pair, the median is reported (3; --quick: 2)"
    )
    parser.add_argument("--only", nargs="+", choices=[p.key for p in PAIRS], help="these pairs")
    parser.add_argument("--timeout", type=float, default=300, help="per transfer, s (300)")
    parser.add_argument(
        "--retries",
        type=int,
        metavar="N",
        help="measure a run disturbed by other processes again, up to N times (2; --quick: 0)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        metavar="S",
        help="before each transfer, wait up to S s for other CPU use to stop (10; --quick: 0)",
    )
    parser.add_argument(
        "--wait-disk",
        type=float,
        default=600,
        metavar="S",
        help="wait up to S s for file creation to be fast, after deletions (600)",
    )
    parser.add_argument("--workdir", type=Path, help="where to put data (a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the data and logs")
    parser.add_argument("--no-plot", action="store_true", help="do not draw bench/benchmark.png")
    parser.add_argument("--profile", action="store_true", help="cProfile dimse serve/store")
    parser.add_argument("--show", type=Path, metavar="JSON", help="print a results file's tables")
    parser.add_argument("--markdown", action="store_true", help="--show them as Markdown")
    parser.add_argument(
        "--dimse-ref",
        metavar="REF",
        help="measure dimse as committed at this git ref (HEAD, a tag) instead of src/",
    )
    args = parser.parse_args(argv)
    if args.show:
        document = json.loads(args.show.read_text())
        print(render(document["summary"], document["scenarios"], args.markdown))
        print("\n".join(render_latency(document.get("latency", {}), args.markdown)))
        return 0
    check_requirements()

    scenarios = QUICK if args.quick else FULL
    if args.repeat is None:
        args.repeat = 2 if args.quick else 3
    if args.wait_quiet is None:
        args.wait_quiet = 0 if args.quick else 10
    if args.retries is None:
        args.retries = 0 if args.quick else 2
    work = Path(tempfile.mkdtemp(prefix="dimse-bench-", dir=args.workdir))
    try:
        # Every child inherits it; PYTHONPATH comes before the editable install.
        os.environ["PYTHONPATH"] = str(snapshot(args.dimse_ref, work))
        if args.profile:
            profile(scenarios[0], work, 15)
            return 0
        return run(args, scenarios, work)
    finally:
        if args.keep:
            print(f"data and logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, scenarios: Sequence[Scenario], work: Path) -> int:
    pairs = [p for p in PAIRS if not args.only or p.key in args.only or p.key in BASELINES]
    if not os.path.exists(EATMYDATA):
        print(f"skipping the [no fsync] pair: no {EATMYDATA} (apt-get install eatmydata)")
        pairs = [p for p in pairs if not p.no_fsync]
    began = time.time()
    facts = machine(work, args.dimse_ref)
    print(
        f"{facts['cpus']} CPUs ({facts['cpu_model']}), {facts['ram_gib']} GiB, "
        f"Python {facts['python']}, {facts['dcmtk']}, pynetdicom {facts['pynetdicom']}, "
        f"dimse {facts['dimse']} ({facts['dimse_commit']}"
        f"{', src modified' if facts['dimse_src_modified'] else ''}, "
        f"from {facts['dimse_imported_from']}, on {facts['dimse_event_loop']}); data in {work}"
    )
    if os.getloadavg()[0] > 1.0:
        print(
            f"warning: load average {os.getloadavg()[0]:.1f}: something else is running, "
            "so the numbers will be noisy"
        )
    sent: dict[str, list[Path]] = {}
    sizes: dict[str, int] = {}
    clock = time.perf_counter()
    # In child processes, so that this one stays small (see PeakRss).
    fork = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=len(scenarios), mp_context=fork) as pool:
        jobs = {s.name: pool.submit(generate, s, work / "data" / s.name) for s in scenarios}
        for scenario in scenarios:
            sent[scenario.name] = jobs[scenario.name].result()
            sizes[scenario.name] = sum(p.stat().st_size for p in sent[scenario.name])
            print(
                f"generated {scenario.name}: {scenario.count} files, "
                f"{sizes[scenario.name] / MB:.0f} MB ({time.perf_counter() - clock:.1f} s)"
            )
    os.sync()
    facts["create_ms_per_file"] = wait_for_fast_creation(work, args.wait_disk)
    if facts["create_ms_per_file"] > SLOW_CREATE_MS:
        print(
            f"warning: creating a file still takes {facts['create_ms_per_file']:.2f} ms: "
            "receivers will be slowed unevenly"
        )
    senders = list(dict.fromkeys(p.sender for p in pairs))
    for sender in senders:
        startup_time(sender)  # warm-up: the first start reads everything from disk
    startups: dict[str, list[float]] = {sender: [] for sender in senders}

    runs: list[dict[str, Any]] = []
    disk: dict[str, list[float]] = {s.name: [] for s in scenarios if s.frames > 1}

    def once(scenario: Scenario, pair: Pair, repetition: int, attempt: int) -> dict[str, Any]:
        tag = f"{scenario.name}-{pair.key}-{repetition}-{attempt}"
        try:
            result = measure(
                pair,
                sent[scenario.name],
                work / "data" / scenario.name,
                work,
                tag,
                args.timeout,
                args.wait_quiet,
                scenario.keep_outputs,
            )
        except BenchError as failure:
            result = {"wall_s": float("nan"), "error": str(failure)}
        result |= {
            "scenario": scenario.name,
            "pair": pair.key,
            "repetition": repetition,
            "attempt": attempt,
            "disturbed": result.get("other_cpu_share", 0) > DISTURBED,
            "superseded": False,
        }
        runs.append(result)
        status = f"FAILED: {result['error']}" if result["error"] else "ok"
        if result["disturbed"]:
            status += f" (disturbed: others used {result['other_cpu_share']:.0%} of the CPUs)"
        print(
            f"  [{repetition + 1}/{args.repeat}] {scenario.name:<6} {pair.label:<28}"
            f"{result['wall_s']:7.2f} s  {status}",
            flush=True,
        )
        return result

    # Repetition is the outer loop so that a slow spell of the machine hits every pair,
    # and each repetition starts with another pair, so that no pair always follows the
    # same one. (In a fixed order, dcmtk's small run took a median 2.4 s against
    # 1.1-1.5 s in runs of its own; the cause proved to be the deleted outputs of the
    # runs before it: see Scenario.keep_outputs.)
    for repetition in range(args.repeat):
        for sender in senders:
            startups[sender].append(startup_time(sender))
        turn = repetition % len(pairs)
        for scenario in scenarios:
            if scenario.frames > 1:  # the large images: the disk's pace at that moment too
                wait_for_quiet(args.wait_quiet)
                rate = sequential_write_mb_s(
                    work / "disk", [p.stat().st_size for p in sent[scenario.name]]
                )
                disk[scenario.name].append(rate)
                print(
                    f"  [{repetition + 1}/{args.repeat}] {scenario.name:<6} "
                    f"{'disk: fsynced sequential writes':<28}{rate:7.0f} MB/s",
                    flush=True,
                )
            for pair in pairs[turn:] + pairs[:turn]:
                once(scenario, pair, repetition, 0)
    # Runs that other processes disturbed are measured again, a limited number of times.
    for attempt in range(1, args.retries + 1):
        again = [r for r in runs if r["disturbed"] and not r["superseded"]]
        if again:
            print(f"measuring {len(again)} disturbed run(s) again")
        for old in again:
            old["superseded"] = True
            scenario = next(s for s in scenarios if s.name == old["scenario"])
            pair = next(p for p in pairs if p.key == old["pair"])
            once(scenario, pair, old["repetition"], attempt)

    startup = {sender: statistics.median(times) for sender, times in startups.items()}
    print("sender start-up: " + ", ".join(f"{k} {v:.2f} s" for k, v in startup.items()))
    small = next((s for s in scenarios if s.source is not None), None)
    latency = latencies(sent[small.name], work) if small is not None else {}
    summary = summarize(runs, scenarios, sizes, pairs, startup)
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(began))
    path = RESULTS / f"{stamp}{'-quick' if args.quick else ''}.json"
    document = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(began)),
        "duration_s": round(time.time() - began, 1),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "quick": args.quick,
        "repeat": args.repeat,
        "machine": facts,
        "scenarios": [
            asdict(s)
            | {"bytes": sizes[s.name], "sop_class": s.sop_class}
            | ({"disk_mb_per_s": statistics.median(disk[s.name])} if disk.get(s.name) else {})
            for s in scenarios
        ],
        "disk_mb_per_s_samples": disk,
        "pairs": [asdict(p) | {"label": p.label} for p in pairs],
        "commands": {
            p.key: {
                "receiver": receiver_command(p.receiver, 0, Path("OUT"), p.sync),
                "sender": sender_command(p, 0, Path("DATA")),
                "sender_startup": startup_command(p.sender),
            }
            for p in pairs
        },
        "sender_startup_s": startup,
        "sender_startup_samples_s": startups,
        "runs": runs,
        "summary": summary,
        "latency": latency,
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(render(summary, document["scenarios"]))
    print("\n".join(render_latency(latency, markdown=False)))
    print(f"\nresults: {path.relative_to(ROOT)} ({document['duration_s']:.0f} s)")
    if not args.no_plot:
        if importlib.util.find_spec("matplotlib") is None:
            print("no chart: matplotlib is missing (pip install -r bench/requirements.txt)")
        else:
            from plot import plot  # bench/ is on sys.path when run as a script

            # The chart the docs show is a full run's; a quick one goes next to its JSON.
            chart = path.with_suffix(".png") if args.quick else BENCH / "benchmark.png"
            print(f"chart: {plot(path, chart).relative_to(ROOT)}")
    return 1 if any(r["error"] for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
