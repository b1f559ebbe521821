#!/usr/bin/env python3
"""Local operation helpers for tmc-relay, run with the project's virtualenv (.venv/bin/python).

Local (moto, used by `make demo` and `make test`; always against an explicit --endpoint):
  moto       run a moto server on 127.0.0.1 and a free port, written to --port-file, until SIGTERM
  wait-http  wait until a URL answers HTTP
  create     create the relay queue (+ its DLQ), the parking queue and the dedup table, shaped as
             in template.yaml; prints `export NAME=value` lines for the relay's environment
  peek       print a few messages from a queue without consuming them
  sim-state  print the simulator's state (GET <base>/_sim/state)

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
import shlex
import signal
import sys
import threading
import time
import urllib.error
import urllib.request

REGION_DEFAULT = "us-east-1"

# The shapes below mirror template.yaml; infra/tests/test_template.py checks they agree.
QUEUE_MAXIMUM_MESSAGE_SIZE = 1_048_576
QUEUE_RETENTION_SECONDS = 1_209_600
CONSUMER_MAX_RECEIVE_COUNT = 5
TABLE_HASH_KEY = ("pk", "S")
TABLE_TTL_ATTRIBUTE = "expires_at"

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


# --- create / peek ------------------------------------------------------------------------------


def queue_attributes(fifo: bool, dlq_arn: str | None = None) -> dict[str, str]:
    attrs = {
        "MaximumMessageSize": str(QUEUE_MAXIMUM_MESSAGE_SIZE),
        "MessageRetentionPeriod": str(QUEUE_RETENTION_SECONDS),
        "SqsManagedSseEnabled": "true",
    }
    if fifo:
        attrs.update(FifoQueue="true", ContentBasedDeduplication="false")
    if dlq_arn:
        attrs["RedrivePolicy"] = json.dumps(
            {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": CONSUMER_MAX_RECEIVE_COUNT}
        )
    return attrs


def table_definition(name: str) -> dict:
    key, key_type = TABLE_HASH_KEY
    return {
        "TableName": name,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [{"AttributeName": key, "AttributeType": key_type}],
        "KeySchema": [{"AttributeName": key, "KeyType": "HASH"}],
        "SSESpecification": {"Enabled": True},
    }


def cmd_create(args: argparse.Namespace) -> int:
    sqs = _client("sqs", args.endpoint, args.region)
    ddb = _client("dynamodb", args.endpoint, args.region)
    suffix = ".fifo" if args.fifo else ""

    def create_queue(name: str, attrs: dict[str, str]) -> tuple[str, str]:
        url = sqs.create_queue(QueueName=name, Attributes=attrs)["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        return url, arn

    _, dlq_arn = create_queue(f"{args.prefix}-relay-dlq{suffix}", queue_attributes(args.fifo))
    relay_url, _ = create_queue(f"{args.prefix}-relay{suffix}", queue_attributes(args.fifo, dlq_arn))
    parking_url, _ = create_queue(f"{args.prefix}-parking", queue_attributes(False))

    table = f"{args.prefix}-dedup"
    existing = ddb.list_tables()["TableNames"]
    if table not in existing:
        ddb.create_table(**table_definition(table))
        ddb.get_waiter("table_exists").wait(TableName=table)
        ddb.update_time_to_live(
            TableName=table,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": TABLE_TTL_ATTRIBUTE},
        )

    env = {
        "RELAY_QUEUE_URL": relay_url,
        "PARKING_QUEUE_URL": parking_url,
        "DEDUP_TABLE_NAME": table,
    }
    for k, v in env.items():
        print(f"export {k}={shlex.quote(v)}")
    return 0


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


def cmd_sim_state(args: argparse.Namespace) -> int:
    base = args.url.split("/router/rest")[0].rstrip("/")
    with urllib.request.urlopen(f"{base}/_sim/state", timeout=30) as r:
        state = json.load(r)
    if not args.full:
        # The per-message map runs to thousands of entries: summarise it.
        state = {k: v for k, v in state.items() if not (isinstance(v, (dict, list)) and len(v) > 20)}
    print(json.dumps(state, indent=2, sort_keys=True, ensure_ascii=False))
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

    for name, func, help_ in (
        ("create", cmd_create, "create the queues and table on a local endpoint"),
        ("peek", cmd_peek, "print a few messages from a queue without consuming them"),
    ):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--endpoint", required=True, help="e.g. http://127.0.0.1:5000 (moto)")
        s.add_argument("--region", default=REGION_DEFAULT)
        s.set_defaults(func=func)
        if name == "create":
            s.add_argument("--prefix", default="demo")
            s.add_argument("--fifo", action="store_true", help="make the relay queue and its DLQ FIFO")
        else:
            s.add_argument("--queue-url", required=True)
            s.add_argument("--n", type=int, default=3)

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
