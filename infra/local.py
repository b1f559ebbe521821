#!/usr/bin/env python3
"""Local operation helpers for tmc-relay, run with the project's virtualenv (.venv/bin/python).

Local (`make demo`, `make local-up`, `make test`; always against an explicit --endpoint):
  moto          run a moto server on 127.0.0.1 and a free port, written to --port-file, until SIGTERM
  free-port     print a free TCP port on 127.0.0.1
  wait-http     wait until a URL answers HTTP
  deploy-local  deploy template.yaml itself into a local AWS (ministack): the app secret (read from
                the environment, never argv) into Secrets Manager, the host-built bootstrap into S3,
                then a CloudFormation change set; prints the stack's outputs as JSON
  invoke        invoke a function synchronously (like make backfill); print its answer
  wait-drained  wait until the simulator has nothing pending or in flight
  pass-reports  print the report of every pass the function logged (scheduled ones included)
  peek          print a few messages from a queue without consuming them
  sim-state     print the simulator's state (GET <base>/_sim/state)

Build:
  artifact   check that a Lambda zip holds one executable arm64 `bootstrap`; print its sizes

Deployed stack (real AWS, your usual credentials):
  put-secret create the app-secret secret, or store a new version (reads the value from stdin)
  recycle    update the function's configuration so new invocations are cold starts
  output     print one output of the CloudFormation stack
  backfill   invoke the deployed function synchronously with a backfill payload; print the report
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REGION_DEFAULT = "us-east-1"

BACKFILL_FIELDS = (
    "group_names",
    "quantity",
    "mode",
    "max_batches",
    "max_messages",
    "max_seconds",
    "concurrency",
)


def _client(service: str, endpoint: str | None, region: str):
    import boto3  # imported lazily: `moto` and `wait-http` do not need it

    kwargs = {"region_name": region}
    if endpoint:
        kwargs.update(
            endpoint_url=endpoint,
            aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
            aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
        )
    return boto3.client(service, **kwargs)


# --- moto ---------------------------------------------------------------------------------------


def cmd_moto(args: argparse.Namespace) -> int:
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address=args.host, port=args.port, verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    # Written only once the socket is bound, atomically, so a reader never sees a partial port.
    tmp = f"{args.port_file}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{port}\n")
    os.replace(tmp, args.port_file)
    print(f"moto listening on http://{args.host}:{port}", file=sys.stderr, flush=True)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.2):
        pass
    server.stop()
    return 0


def cmd_wait_http(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.timeout
    last = None
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(args.url, timeout=2).close()
            return 0
        except urllib.error.HTTPError:
            return 0  # it answered, even if with an error status
        except (urllib.error.URLError, OSError) as e:
            last = e
            time.sleep(0.1)
    print(f"{args.url} did not answer within {args.timeout}s: {last}", file=sys.stderr)
    return 1


# --- peek / sim-state ---------------------------------------------------------------------------


def cmd_peek(args: argparse.Namespace) -> int:
    sqs = _client("sqs", args.endpoint, args.region)
    # VisibilityTimeout=0 leaves the messages where they were: this is a look, not a consume.
    got = sqs.receive_message(
        QueueUrl=args.queue_url,
        MaxNumberOfMessages=max(1, min(args.n, 10)),
        VisibilityTimeout=0,
        MessageAttributeNames=["All"],
        AttributeNames=["All"],
    ).get("Messages", [])
    depth = sqs.get_queue_attributes(
        QueueUrl=args.queue_url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]["ApproximateNumberOfMessages"]
    print(f"{args.queue_url}: about {depth} message(s); showing {len(got)}")
    for m in got:
        attrs = {k: v.get("StringValue") for k, v in m.get("MessageAttributes", {}).items()}
        try:
            body = json.loads(m["Body"])
        except ValueError:
            body = m["Body"]
        print(json.dumps({"attributes": attrs, "body": body}, ensure_ascii=False, indent=2))
    return 0


def cmd_archive_query(args: argparse.Namespace) -> int:
    """Copies the archive's objects down and queries them with DuckDB, with the columns of the
    documented Athena table: what the archive holds per topic, then one order's events."""
    import duckdb  # installed into .venv from infra/requirements.txt

    bucket, prefix = args.archive_url.removeprefix("s3://").split("/", 1)
    s3 = _client("s3", args.endpoint, args.region)
    into = Path(args.into)
    n = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            path = into / obj["Key"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read())
            n += 1
    print(f"{n} archive objects copied from {args.archive_url} to {into}")
    if not n:
        return 1
    ddl = (Path(ROOT) / "infra" / "athena" / "archive-table.sql").read_text()
    body = ddl[ddl.index("tmc_archive (") + len("tmc_archive ("):ddl.index("PARTITIONED BY")]
    columns = re.findall(r"^\s*(\w+)\s+string", body, re.M)
    spec = "{" + ", ".join(f"'{c}': 'VARCHAR'" for c in columns) + "}"
    source = (f"read_json('{into}/**/*.jsonl.gz', format = 'newline_delimited', "
              f"columns = {spec}, hive_partitioning = true)")
    con = duckdb.connect()
    print("SELECT dt, hour, topic, count(DISTINCT id) ... GROUP BY dt, hour, topic")
    con.sql(f"SELECT dt, hour, topic, count(DISTINCT id) AS messages FROM {source} "
            f"GROUP BY ALL ORDER BY ALL").show()
    tid = con.execute(f"SELECT json_extract_string(content, '$.tid') FROM {source} "
                      f"WHERE topic LIKE 'taobao_trade_%' AND json_extract_string(content, '$.tid') "
                      f"IS NOT NULL LIMIT 1").fetchone()
    if tid:
        query = (f"SELECT DISTINCT id, topic, pub_time, consumed_at FROM {source} "
                 f"WHERE topic LIKE 'taobao_trade_%' AND json_extract_string(content, '$.tid') = ? "
                 f"ORDER BY pub_time")
        print(f"one order's events (tid {tid[0]}):")
        con.execute(query, [tid[0]])
        for row in con.fetchall():
            print("  ", *row)
    return 0


