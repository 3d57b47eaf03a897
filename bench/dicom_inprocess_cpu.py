#!/usr/bin/env python3
"""Hub CPU per DIMSE operation, in-process: a hub with its DICOM SCP in this process, driven by
dcmtk's echoscu / getscu / movescu (from /usr/bin), old code against new in the same minutes.

    python bench/dicom_inprocess_cpu.py --data DIR [--src CHECKOUT] [--echo 100] [--inassoc 300]
                                        [--get 3] [--move 3] [--store] [--store-small N]
                                        [--find N] [--find-inassoc N] [--threads]

DIR is a data set of shared/bench/dicom_bench/make_dataset.py (its ct/ folder and manifest.env;
`make_dataset.py --out DIR --patients 2 --stow-count 1` makes a small one). --src runs another
checkout's code (a `git worktree` of the old commit) with this virtualenv. For each operation it
prints the process CPU per operation (which includes starting the dcmtk processes from this
process), the CPU of the threads that ended meanwhile (the association and DUL threads: the
association's own cost, without the acceptor thread, which lives on), and the wall time. Wall
figures on a shared machine are noise; compare CPU, alternating old and new. Loopback only.
--find and --find-inassoc (study level by PatientID, the keys of shared/bench/dicom_bench) need
studies stored: use them with --store-small. A per-process C-FIND's CPU less a per-process
C-ECHO's, against one C-FIND's inside an association, is what the first query of an
association costs beyond any other."""

from __future__ import annotations

