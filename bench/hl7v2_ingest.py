"""HL7 v2 ingest benchmark: ORU^R01 with 10 OBX each through ``POST /ingest/messages`` into the store.

Run: ``python bench/hl7v2_ingest.py [--db sqlite|postgres] [--messages 6000] [--batch 100]
[--senders 4] [--workers 2]``. It starts a fresh hub (``yilian hub run``, its own data folder or
a fresh PostgreSQL database on 127.0.0.1), registers a front-end processor client, and has
``--senders`` threads post batches of ``--batch`` distinct ORU^R01 messages (the sending organization,
a patient, a visit, an order, a report, 10 observations each: 15 resources) with ``wait=true``, as the front-end
processor does.
The first batch of each sender is a warm-up and not counted. It prints the sustained rate
(messages and resources per second, wall clock of the measured phase) and checks that every
message ended normalized.

``--in-process`` instead runs the same messages in this process, through the ingest service but
without HTTP, and prints the CPU per message; ``--profile`` does that too, then runs them again
under cProfile, timed by the thread's CPU clock (where the CPU goes; ``--profile-clock wall``:
where the time goes, waits on the database included).
"""

from __future__ import annotations

import argparse
import base64
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN = os.environ.get("YILIAN_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


_FAMILY = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈"
_GIVEN = "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超秀兰霞平刚桂英华玉萍红娥玲芬燕建国文辉力鹏宇晨浩然子轩梓涵欣怡"


def _person(n: int) -> tuple[str, str, str, str]:
    """A distinct, deterministic patient for message ``n`` (name, birth date, sex): the master
    patient index blocks on these, so a benchmark of identical patients would measure matching."""
    import random

    rnd = random.Random(n)
    return (rnd.choice(_FAMILY), rnd.choice(_GIVEN) + rnd.choice(_GIVEN),
            f"{rnd.randint(1930, 2020)}{rnd.randint(1, 12):02d}{rnd.randint(1, 28):02d}", rnd.choice("MF"))


def oru_r01(n: int, run: str) -> bytes:
    """Message ``n`` of a run: its own patient, visit, order and 10 results."""
    obx = "".join(
        f"OBX|{i}|NM|718-{i}^血红蛋白 {i}^LN||{9.8 + i:.1f}|g/dL^gram per deciliter^UCUM|13.5-17.5|L|||F|||"
        f"20261201110000+0800\r" for i in range(1, 11))
    family, given, birth, sex = _person(n)
    return (
        f"MSH|^~\\&|LIS|HOSPA|YILIAN|HUB|20261201140000+0800||ORU^R01^ORU_R01|{run}{n:08d}|P|2.5.1|||AL|NE||"
        "UNICODE UTF-8\r"
        f"PID|1||MRN{run}{n}^^^HOSPA^MR||{family}^{given}||{birth}|{sex}|||浙江省杭州市^^杭州市^浙江省^310000^CHN\r"
        "PV1|1|O|LAB^^^HOSPA\r"
        f"ORC|RE|ORD{run}{n}^HIS|FIL{run}{n}^LIS||CM\r"
        f"OBR|1|ORD{run}{n}^HIS|FIL{run}{n}^LIS|58410-2^CBC panel^LN|||20261201100000+0800|||||||||||||||"
        "20261201135900+0800||HM|F\r" + obx).encode("utf-8")


def resources_per_message() -> int:
    from adapters.hl7v2 import parse_message
    from mappings import convert

    return len(convert(parse_message(oru_r01(0, "x")), organization="HOSPA").bundle["entry"])


def items(start: int, count: int, run: str) -> list[dict]:
    return [{"id": f"{run}-{n}", "kind": "hl7v2", "feed": "lis-oru", "received_at": "2026-12-01T06:00:00Z",
             "payload": base64.b64encode(oru_r01(n, run)).decode()} for n in range(start, start + count)]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_hub(args, work: Path) -> tuple[subprocess.Popen, str, dict]:
    port = free_port()
    env = {**os.environ, "YILIAN_DATA_DIR": str(work / "data"), "YILIAN_PORT": str(port),
           "YILIAN_LOG_LEVEL": "WARNING", "YILIAN_INGEST_WORKERS": str(args.ingest_workers),
           **({"YILIAN_INGEST_BATCH": str(args.ingest_batch)} if args.ingest_batch else {}),
           "YILIAN_TOKEN_SECRET": "bench-" + uuid.uuid4().hex}
    if args.db_url:
        env["YILIAN_DATABASE_URL"] = args.db_url
    yilian = [sys.executable, "-m", "yilian.cli"]
    subprocess.run(yilian + ["hub", "migrate"], env=env, check=True, capture_output=True)
    out = subprocess.run(yilian + ["client", "add", "fep-bench", "--scopes", "yilian/ingest", "--org", "HOSPA"],
                         env=env, check=True, capture_output=True, text=True).stdout
    secret = next(line.split()[1] for line in out.splitlines() if line.startswith("client_secret"))
    hub = subprocess.Popen(yilian + ["hub", "run", "--workers", str(args.workers)], env=env,
                           stdout=open(work / "hub.log", "w"), stderr=subprocess.STDOUT)
    root = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{root}/health").status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    tok = httpx.post(f"{root}/oauth2/token", data={"grant_type": "client_credentials"},
                     auth=("fep-bench", secret)).json()["access_token"]
    return hub, root, {"Authorization": f"Bearer {tok}"}