def cmd_create_queue(args: argparse.Namespace) -> int:
    print(_client("sqs", args.endpoint, args.region).create_queue(QueueName=args.name)["QueueUrl"])
    return 0


def cmd_sim_state(args: argparse.Namespace) -> int:
    state = sim_state(args.url, messages=args.full)
    if not args.full:
        # The per-message map runs to thousands of entries: summarise it.
        state = {k: v for k, v in state.items() if not (isinstance(v, (dict, list)) and len(v) > 20)}
    print(json.dumps(state, indent=2, sort_keys=True, ensure_ascii=False))
    return 0


# --- the stack in a local AWS (ministack) -------------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATE = os.path.join(ROOT, "template.yaml")
LOCAL_ARTIFACT_BUCKET = "tmc-relay-local-artifacts"
# The one line `sam build` + `sam deploy` rewrite: the function's code location.
_CODE_URI_LINE = re.compile(r"^(\s+)CodeUri: \.\s*$", re.M)


def template_with_artifact(s3_uri: str, template_path: str = TEMPLATE) -> str:
    """template.yaml as `sam deploy` sends it: the function's CodeUri pointing at the uploaded
    artifact, every other byte unchanged."""
    text = open(template_path, encoding="utf-8").read()
    found = _CODE_URI_LINE.findall(text)
    if len(found) != 1:
        raise SystemExit(f"{template_path}: expected one `CodeUri: .` line, found {len(found)}")
    return _CODE_URI_LINE.sub(lambda m: f"{m.group(1)}CodeUri: {s3_uri}", text)