import argparse
import collections
import cProfile
import glob
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ap = argparse.ArgumentParser()
ap.add_argument("--data", required=True)
ap.add_argument("--src", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ap.add_argument("--echo", type=int, default=100, help="echoscu processes (one association each)")
ap.add_argument("--inassoc", type=int, default=300, help="C-ECHOs inside one association")
ap.add_argument("--get", type=int, default=3, help="getscu runs of the CT series")
ap.add_argument("--move", type=int, default=3, help="movescu runs of the CT series")
ap.add_argument("--store", action="store_true", help="measure the C-STORE of the CT series (one association)")
ap.add_argument("--store-small", type=int, default=0, help="measure a C-STORE of this many of the small instances")
ap.add_argument("--profile", metavar="FILE", help="cProfile every association thread of the retrievals into FILE "
                "(pstats; read with python -m pstats FILE): where a sub-operation's CPU goes")
ap.add_argument("--find", type=int, default=0, help="findscu processes by PatientID (one association each)")
ap.add_argument("--find-inassoc", type=int, default=0, help="C-FINDs by PatientID inside one association")
ap.add_argument("--threads", action="store_true", help="also print the CPU of each living thread per operation")
ap.add_argument("--settle", type=float, default=6.0, help="seconds after storing, for the hub's background work")
a = ap.parse_args()
sys.path.insert(0, a.src)
os.chdir(a.src)

THREAD_CPU: collections.Counter = collections.Counter()
_bootstrap_inner = threading.Thread._bootstrap_inner


PROFILES: list = []  # (cProfile.Profile) of the threads started while profiling is on
PROFILING = threading.Event()


def _counted(self):
    name = type(self).__name__
    t0 = time.thread_time()
    try:
        if PROFILING.is_set():
            profile = cProfile.Profile(time.thread_time)
            PROFILES.append(profile)
            profile.runcall(_bootstrap_inner, self)
        else:
            _bootstrap_inner(self)
    finally:
        THREAD_CPU[name] += time.thread_time() - t0


threading.Thread._bootstrap_inner = _counted

from tests.conftest import RunningHub, free_port, make_settings  # noqa: E402 (after the source path)

manifest = dict(line.strip().split("=", 1) for line in open(f"{a.data}/manifest.env") if "=" in line)
ENV = {"PATH": "/usr/bin:/bin", "TCP_NODELAY": "1"}
DC = ["-aet", "BENCHSCU", "-aec", "YILIAN"]
FIND_KEYS = [arg for kw in ("StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "PatientName",
                            "PatientID", "StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedInstances")
             for arg in ("-k", kw)]


def run(*args) -> None:
    subprocess.run([str(x) for x in args], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=True)


def living_thread_cpu() -> dict[str, float]:
    """CPU seconds so far of each living thread (by name), from /proc (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: collections.Counter = collections.Counter()
    for t in threading.enumerate():
        try:
            with open(f"/proc/self/task/{t.native_id}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[t.name.split("@")[0]] += (int(fields[11]) + int(fields[12])) / tick
    return out


def measure(name: str, n: int, fn) -> None:
    walls = []
    THREAD_CPU.clear()
    living = living_thread_cpu()
    c0 = time.process_time()
    for _ in range(n):
        t = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t)
    cpu = time.process_time() - c0
    time.sleep(0.2)  # the last association's threads end
    print(f"{name:12s} hub CPU/op {cpu / n * 1000:8.2f} ms  ended threads {sum(THREAD_CPU.values()) / n * 1000:8.2f} ms"
          f"  wall p50 {statistics.median(walls) * 1000:8.2f} min {min(walls) * 1000:8.2f} ms", flush=True)
    if a.threads:
        after = living_thread_cpu()
        split = sorted(((after[t] - living.get(t, 0.0)) / n * 1000, t) for t in after)
        print("    living threads, CPU/op:", ", ".join(f"{t} {ms:.2f} ms" for ms, t in reversed(split) if ms > 0),
              flush=True)


def main() -> None:
    tmp = tempfile.mkdtemp(prefix="yilian-dimse-cpu-")
    port, move_port = free_port(), free_port()
    settings = make_settings(f"sqlite:///{tmp}/hub.db", tmp, dicom_enabled=True, dicom_port=port,
                             dicom_ae_title="YILIAN", dicom_aes={"BENCHSCU": f"127.0.0.1:{move_port}"})
    keys = ["-S", "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={manifest['CT_STUDY_UID']}",
            "-k", f"SeriesInstanceUID={manifest['CT_SERIES_UID']}"]
    ct = sorted(glob.glob(f"{a.data}/ct/*.dcm"))
    print(f"source {a.src}", flush=True)
    try:
        with RunningHub(settings) as hub:
            if a.echo:
                run("/usr/bin/echoscu", *DC, "127.0.0.1", port)
                measure("echo/process", a.echo, lambda: run("/usr/bin/echoscu", *DC, "127.0.0.1", port))
            if a.inassoc:
                measure(f"echo x{a.inassoc}", 1,
                        lambda: run("/usr/bin/echoscu", "--repeat", a.inassoc, *DC, "127.0.0.1", port))
            if a.get or a.move or a.store:  # stored after the C-ECHOs: the hub's work after a burst would count
                measure("store ct", 1, lambda: run("/usr/bin/storescu", *DC, "127.0.0.1", port, *ct))
                time.sleep(a.settle)
            if a.store_small:
                small = sorted(glob.glob(f"{a.data}/small/**/*.dcm", recursive=True))[:a.store_small]
                measure(f"store {len(small)} small", 1, lambda: run("/usr/bin/storescu", *DC, "127.0.0.1", port, *small))
                time.sleep(a.settle)
            if a.profile:
                PROFILING.set()
            find = ["/usr/bin/findscu", *DC, "-S", "-k", "QueryRetrieveLevel=STUDY", *FIND_KEYS, "-k"]
            if a.find:
                patients = iter(range(10**9))
                measure("find/process", a.find,
                        lambda: run(*find, f"PatientID=PAT{next(patients) % 20 + 1:05d}", "127.0.0.1", port))
            if a.find_inassoc:
                measure(f"find x{a.find_inassoc}", 1,
                        lambda: run(*find, "PatientID=PAT00002", "--repeat", a.find_inassoc, "127.0.0.1", port))
            if a.get:
                out = f"{tmp}/get"

                def get():
                    shutil.rmtree(out, ignore_errors=True)
                    os.mkdir(out)
                    run("/usr/bin/getscu", *DC, *keys, "-od", out, "127.0.0.1", port)
                    assert len(os.listdir(out)) == len(ct), len(os.listdir(out))
                measure("get", a.get, get)
            if a.move:
                out = f"{tmp}/move"
                os.mkdir(out)
                scp = subprocess.Popen(["/usr/bin/storescp", "-aet", "BENCHSCU", "-od", out, str(move_port)],
                                       env=ENV, stderr=subprocess.DEVNULL)
                try:
                    for _ in range(50):
                        if subprocess.run(["/usr/bin/echoscu", "-aec", "BENCHSCU", "127.0.0.1", str(move_port)],
                                          env=ENV, capture_output=True).returncode == 0:
                            break
                        time.sleep(0.1)
                    measure("move", a.move, lambda: run("/usr/bin/movescu", *DC, "-aem", "BENCHSCU", *keys,
                                                        "127.0.0.1", port))
                finally:
                    scp.terminate()
                    scp.wait()
                assert len(os.listdir(out)) == len(ct), len(os.listdir(out))
            PROFILING.clear()
            if PROFILES:
                stats = pstats.Stats(*PROFILES)
                stats.dump_stats(a.profile)
                print(f"profile of {len(PROFILES)} threads in {a.profile}", flush=True)
            del hub
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


main()