def tree_cpu_s(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) used so far by a process and each of its live children, by
    pid (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    pids, out = [pid], {}
    while pids:
        p = pids.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            out[p] = (int(fields[11]) + int(fields[12])) / tick
            for t in Path(f"/proc/{p}/task").iterdir():
                pids += [int(c) for c in (t / "children").read_text().split()]
        except (OSError, IndexError, ValueError):
            continue
    return out


def run_http(args) -> None:
    work = Path(tempfile.mkdtemp(prefix="yilian-ingest-bench-"))
    hub = None
    try:
        hub, root, headers = start_hub(args, work)
        run = uuid.uuid4().hex[:6]
        per_sender = args.messages // args.senders
        statuses: collections.Counter = collections.Counter()
        lock = threading.Lock()
        barrier = threading.Barrier(args.senders + 1)
        done_at: list[float] = []

        def sender(k: int) -> None:
            with httpx.Client(base_url=root, headers=headers, timeout=300) as c:
                base = k * (per_sender + args.batch)
                c.post("/ingest/messages", json={"organization": "HOSPA", "messages": items(base, args.batch,
                                                                                            run + "w")})
                barrier.wait()
                for start in range(base, base + per_sender, args.batch):
                    r = c.post("/ingest/messages", json={"organization": "HOSPA", "wait": True,
                                                         "messages": items(start, args.batch, run)})
                    r.raise_for_status()
                    with lock:
                        statuses.update(x["status"] for x in r.json()["results"])
                with lock:
                    done_at.append(time.perf_counter())

        threads = [threading.Thread(target=sender, args=(k,)) for k in range(args.senders)]
        for t in threads:
            t.start()
        barrier.wait()
        t0, cpu0 = time.perf_counter(), tree_cpu_s(hub.pid)
        for t in threads:
            t.join()
        elapsed = max(done_at) - t0
        cpu1 = tree_cpu_s(hub.pid)
        per_process = sorted((cpu1[p] - cpu0.get(p, 0.0) for p in cpu1), reverse=True)
        hub_cpu = sum(per_process)
        n = sum(statuses.values())
        per = resources_per_message()
        print(f"engine {args.db}; hub workers {args.workers}; {args.senders} senders x batches of {args.batch}; "
              f"ingest batch {args.ingest_batch or 'default'}; "
              f"{n} ORU^R01 (10 OBX, {per} resources each)")
        print(f"statuses: {dict(statuses)}")
        print(f"sustained: {n / elapsed:,.0f} messages/s, {per * statuses['normalized'] / elapsed:,.0f} resources/s "
              f"({elapsed:.1f} s)")
        print(f"hub CPU {hub_cpu:.1f} s: {n / hub_cpu:,.0f} messages per hub CPU-second "
              f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores during the run)")
        # the hub closes each ingest connection after its answer, so the kernel spreads the batches
        # over the worker processes (the first to accept takes it): an uneven split leaves a core idle
        print(f"hub CPU per process: {', '.join(f'{c:.1f} s' for c in per_process if c >= 0.05)}; "
              f"{1000 * hub_cpu / n:.1f} ms hub CPU per message")
    finally:
        if hub is not None:
            hub.terminate()
            hub.wait(30)
        shutil.rmtree(work, ignore_errors=True)


def run_profile(args) -> None:
    """The same messages in this process, one thread, no HTTP: CPU per message without a
    profiler (the steady figure to compare), then again under cProfile (where it goes)."""
    import cProfile
    import pstats

    from hub.api.app import Hub
    from hub.config import HubSettings
    from hub.ingest.api import parse_items
    from hub.security.access import Access
    from hub.security.tokens import Principal

    work = Path(tempfile.mkdtemp(prefix="yilian-ingest-profile-"))
    hub = Hub(HubSettings(data_dir=work, database_url=args.db_url, token_secret="x" * 32, ingest_workers=0,
                          **({"ingest_batch": args.ingest_batch} if args.ingest_batch else {})))
    access = Access(Principal("fep", "fep", (), "yilian/ingest", organization="HOSPA"))
    in_tx = _WriteTxClock(hub.engine)
    try:
        passes = [("plain", None)] + ([("profiled", cProfile.Profile(time.thread_time if args.profile_clock == "cpu" else time.perf_counter))] if args.profile else [])
        for label, prof in passes:
            run = uuid.uuid4().hex[:6]
            hub.ingest.receive(access, "HOSPA", parse_items({"messages": items(0, args.batch, run + "w")}))
            batches = [parse_items({"messages": items(s, args.batch, run)})
                       for s in range(0, args.messages, args.batch)]
            statuses: collections.Counter = collections.Counter()
            t0, cpu0 = time.perf_counter(), time.process_time()
            in_tx.cpu = 0.0
            if prof is not None:
                prof.enable()
            for b in batches:
                statuses.update(r["status"] for r in hub.ingest.receive(access, "HOSPA", b))
            if prof is not None:
                prof.disable()
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            n = sum(statuses.values())
            if prof is not None:
                if args.profile_out:
                    prof.dump_stats(args.profile_out)
                stats = pstats.Stats(prof)
                stats.sort_stats("cumulative").print_stats(args.profile_lines)
                print(_shares(stats, n))
            print(f"in-process, one thread ({label}): {n / elapsed:,.0f} messages/s wall, "
                  f"{1000 * cpu / n:.2f} ms CPU per message ({n / cpu:,.0f} per CPU-second), "
                  f"{1000 * in_tx.cpu / n:.2f} ms of it inside write transactions ({100 * in_tx.cpu / cpu:.0f} %); "
                  f"{dict(statuses)}")
    finally:
        hub.close()
        shutil.rmtree(work, ignore_errors=True)


class _WriteTxClock:
    """The thread CPU spent inside write transactions (``hub.storage.db.write_tx``, on SQLite the
    time the write lock is held), from BEGIN to COMMIT or ROLLBACK."""

    def __init__(self, engine) -> None:
        from sqlalchemy import event

        from hub.storage.db import in_write_tx

        self.cpu = 0.0
        self._started: dict[int, float] = {}

        def begin(conn) -> None:
            if in_write_tx():
                self._started[id(conn)] = time.thread_time()

        def end(conn) -> None:
            t = self._started.pop(id(conn), None)
            if t is not None:
                self.cpu += time.thread_time() - t

        event.listen(engine, "begin", begin)
        event.listen(engine, "commit", end)
        event.listen(engine, "rollback", end)


#: the parts of the pipeline the ingest calls out to, by (file ending, function)
_PARTS = {"FHIR transaction (hub.fhir.bundles.process_bundle)": ("hub/fhir/bundles.py", "process_bundle"),
          # the store writes the messages of a batch share, left pending by process_bundle(defer=...)
          "FHIR writes shared by a batch (hub.ingest.normalize.SharedWrite.flush)": ("hub/ingest/normalize.py",
                                                                                     "flush"),
          # validation and index rows of the entries, run while preparing (outside the write transaction)
          "FHIR checks ahead (hub.fhir.bundles.check_entries)": ("hub/fhir/bundles.py", "check_entries"),
          "mapping (mappings.convert)": ("mappings/__init__.py", "convert"),
          "HL7 parsing (adapters.hl7v2.parse_message)": ("adapters/hl7v2/parser.py", "parse_message")}


def _shares(stats, n: int) -> str:
    """Profiled CPU per message: the whole of ``IngestService.receive``, the parts it calls out to,
    and what is left, the ingest's own work (raw log, dedup, claims, savepoints, stale guard,
    ACKs, statuses, audit)."""
    def cumulative(path: str, name: str) -> float:
        return sum(v[3] for (f, _, fn), v in stats.stats.items() if f.endswith(path) and fn == name)

    total = cumulative("hub/ingest/service.py", "receive")
    parts = {label: cumulative(*where) for label, where in _PARTS.items()}
    own = total - sum(parts.values())
    lines = [f"profiled CPU per message: {1000 * total / n:.2f} ms in IngestService.receive"]
    lines += [f"  {1000 * v / n:6.2f} ms {label}" for label, v in parts.items()]
    lines.append(f"  {1000 * own / n:6.2f} ms the ingest's own work (raw log, claims, savepoints, stale guard, ACKs, "
                 f"statuses, audit)")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--messages", type=int, default=6000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--senders", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2, help="hub HTTP worker processes")
    ap.add_argument("--ingest-batch", type=int, help="messages per write transaction (default: the hub's setting)")
    ap.add_argument("--ingest-workers", type=int, default=0, help="queue worker threads per hub process")
    ap.add_argument("--in-process", action="store_true",
                    help="only the in-process pass without a profiler: CPU per message, no HTTP")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--profile-lines", type=int, default=60, help="cProfile rows printed with --profile")
    ap.add_argument("--profile-clock", choices=("cpu", "wall"), default="cpu",
                    help="what --profile times: the thread's CPU, or wall time (waits on the database too)")
    ap.add_argument("--profile-out", help="also save the cProfile statistics (CPU of the ingest thread) here")
    args = ap.parse_args()
    args.db_url = None
    admin = None
    name = None
    if args.db == "postgres":
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url

        admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        name = f"yilian_ingest_bench_{uuid.uuid4().hex[:8]}"
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        args.db_url = make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)
    try:
        (run_profile if args.profile or args.in_process else run_http)(args)
    finally:
        if admin is not None:
            from sqlalchemy import text

            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
