"""``python -m bench.failover_loss``: acknowledged writes a Redis Cluster failover loses, with and without WAIT.

The fault drill (tests/test_failover.py) runs the whole pipeline at a home's pace, where the replica keeps
up and a failover loses nothing either way. This measures the window itself: one writer adds
feature-sized entries to one stream as fast as it can, in pipelined batches of ``--batch`` XADDs (the
gateway's round trip), each batch followed by ``WAIT 1 timeout`` or not; the master holding the stream
fails mid-run and its replica is promoted: SIGKILLed (``kill``), or SIGSTOPped until the promotion and
then resumed (``pause``: a hung process or a paused machine, which answers its queued clients as a master
for a moment before it learns it was replaced). Afterwards every entry id the master had acknowledged is looked
for on the promoted replica: the ones missing are what the asynchronous replication lost. With WAIT, a
batch counts as acknowledged only once WAIT says a replica has it (a batch whose WAIT timed out is counted
apart, as the gateway's ``wait_short`` does).

Writes ``OUT/failover_loss.json`` and ``OUT/failover_loss.md``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.report import header, machine, setup_lines, table_head
from broker.redis_cluster import redis_cluster
from common.redis_slots import queue_wait
from schemas.names import FIELD, Names

STREAM = Names("privedge-bench").features("glasses", "home", 0)
PAYLOAD = b"\x00" * 96
"""About one int8 FeatureMessage."""


def measure(workdir: Path, wait: int, *, batch: int, before_s: float, after_s: float, timeout_ms: int,
            fault: str = "kill") -> dict:
    with redis_cluster(workdir, masters=3, replicas=1) as cluster:
        client = cluster.client()
        acked: list[bytes] = []
        short = errors = 0
        stop = threading.Event()
        times: list[float] = []

        def write() -> None:
            nonlocal short, errors
            while not stop.is_set():
                pipe = client.pipeline(transaction=False)
                for _ in range(batch):
                    pipe.xadd(STREAM, {FIELD: PAYLOAD})
                waits = queue_wait(pipe, client, [STREAM], wait, timeout_ms) if wait else 0
                try:
                    replies = pipe.execute()
                except Exception:  # noqa: BLE001 - the master died, or the cluster is failing over
                    errors += 1
                    time.sleep(0.05)
                    continue
                ids = replies[:batch]
                if waits and int(replies[batch]) < wait:
                    short += 1
                    continue  # not acknowledged as the gateway counts it
                acked.extend(ids)
                times.append(time.monotonic())

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        time.sleep(before_s)
        before = len(acked)
        t0 = time.monotonic()
        killed, promoted = (cluster.kill_master_of if fault == "kill" else cluster.pause_master_of)(STREAM)
        failover_s = time.monotonic() - t0
        time.sleep(after_s)
        stop.set()
        writer.join(30)
        present = set()
        last = "-"
        while True:
            chunk = client.xrange(STREAM, min=last, count=10_000)
            present.update(eid for eid, _ in chunk)
            if len(chunk) < 10_000:
                break
            last = "(" + chunk[-1][0].decode()
        lost = [eid for eid in acked if eid not in present]
        rate = before / before_s
        return {"fault": fault, "wait": wait, "acknowledged": len(acked), "acknowledged_before_kill": before,
                "lost": len(lost), "writes_per_s_before_kill": round(rate), "wait_timed_out_batches": short,
                "failed_round_trips": errors, "failover_s": round(failover_s, 2),
                "killed_port": killed.port, "promoted_port": promoted.port}


def markdown(r: dict) -> str:
    lines = header("Redis Cluster failover: acknowledged writes lost, with and without WAIT", r["machine"],
                   r["settings"])
    lines += table_head("fault", "WAIT", "writes/s before the fault", "acknowledged", "lost",
                        "WAIT timed out (batches)", "failed round trips", "failover s")
    for row in r["runs"]:
        wait = f"WAIT 1 {r['settings']['timeout_ms']} ms" if row["wait"] else "none"
        lines.append(f"| {row['fault']} | {wait} | "
                     f"{row['writes_per_s_before_kill']} | {row['acknowledged']} | {row['lost']} | "
                     f"{row['wait_timed_out_batches']} | {row['failed_round_trips']} | {row['failover_s']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.failover_loss", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--batch", type=int, default=64, help="XADDs per round trip (the gateway's batch)")
    p.add_argument("--before-s", type=float, default=3.0, help="seconds of writes before the kill")
    p.add_argument("--after-s", type=float, default=2.0, help="seconds of writes after the promotion")
    p.add_argument("--timeout-ms", type=int, default=100, help="WAIT timeout (the gateway's default)")
    p.add_argument("--repeat", type=int, default=2, help="runs of each setting")
    p.add_argument("--faults", default="kill,pause", help="kill (SIGKILL), pause (SIGSTOP until the promotion)")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    settings = {"faults": a.faults, "batch": a.batch, "before_s": a.before_s, "after_s": a.after_s,
                "timeout_ms": a.timeout_ms,
                "repeat": a.repeat, "masters": 3, "replicas": 1, "entry_bytes": len(PAYLOAD)}
    info = machine()
    print(setup_lines(info, settings), flush=True)
    work = Path(tempfile.mkdtemp(prefix="privedge-failover-loss-"))
    runs = []
    for fault in a.faults.split(","):
        for i in range(a.repeat):
            for wait in (0, 1):
                runs.append(measure(work / f"{fault}-{wait}-{i}", wait, batch=a.batch, before_s=a.before_s,
                                    after_s=a.after_s, timeout_ms=a.timeout_ms, fault=fault))
            print(json.dumps(runs[-1]), flush=True)
    result = {"machine": info, "settings": settings, "runs": runs}
    (a.out / "failover_loss.json").write_text(json.dumps(result, indent=2))
    (a.out / "failover_loss.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
