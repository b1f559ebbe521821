#!/usr/bin/env python3
"""moto against ministack on what decides which local AWS serves which use (docs/local-development.md,
"Which local AWS serves what, and why"). Starts each on 127.0.0.1 and a free port, measures, stops it.

    .venv/bin/python infra/measure_local_aws.py            # make tools installs both
    .venv/bin/python infra/measure_local_aws.py --depths 0,1000,2000,5000 --puts 500

Measures, for each: startup (spawn to the first answer), SendMessageBatch latency (10 entries
of 1 KiB, median of 5) with the queue at each depth, conditional PutItem rate from one client
(attribute_not_exists with ReturnValuesOnConditionCheckFailure=ALL_OLD, as the relay claims),
whether a repeated claim answers ConditionalCheckFailed with the old item, and whether PartiQL
BatchExecuteStatement models writes (a parameterised INSERT, then the same again: the second
must fail as DuplicateItem).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import boto3
from botocore.config import Config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_PY = os.path.join(ROOT, ".venv", "bin", "python")
MINISTACK_PY = os.path.join(ROOT, ".venv-ministack", "bin", "python")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode} before answering")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.02)
    raise SystemExit(f"{url} did not answer within {timeout}s")


def start(kind: str, tmp: str) -> tuple[subprocess.Popen, str, float]:
    port = free_port()
    started = time.monotonic()
    if kind == "moto":
        cmd = [VENV_PY, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        health = f"http://127.0.0.1:{port}/moto-api/"
    else:
        cmd = [MINISTACK_PY, "-m", "ministack"]
        env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "BIND_HOST": "127.0.0.1",
               "GATEWAY_PORT": str(port), "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
        health = f"http://127.0.0.1:{port}/_ministack/health"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(health, proc)
    return proc, f"http://127.0.0.1:{port}", time.monotonic() - started


def client(service: str, endpoint: str):
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test",
                        config=Config(retries={"max_attempts": 1}, read_timeout=120))


def batch(n0: int, body: str) -> list[dict]:
    return [{"Id": str(i), "MessageBody": f"{n0 + i}:{body}"} for i in range(10)]


def measure_sqs(endpoint: str, depths: list[int]) -> dict[int, float]:
    sqs = client("sqs", endpoint)
    url = sqs.create_queue(QueueName="measure")["QueueUrl"]
    body = "x" * 1024
    depth, n, out = 0, 0, {}
    for target in depths:
        while depth < target:
            sqs.send_message_batch(QueueUrl=url, Entries=batch(n, body))
            depth += 10
            n += 10
        samples = []
        for _ in range(5):
            t = time.perf_counter()
            sqs.send_message_batch(QueueUrl=url, Entries=batch(n, body))
            samples.append((time.perf_counter() - t) * 1000)
            depth += 10
            n += 10
        out[target] = statistics.median(samples)
    return out


def measure_claims(endpoint: str, puts: int) -> tuple[float, bool]:
    ddb = client("dynamodb", endpoint)
    ddb.create_table(TableName="measure", BillingMode="PAY_PER_REQUEST",
                     AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                     KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}])

    def claim(i: int):
        ddb.put_item(TableName="measure",
                     Item={"pk": {"S": f"7104300007405{i:06d}"}, "status": {"S": "claimed"},
                           "expires_at": {"N": "9999999999"}},
                     ConditionExpression="attribute_not_exists(pk) OR expires_at < :now",
                     ExpressionAttributeValues={":now": {"N": str(int(time.time()))}},
                     ReturnValuesOnConditionCheckFailure="ALL_OLD")

    t = time.perf_counter()
    for i in range(puts):
        claim(i)
    rate = puts / (time.perf_counter() - t)
    try:
        claim(0)
        old_item = False
    except ddb.exceptions.ConditionalCheckFailedException as e:
        old_item = e.response.get("Item", {}).get("status") == {"S": "claimed"}
    return rate, old_item


def measure_partiql(endpoint: str) -> str:
    ddb = client("dynamodb", endpoint)
    stmt = {"Statement": "INSERT INTO measure VALUE {'pk': ?, 'status': ?}",
            "Parameters": [{"S": "partiql-1"}, {"S": "claimed"}]}
    try:
        first = ddb.batch_execute_statement(Statements=[stmt])["Responses"][0]
        second = ddb.batch_execute_statement(Statements=[stmt])["Responses"][0]
    except Exception as e:  # moto answers HTTP 500
        return f"no ({type(e).__name__})"
    item = ddb.get_item(TableName="measure", Key={"pk": {"S": "partiql-1"}}).get("Item")
    if "Error" in first or not item:
        return f"no (the INSERT did not write: {first})"
    code = second.get("Error", {}).get("Code")
    if code == "DuplicateItem":
        return "yes (a repeated INSERT fails as DuplicateItem)"
    return f"partly (a repeated INSERT answered {second})"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depths", default="0,1000,2000,5000")
    p.add_argument("--puts", type=int, default=500)
    p.add_argument("--only", choices=["moto", "ministack"])
    args = p.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    results = {}
    for kind in [args.only] if args.only else ["moto", "ministack"]:
        with tempfile.TemporaryDirectory() as tmp:
            proc, ep, startup = start(kind, tmp)
            try:
                print(f"{kind}: up in {startup:.2f} s at {ep}", file=sys.stderr, flush=True)
                sqs = measure_sqs(ep, depths)
                print(f"{kind}: SendMessageBatch ms by depth {sqs}", file=sys.stderr, flush=True)
                rate, old_item = measure_claims(ep, args.puts)
                partiql = measure_partiql(ep)
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
            results[kind] = {"startup_s": startup, "send_message_batch_ms": sqs, "claims_per_s": rate,
                             "failed_claim_returns_old_item": old_item, "partiql_writes": partiql}

    print("| | " + " | ".join(results) + " |")
    print("|---|" + "---:|" * len(results))
    print("| Startup to first answer (s) | " + " | ".join(f"{r['startup_s']:.1f}" for r in results.values()) + " |")
    for d in depths:
        print(f"| SendMessageBatch, 10 × 1 KiB, {d:,} deep (ms, median of 5) | "
              + " | ".join(f"{r['send_message_batch_ms'][d]:.0f}" for r in results.values()) + " |")
    print(f"| Conditional PutItem, one client, {args.puts} claims (per s) | "
          + " | ".join(f"{r['claims_per_s']:.0f}" for r in results.values()) + " |")
    print("| A repeated claim fails with the old item (ALL_OLD) | "
          + " | ".join("yes" if r["failed_claim_returns_old_item"] else "no" for r in results.values()) + " |")
    print("| PartiQL BatchExecuteStatement writes | "
          + " | ".join(r["partiql_writes"] for r in results.values()) + " |")
    print(json.dumps(results), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