def lambda_zip(bootstrap: str) -> bytes:
    """The function's zip: one executable `bootstrap`, stripped of debug info as cargo-lambda's
    release build is (the debug build is ~250 MB, Lambda's unzipped limit)."""
    import io
    import zipfile

    with tempfile.TemporaryDirectory() as tmp:
        path = bootstrap
        if shutil.which("strip"):
            path = os.path.join(tmp, "bootstrap")
            subprocess.run(["strip", "-o", path, bootstrap], check=True)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
            info = zipfile.ZipInfo("bootstrap", date_time=(2026, 1, 1, 0, 0, 0))
            info.external_attr = 0o755 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(path, "rb") as f:
                z.writestr(info, f.read())
        return buf.getvalue()


def put_local_secret(endpoint: str, name: str, value: str, region: str = REGION_DEFAULT) -> str:
    sm = _client("secretsmanager", endpoint, region)
    try:
        return sm.put_secret_value(SecretId=name, SecretString=value)["ARN"]
    except sm.exceptions.ResourceNotFoundException:
        return sm.create_secret(Name=name, SecretString=value)["ARN"]


def deploy_local(
    endpoint: str,
    stack: str,
    parameters: dict[str, str],
    bootstrap: str,
    region: str = REGION_DEFAULT,
    log=lambda msg: None,
) -> dict[str, str]:
    """Deploys template.yaml into the local AWS at `endpoint` as `sam deploy` would (artifact to
    S3, then a CREATE change set with the capabilities samconfig.toml grants) and returns the
    stack's outputs."""
    s3 = _client("s3", endpoint, region)
    cfn = _client("cloudformation", endpoint, region)
    existing = [b["Name"] for b in s3.list_buckets().get("Buckets", [])]
    if LOCAL_ARTIFACT_BUCKET not in existing:
        s3.create_bucket(Bucket=LOCAL_ARTIFACT_BUCKET)
    body = lambda_zip(bootstrap)
    key = f"{stack}/bootstrap.zip"
    s3.put_object(Bucket=LOCAL_ARTIFACT_BUCKET, Key=key, Body=body)
    log(f"uploaded the host-built bootstrap ({len(body) / 1e6:.1f} MB zipped) to s3://{LOCAL_ARTIFACT_BUCKET}/{key}")
    name = f"{stack}-create"
    cfn.create_change_set(
        StackName=stack,
        ChangeSetName=name,
        ChangeSetType="CREATE",
        TemplateBody=template_with_artifact(f"s3://{LOCAL_ARTIFACT_BUCKET}/{key}"),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"],
    )
    cs = _wait(lambda: cfn.describe_change_set(StackName=stack, ChangeSetName=name),
               lambda d: d["Status"] not in ("CREATE_PENDING", "CREATE_IN_PROGRESS"))
    if cs["Status"] != "CREATE_COMPLETE":
        raise SystemExit(f"change set {cs['Status']}: {cs.get('StatusReason')}")
    log(f"change set: {len(cs.get('Changes', []))} resources to add; executing it")
    cfn.execute_change_set(StackName=stack, ChangeSetName=name)
    st = _wait(lambda: cfn.describe_stacks(StackName=stack)["Stacks"][0],
               lambda d: not d["StackStatus"].endswith("_IN_PROGRESS"))
    if st["StackStatus"] != "CREATE_COMPLETE":
        events = cfn.describe_stack_events(StackName=stack)["StackEvents"]
        failed = [f"{e['LogicalResourceId']}: {e.get('ResourceStatusReason')}" for e in events
                  if e["ResourceStatus"].endswith("FAILED")]
        raise SystemExit(f"stack {stack}: {st['StackStatus']} ({st.get('StackStatusReason')}); {failed}")
    return {o["OutputKey"]: o["OutputValue"] for o in st.get("Outputs", [])}


def _wait(get, done, timeout: float = 300, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = get()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting after {timeout:.0f}s: {value}")
        time.sleep(every)


def cmd_free_port(args: argparse.Namespace) -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        print(s.getsockname()[1])
    return 0


def cmd_deploy_local(args: argparse.Namespace) -> int:
    secret = os.environ.get(args.secret_env, "")
    if not secret:
        raise SystemExit(f"{args.secret_env} is not set: the app secret comes from the environment, never argv")
    arn = put_local_secret(args.endpoint, args.secret_name, secret, args.region)
    _log(f"stored the app secret in Secrets Manager as {arn}")
    params = {"AppKey": args.app_key, "AppSecretArn": arn, "TopEndpoint": args.top_endpoint}
    for kv in args.param:
        k, _, v = kv.partition("=")
        params[k] = v
    outputs = deploy_local(args.endpoint, args.stack, params, args.bootstrap, args.region, _log)
    print(json.dumps(outputs, indent=2))
    return 0


def _log(msg: str) -> None:
    print(f"    {msg}", file=sys.stderr, flush=True)


def invoke_local(endpoint: str, function: str, payload, region: str = REGION_DEFAULT) -> dict:
    """One synchronous invocation; never retried by the client (a retry would be a second pass).
    Returns {"error": FunctionError or None, "answer": the decoded payload, "log": the tail}."""
    import boto3
    from botocore.config import Config

    lam = boto3.client(
        "lambda", region_name=region, endpoint_url=endpoint,
        aws_access_key_id="test", aws_secret_access_key="test",
        config=Config(read_timeout=960, connect_timeout=10, retries={"max_attempts": 0}),
    )
    r = lam.invoke(FunctionName=function, InvocationType="RequestResponse", LogType="Tail",
                   Payload=json.dumps(payload).encode())
    raw = r["Payload"].read().decode("utf-8", "replace")
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = raw
    tail = base64.b64decode(r["LogResult"]).decode("utf-8", "replace") if r.get("LogResult") else ""
    return {"error": r.get("FunctionError"), "answer": answer, "log": tail}


def cmd_invoke(args: argparse.Namespace) -> int:
    got = invoke_local(args.endpoint, args.function, json.loads(args.payload), args.region)
    print(json.dumps(got["answer"], indent=2, ensure_ascii=False))
    if got["error"]:
        print(f"the invocation failed ({got['error']})", file=sys.stderr)
        return 1
    return 0


def sim_state(url: str, messages: bool = False) -> dict:
    base = url.split("/router/rest")[0].rstrip("/")
    q = "" if messages else "?messages=false"
    with urllib.request.urlopen(f"{base}/_sim/state{q}", timeout=30) as r:
        return json.load(r)


def cmd_wait_drained(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.timeout
    last = None
    while time.monotonic() < deadline:
        st = sim_state(args.sim_url)
        left = st["pending"] + st["inflight"]
        if left == 0:
            return 0
        if left != last:
            _log(f"{left} message(s) not yet confirmed")
            last = left
        time.sleep(2)
    print(f"the simulator still had messages after {args.timeout:.0f}s", file=sys.stderr)
    return 1


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def pass_reports(endpoint: str, log_group: str, region: str = REGION_DEFAULT) -> list[dict]:
    """The report of every pass in the function's log group, oldest first, each with the
    request id of its invocation, read from the "pass finished" line each pass logs."""
    logs = _client("logs", endpoint, region)
    found = []
    for st in logs.describe_log_streams(logGroupName=log_group).get("logStreams", []):
        events = logs.get_log_events(logGroupName=log_group, logStreamName=st["logStreamName"],
                                     startFromHead=True).get("events", [])
        for e in events:
            line = _ANSI.sub("", e["message"])
            if "pass finished" not in line:
                continue
            try:
                if line.lstrip().startswith("{"):  # JSON logs
                    v = json.loads(line)
                    report, request = json.loads(v["report"]), v.get("requestId")
                else:
                    text = line.split("report=", 1)[1]
                    report, end = json.JSONDecoder().raw_decode(text)
                    m = re.search(r'requestId="([^"]+)"', text[end:])
                    request = m.group(1) if m else None
            except (ValueError, KeyError, IndexError):
                continue
            found.append({"timestamp": e["timestamp"], "request_id": request, "report": report})
    return sorted(found, key=lambda r: r["timestamp"])


def cmd_pass_reports(args: argparse.Namespace) -> int:
    for r in pass_reports(args.endpoint, args.log_group, args.region):
        when = time.strftime("%H:%M:%S", time.gmtime(r["timestamp"] / 1000))
        rep = r["report"]
        summary = {k: rep.get(k) for k in ("consumed", "enqueued", "duplicates", "confirmed",
                                           "deferred", "parked", "batches", "stop_reason", "elapsed_ms")}
        print(f"{when} UTC, request {r['request_id']}: {json.dumps(summary)}")
    return 0


# --- build artifact ---------------------------------------------------------------------------

ELF_MACHINES = {0x3E: "x86_64", 0xB7: "aarch64"}


def cmd_artifact(args: argparse.Namespace) -> int:
    import zipfile

    with zipfile.ZipFile(args.zip) as z:
        entries = z.infolist()
        names = [e.filename for e in entries]
        if names != ["bootstrap"]:
            print(f"{args.zip}: expected exactly one entry 'bootstrap', found {names}", file=sys.stderr)
            return 1
        info = entries[0]
        head = z.read("bootstrap")[:20]
    if head[:4] != b"\x7fELF":
        print(f"{args.zip}: bootstrap is not an ELF executable", file=sys.stderr)
        return 1
    machine = ELF_MACHINES.get(int.from_bytes(head[18:20], "little"), "unknown")
    executable = (info.external_attr >> 16) & 0o111
    print(
        f"{args.zip}: {os.path.getsize(args.zip) / 1e6:.1f} MB zipped; "
        f"bootstrap {info.file_size / 1e6:.1f} MB, ELF {machine}, "
        f"{'executable' if executable else 'NOT executable'}"
    )
    return 0 if machine == "aarch64" and executable else 1


# --- deployed stack -----------------------------------------------------------------------------


def stack_output(stack: str, key: str, region: str | None) -> str:
    cfn = _client("cloudformation", None, region or _default_region())
    stacks = cfn.describe_stacks(StackName=stack)["Stacks"]
    for o in stacks[0].get("Outputs", []):
        if o["OutputKey"] == key:
            return o["OutputValue"]
    raise SystemExit(f"stack {stack} has no output {key}")


def _default_region() -> str | None:
    import boto3

    return boto3.session.Session().region_name


def cmd_output(args: argparse.Namespace) -> int:
    print(stack_output(args.stack, args.key, args.region))
    return 0


def cmd_put_secret(args: argparse.Namespace) -> int:
    """Store the app secret (read from the terminal or stdin, never argv) as a new version."""
    import getpass

    if sys.stdin.isatty():
        value = getpass.getpass("TOP app secret (not echoed): ")
    else:
        value = sys.stdin.read().rstrip("\r\n")
    if not value:
        raise SystemExit("empty secret: nothing stored")
    sm = _client("secretsmanager", None, args.region or _default_region())
    try:
        arn = sm.put_secret_value(SecretId=args.name, SecretString=value)["ARN"]
        print(f"stored a new version of {args.name}", file=sys.stderr)
    except sm.exceptions.ResourceNotFoundException:
        arn = sm.create_secret(
            Name=args.name, SecretString=value, Description="TOP app secret for tmc-relay"
        )["ARN"]
        print(f"created {args.name}", file=sys.stderr)
    print(arn)
    return 0


def cmd_recycle(args: argparse.Namespace) -> int:
    """Make the next invocations cold starts (which re-read the secret) by updating the
    function's configuration; the Description is the one property nothing depends on."""
    function = args.function or stack_output(args.stack, "FunctionName", args.region)
    lam = _client("lambda", None, args.region or _default_region())
    current = lam.get_function_configuration(FunctionName=function).get("Description", "")
    base = current.split(" [recycled ")[0]
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    lam.update_function_configuration(FunctionName=function, Description=f"{base} [recycled {stamp}]")
    lam.get_waiter("function_updated_v2").wait(FunctionName=function)
    print(f"{function}: updated; the next invocations start fresh and read the secret again")
    return 0


def backfill_payload(args: argparse.Namespace) -> dict:
    """The invocation payload: only the fields given, so the rest keep the deployed defaults."""
    payload: dict = {}
    if args.group:
        payload["group_names"] = [g.strip() for g in args.group.split(",") if g.strip()]
    for field in BACKFILL_FIELDS[1:]:
        value = getattr(args, field)
        if value in (None, ""):
            continue
        if field == "mode":
            payload[field] = value
        elif value.isdigit():
            payload[field] = int(value)
        else:
            raise SystemExit(f"{field} must be a whole number, not {value!r}")
    return payload


def cmd_backfill(args: argparse.Namespace) -> int:
    from botocore.config import Config

    payload = backfill_payload(args)
    if args.dry_run:
        print(json.dumps(payload))
        return 0
    function = args.function or stack_output(args.stack, "FunctionName", args.region)
    # One synchronous invocation that may run up to the function's 15-minute maximum; never
    # retried by the client, since a retry would start a second pass.
    import boto3

    lam = boto3.client(
        "lambda",
        region_name=args.region or _default_region(),
        config=Config(read_timeout=960, connect_timeout=10, retries={"max_attempts": 0}),
    )
    print(f"invoking {function} with {json.dumps(payload)}", file=sys.stderr, flush=True)
    resp = lam.invoke(
        FunctionName=function,
        InvocationType="RequestResponse",
        LogType="Tail",
        Payload=json.dumps(payload).encode(),
    )
    body = resp["Payload"].read().decode("utf-8", "replace")
    if resp.get("LogResult"):
        print("--- last log lines ---", file=sys.stderr)
        print(base64.b64decode(resp["LogResult"]).decode("utf-8", "replace"), file=sys.stderr)
    try:
        print(json.dumps(json.loads(body), indent=2))
    except ValueError:
        print(body)
    if resp.get("FunctionError"):
        print(f"the invocation failed ({resp['FunctionError']})", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("moto", help="run a moto server until SIGTERM")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=0, help="0 picks a free port")
    s.add_argument("--port-file", required=True)
    s.set_defaults(func=cmd_moto)

    s = sub.add_parser("wait-http", help="wait until a URL answers")
    s.add_argument("url")
    s.add_argument("--timeout", type=float, default=30)
    s.set_defaults(func=cmd_wait_http)

    s = sub.add_parser("free-port", help="print a free TCP port on 127.0.0.1")
    s.set_defaults(func=cmd_free_port)

    s = sub.add_parser("peek", help="print a few messages from a queue without consuming them")
    s.add_argument("--endpoint", required=True, help="e.g. http://127.0.0.1:4566 (ministack)")
    s.add_argument("--region", default=REGION_DEFAULT)
    s.add_argument("--queue-url", required=True)
    s.add_argument("--n", type=int, default=3)
    s.set_defaults(func=cmd_peek)

    s = sub.add_parser("archive-query", help="query an archive's objects with DuckDB (the Athena table's columns)")
    s.add_argument("--endpoint", required=True)
    s.add_argument("--region", default=REGION_DEFAULT)
    s.add_argument("--archive-url", required=True, help="s3://bucket/prefix/ (the ArchiveUrl output)")
    s.add_argument("--into", required=True, help="a directory to copy the objects into")
    s.set_defaults(func=cmd_archive_query)

    s = sub.add_parser("create-queue", help="create an SQS queue and print its URL")
    s.add_argument("--endpoint", required=True)
    s.add_argument("--region", default=REGION_DEFAULT)
    s.add_argument("--name", required=True)
    s.set_defaults(func=cmd_create_queue)

    s = sub.add_parser("deploy-local", help="deploy template.yaml into a local AWS (ministack)")
    s.add_argument("--endpoint", required=True)
    s.add_argument("--region", default=REGION_DEFAULT)
    s.add_argument("--stack", required=True)
    s.add_argument("--app-key", required=True)
    s.add_argument("--top-endpoint", required=True, help="the simulator's gateway URL")
    s.add_argument("--secret-name", default="tmc-relay/app-secret")
    s.add_argument("--secret-env", default="TMC_SIM_APP_SECRET",
                   help="environment variable holding the app secret")
    s.add_argument("--bootstrap", required=True, help="the host-built bootstrap binary")
    s.add_argument("--param", action="append", default=[], help="another parameter, KEY=VALUE")
    s.set_defaults(func=cmd_deploy_local)

    s = sub.add_parser("invoke", help="invoke a function synchronously and print its answer")
    s.add_argument("--endpoint", required=True)
    s.add_argument("--region", default=REGION_DEFAULT)
    s.add_argument("--function", required=True)
    s.add_argument("--payload", default="{}")
    s.set_defaults(func=cmd_invoke)

    s = sub.add_parser("wait-drained", help="wait until the simulator has nothing left to relay")
    s.add_argument("--sim-url", required=True)
    s.add_argument("--timeout", type=float, default=300)
    s.set_defaults(func=cmd_wait_drained)

    s = sub.add_parser("pass-reports", help="print the reports of the passes a function logged")
    s.add_argument("--endpoint", required=True)
    s.add_argument("--region", default=REGION_DEFAULT)
    s.add_argument("--log-group", required=True)
    s.set_defaults(func=cmd_pass_reports)

    s = sub.add_parser("sim-state", help="print the simulator's state")
    s.add_argument("--url", required=True, help="the gateway URL tmc-sim printed")
    s.add_argument("--full", action="store_true", help="include the per-message map")
    s.set_defaults(func=cmd_sim_state)

    s = sub.add_parser("artifact", help="check and describe a Lambda zip built by make build")
    s.add_argument("zip")
    s.set_defaults(func=cmd_artifact)

    s = sub.add_parser("output", help="print one CloudFormation stack output")
    s.add_argument("--stack", required=True)
    s.add_argument("--key", required=True)
    s.add_argument("--region")
    s.set_defaults(func=cmd_output)

    s = sub.add_parser("put-secret", help="create the app secret, or store a new version of it")
    s.add_argument("--name", required=True, help="secret name, e.g. tmc-relay/app-secret")
    s.add_argument("--region")
    s.set_defaults(func=cmd_put_secret)

    s = sub.add_parser("recycle", help="force cold starts so the function re-reads its secret")
    target = s.add_mutually_exclusive_group(required=True)
    target.add_argument("--stack")
    target.add_argument("--function")
    s.add_argument("--region")
    s.set_defaults(func=cmd_recycle)

    s = sub.add_parser("backfill", help="invoke the deployed function with a backfill payload")
    target = s.add_mutually_exclusive_group(required=True)
    target.add_argument("--stack", help="find the function in this stack's outputs")
    target.add_argument("--function", help="the function name or ARN")
    s.add_argument("--region")
    s.add_argument("--group", help="comma-separated group names (default: the deployed TMC_GROUP_NAMES)")
    s.add_argument("--quantity")
    s.add_argument("--mode", choices=["drain", "follow", ""])
    s.add_argument("--max-batches")
    s.add_argument("--max-messages")
    s.add_argument("--max-seconds")
    s.add_argument("--concurrency")
    s.add_argument("--dry-run", action="store_true", help="print the payload and stop")
    s.set_defaults(func=cmd_backfill)

    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
