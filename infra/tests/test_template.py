"""Checks on template.yaml that cfn-lint cannot make: that the function gets exactly the
environment the code reads and exactly the permissions the code uses, that everything holding
messages is encrypted, and that the shapes agree with the code. test_local_stack.py deploys it.

Run by `make test` (`.venv/bin/python -m pytest infra/tests`).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
from cfnlint.decode import decode

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
CONFIG_RS = ROOT / "src" / "config.rs"
BODY_RS = ROOT / "src" / "relay" / "body.rs"
TELEMETRY_RS = ROOT / "src" / "telemetry.rs"

# Read by the code but deliberately not set by the template: the secret is never a plain
# environment variable in a deployment; TOP_APP_SECRET_ARN replaces it.
NOT_SET_IN_DEPLOYMENT = {"TOP_APP_SECRET"}

# The SDK calls the production adapters make, read from the code itself (src/aws and the secret
# fetch in src/wiring.rs), and the IAM action each needs. A call the code starts making without a
# grant, or a grant for a call it stopped making, fails test_policy_grants_exactly_what_the_code_calls.
CODE_WITH_AWS_CALLS = [ROOT / "src" / "aws", ROOT / "src" / "wiring.rs"]
SDK_CALL_TO_ACTION = {
    "send_message": ("sqs:SendMessage", "sqs"),
    "send_message_batch": ("sqs:SendMessage", "sqs"),  # SendMessageBatch is authorised by SendMessage
    "put_item": ("dynamodb:PutItem", "dynamodb"),
    "update_item": ("dynamodb:UpdateItem", "dynamodb"),
    "delete_item": ("dynamodb:DeleteItem", "dynamodb"),
    "get_item": ("dynamodb:GetItem", "dynamodb"),
    "batch_get_item": ("dynamodb:BatchGetItem", "dynamodb"),
    "batch_write_item": ("dynamodb:BatchWriteItem", "dynamodb"),
    # A BatchExecuteStatement is authorised per statement kind; the relay's are INSERTs only.
    "batch_execute_statement": ("dynamodb:PartiQLInsert", "dynamodb"),
    "transact_write_items": ("dynamodb:PutItem", "dynamodb"),
    "query": ("dynamodb:Query", "dynamodb"),
    "scan": ("dynamodb:Scan", "dynamodb"),
    "get_secret_value": ("secretsmanager:GetSecretValue", "secretsmanager"),
    "put_object": ("s3:PutObject", "s3"),
}
RESOURCES_BY_SERVICE = {
    "sqs": ["GetAtt RelayQueue.Arn", "GetAtt ParkingQueue.Arn"],
    "dynamodb": ["GetAtt DedupTable.Arn"],
    "secretsmanager": ["Ref AppSecretArn"],
    "s3": ["ARCHIVE_OBJECTS"],
}

# The archive's objects: the one other suffix wildcard, the keys under the archive's prefix in
# the stack's bucket or the one named (Archive=existing).
ARCHIVE_OBJECTS = {
    "Fn::Sub": [
        "arn:${AWS::Partition}:s3:::${Bucket}/${ArchivePrefix}*",
        {"Bucket": {"Fn::If": ["ArchiveNew", {"Ref": "ArchiveBucket"}, {"Ref": "ArchiveBucketName"}]}},
    ]
}


def sdk_calls_in_code() -> set[str]:
    calls: set[str] = set()
    for path in CODE_WITH_AWS_CALLS:
        for f in [path] if path.is_file() else sorted(path.rglob("*.rs")):
            text = f.read_text()
            # `client.put_item()` / `.send_message_batch()` builder calls on an SDK client.
            calls |= {c for c in re.findall(r"\.([a-z_]+)\(\)", text) if c in SDK_CALL_TO_ACTION}
    return calls


def expected_grants() -> set[tuple[str, str]]:
    calls = sdk_calls_in_code()
    assert calls, "found no AWS SDK calls in src/aws: the scan is broken"
    grants = set()
    for call in calls:
        action, service = SDK_CALL_TO_ACTION[call]
        grants |= {(action, r) for r in RESOURCES_BY_SERVICE[service]}
    return {(a, describe(ARCHIVE_OBJECTS) if r == "ARCHIVE_OBJECTS" else r) for a, r in grants}


# The function's role is explicit (SAM's generated role would carry the managed
# AWSLambdaBasicExecutionRole, which may write to any log group). Logging is granted on the
# function's own log group; Lambda names the streams, so this suffix is the one wildcard allowed.
OWN_LOG_STREAMS = (
    "arn:${AWS::Partition}:logs:${AWS::Region}:${AWS::AccountId}:log-group:${RelayLogGroup}:log-stream:*"
)
LOG_GRANTS = {
    ("logs:CreateLogStream", f"Sub {OWN_LOG_STREAMS}"),
    ("logs:PutLogEvents", f"Sub {OWN_LOG_STREAMS}"),
}


# --- loading ------------------------------------------------------------------------------------


def plain(node):
    """cfn-lint's YAML nodes as plain dicts/lists/strings (tags become Ref/Fn::* keys)."""
    return json.loads(json.dumps(node))


@pytest.fixture(scope="module")
def template() -> dict:
    tpl, errors = decode(str(TEMPLATE))
    assert not errors, f"template.yaml does not parse: {errors}"
    return plain(tpl)


def resources_of(template: dict, type_: str) -> dict[str, dict]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == type_}


def function(template: dict) -> dict:
    fns = resources_of(template, "AWS::Serverless::Function")
    assert list(fns) == ["RelayFunction"], f"expected one function RelayFunction, found {list(fns)}"
    return fns["RelayFunction"]


def env_vars_read_by_code() -> list[str]:
    if not CONFIG_RS.exists():
        pytest.fail(f"{CONFIG_RS.relative_to(ROOT)} does not exist yet: it must declare ENV_VARS")
    m = re.search(r"pub const ENV_VARS\s*:\s*&\[&str\]\s*=\s*&\[(.*?)\];", CONFIG_RS.read_text(), re.S)
    if not m:
        pytest.fail(
            "src/config.rs has no `pub const ENV_VARS: &[&str] = &[...];` listing the "
            "environment variables the code reads; the template test needs it"
        )
    names = re.findall(r'"([A-Z0-9_]+)"', m.group(1))
    assert names, "ENV_VARS in src/config.rs is empty"
    return names


def is_standard(name: str) -> bool:
    """Set by Lambda itself (or the standard AWS SDK variables), never by the template."""
    return name.startswith("AWS_") or name == "RUST_LOG"


def describe(ref) -> str:
    """A resource reference as text: {"Fn::GetAtt": ["Q", "Arn"]} -> "GetAtt Q.Arn"."""
    if isinstance(ref, dict) and len(ref) == 1:
        (k, v), = ref.items()
        if k == "Fn::GetAtt":
            return "GetAtt " + (v if isinstance(v, str) else ".".join(v))
        if k == "Ref":
            return f"Ref {v}"
        if k == "Fn::Sub" and isinstance(v, str):
            return f"Sub {v}"
    return json.dumps(ref, sort_keys=True)


def as_list(v) -> list:
    return v if isinstance(v, list) else [v]


def statements(node):
    """Every IAM policy statement anywhere under node (any dict with a Statement list)."""
    if isinstance(node, dict):
        if "Statement" in node:
            yield from as_list(node["Statement"])
        for v in node.values():
            yield from statements(v)
    elif isinstance(node, list):
        for v in node:
            yield from statements(v)


def contains_wildcard(value) -> bool:
    """True if value is, or contains, a string with `*` (e.g. "*", "sqs:*", "arn:...:table/*"),
    other than the function's own log streams."""
    if isinstance(value, dict) and value in ({"Fn::Sub": OWN_LOG_STREAMS}, ARCHIVE_OBJECTS):
        return False
    if isinstance(value, str):
        return "*" in value
    if isinstance(value, list):
        return any(contains_wildcard(v) for v in value)
    if isinstance(value, dict):
        return any(contains_wildcard(v) for v in value.values())
    return False


def wildcard_problems(template: dict) -> list[str]:
    problems = []
    for st in statements(template["Resources"]):
        if st.get("Effect") == "Deny":
            continue  # a wide Deny (the archive bucket's TLS-only rule) takes, never gives
        st = when_on(st)
        for key in ("Action", "NotAction", "Resource", "NotResource"):
            if key in st and contains_wildcard(st[key]):
                problems.append(f"{key} has a wildcard in {json.dumps(st)}")
        if "NotAction" in st or "NotResource" in st:
            problems.append(f"NotAction/NotResource grants everything else: {json.dumps(st)}")
    return problems


def when_on(st: dict) -> dict:
    """A statement granted under a condition (`Fn::If` [cond, statement, AWS::NoValue]), as
    granted with the defaults, which turn every option on."""
    if isinstance(st, dict) and list(st) == ["Fn::If"]:
        _, granted_, otherwise = st["Fn::If"]
        assert otherwise == {"Ref": "AWS::NoValue"}, st
        return granted_
    return st


def function_role(template: dict) -> dict:
    """The function's explicit role (and the function uses it, with no SAM policies)."""
    props = function(template)["Properties"]
    assert props.get("Role") == {"Fn::GetAtt": ["RelayFunctionRole", "Arn"]}, props.get("Role")
    assert "Policies" not in props, "policies belong in RelayFunctionRole, not on the function"
    role = template["Resources"]["RelayFunctionRole"]
    assert role["Type"] == "AWS::IAM::Role"
    return role["Properties"]


def function_statements(template: dict) -> list:
    """The statement list of the function role's one inline policy (tests edit it in place)."""
    policies = function_role(template)["Policies"]
    assert len(policies) == 1, policies
    return policies[0]["PolicyDocument"]["Statement"]


def granted(template: dict) -> set[tuple[str, str]]:
    """(action, resource) pairs the function's role allows."""
    role = function_role(template)
    assert "ManagedPolicyArns" not in role, "no managed policies on the function's role"
    pairs = set()
    for policy in role["Policies"]:
        for st in map(when_on, as_list(policy["PolicyDocument"]["Statement"])):
            assert st.get("Effect") == "Allow", f"unexpected statement {st}"
            for action in as_list(st["Action"]):
                for resource in as_list(st["Resource"]):
                    pairs.add((action, describe(resource)))
    return pairs


# --- permissions --------------------------------------------------------------------------------


def test_no_wildcard_action_or_resource_anywhere(template):
    """No IAM statement in the template uses `*` in an action or a resource."""
    assert wildcard_problems(template) == []


def test_function_is_granted_exactly_what_the_code_calls(template):
    """The function may send to its two queues, use its table, read its secret and write its own
    logs: nothing more."""
    assert granted(template) == expected_grants() | LOG_GRANTS


def test_the_checks_catch_a_wildcard_and_an_extra_grant(template):
    """The two checks above fail when someone widens the policy (so they are not vacuous)."""
    widened = copy.deepcopy(template)
    function_statements(widened).append({"Effect": "Allow", "Action": "sqs:*", "Resource": "*"})
    assert len(wildcard_problems(widened)) == len(wildcard_problems(template)) + 2
    assert granted(widened) != expected_grants() | LOG_GRANTS

    extra = copy.deepcopy(template)
    function_statements(extra).append(
        {"Effect": "Allow", "Action": "dynamodb:Scan", "Resource": {"Fn::GetAtt": ["DedupTable", "Arn"]}}
    )
    assert wildcard_problems(extra) == []
    assert granted(extra) - expected_grants() - LOG_GRANTS == {("dynamodb:Scan", "GetAtt DedupTable.Arn")}

    # Any log group but the function's own is a wildcard.
    other_logs = copy.deepcopy(template)
    function_statements(other_logs).append(
        {"Effect": "Allow", "Action": "logs:PutLogEvents", "Resource": {"Fn::Sub": "arn:${AWS::Partition}:logs:*"}}
    )
    assert len(wildcard_problems(other_logs)) == len(wildcard_problems(template)) + 1


def test_sam_generated_roles_stay_least_privilege(template, monkeypatch):
    """After the SAM transform (offline), every IAM role is free of wildcards (but the
    function's own log streams), and no role has a managed policy."""
    from samtranslator.translator.transform import transform

    class NoManagedPolicies:
        def load(self):
            return {}

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    tpl = copy.deepcopy(template)
    # The translator wants an S3 location; `sam build`/`sam deploy` put one there.
    function(tpl)["Properties"]["CodeUri"] = "s3://example-bucket/bootstrap.zip"
    params = {
        "AppKey": "12345678",
        "AppSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:tmc-app-AbCdEf",
    }
    out = transform(tpl, params, NoManagedPolicies())

    roles = resources_of(out, "AWS::IAM::Role")
    assert set(roles) == {"RelayFunctionRole", "RelayFunctionScheduleRole"}
    assert "ManagedPolicyArns" not in roles["RelayFunctionRole"]["Properties"]
    assert "ManagedPolicyArns" not in roles["RelayFunctionScheduleRole"]["Properties"]
    assert wildcard_problems({"Resources": roles}) == []
    assert not resources_of(out, "AWS::IAM::Policy") and not resources_of(out, "AWS::IAM::ManagedPolicy")

    schedule_grants = {
        (a, describe(r))
        for st in statements(roles["RelayFunctionScheduleRole"]["Properties"]["Policies"])
        for a in as_list(st["Action"])
        for r in as_list(st["Resource"])
    }
    assert schedule_grants == {
        ("lambda:InvokeFunction", "GetAtt RelayFunction.Arn"),
        ("sqs:SendMessage", "GetAtt ScheduleDeadLetterQueue.Arn"),
    }


# --- environment --------------------------------------------------------------------------------


def test_environment_is_exactly_what_the_code_reads(template):
    """Every variable in src/config.rs ENV_VARS is set (bar the inline secret), and nothing else."""
    code = set(env_vars_read_by_code())
    expected = {v for v in code if not is_standard(v)} - NOT_SET_IN_DEPLOYMENT
    env = function(template)["Properties"]["Environment"]["Variables"]
    missing = expected - set(env)
    unknown = set(env) - expected
    assert not missing, f"the code reads these but the template does not set them: {sorted(missing)}"
    assert not unknown, f"the template sets these but the code does not read them: {sorted(unknown)}"
    assert NOT_SET_IN_DEPLOYMENT <= code, "ENV_VARS changed: revisit NOT_SET_IN_DEPLOYMENT"


def test_environment_points_at_this_stack(template):
    """Queue URLs, table name and secret come from the template's own resources and parameter."""
    env = function(template)["Properties"]["Environment"]["Variables"]
    assert env["RELAY_QUEUE_URL"] == {"Ref": "RelayQueue"}
    assert env["PARKING_QUEUE_URL"] == {"Ref": "ParkingQueue"}
    assert env["DEDUP_TABLE_NAME"] == {"Ref": "DedupTable"}
    assert env["TOP_APP_SECRET_ARN"] == {"Ref": "AppSecretArn"}
    assert env["ARCHIVE_URL"] == {
        "Fn::If": [
            "ArchiveOn",
            {"Fn::Sub": ["s3://${Bucket}/${ArchivePrefix}", ARCHIVE_OBJECTS["Fn::Sub"][1]]},
            "",
        ]
    }


def test_archive_bucket_is_private_encrypted_tls_only_expiring_and_kept(template):
    """The archive bucket (Archive=new, the default) blocks public access, encrypts at rest,
    refuses plain HTTP, expires objects after ArchiveRetentionDays (90 by default) and survives
    the stack's deletion; the archive's parameters default to on."""
    params = template["Parameters"]
    assert (params["Archive"]["Default"], params["ArchiveRetentionDays"]["Default"]) == ("new", 90)
    assert set(params["Archive"]["AllowedValues"]) == {"new", "existing", "off"}
    bucket = template["Resources"]["ArchiveBucket"]
    assert (bucket["Condition"], bucket["DeletionPolicy"], bucket["UpdateReplacePolicy"]) == (
        "ArchiveNew", "Retain", "Retain")
    props = bucket["Properties"]
    assert all(props["PublicAccessBlockConfiguration"].values())
    assert len(props["PublicAccessBlockConfiguration"]) == 4
    sse = props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
    assert sse["SSEAlgorithm"] in ("AES256", "aws:kms")
    rules = props["LifecycleConfiguration"]["Rules"]
    assert [(r["Status"], r["ExpirationInDays"]) for r in rules] == [("Enabled", {"Ref": "ArchiveRetentionDays"})]
    policy = template["Resources"]["ArchiveBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert [(s["Effect"], s["Condition"]) for s in policy] == [("Deny", {"Bool": {"aws:SecureTransport": "false"}})]


def fifo_groupings_in_code() -> tuple[list[str], str]:
    """The FIFO_GROUP_BY values `FifoGroupBy::from_str` accepts, and the one its `#[default]`
    variant answers to."""
    text = BODY_RS.read_text()
    names = dict((variant, name) for name, variant in re.findall(r'"([a-z_]+)" => Ok\(FifoGroupBy::(\w+)\)', text))
    default = re.search(r"#\[default\]\s*(\w+)\s*,", text)
    assert names and default, "src/relay/body.rs: FifoGroupBy's from_str or #[default] not found"
    return sorted(names.values()), names[default.group(1)]


def test_fifo_grouping_parameter_agrees_with_the_code(template):
    """FifoGroupBy offers exactly the groupings the code parses, and defaults to the code's default
    (biz_key), so a stack and a local run group the same way."""
    accepted, default = fifo_groupings_in_code()
    param = template["Parameters"]["FifoGroupBy"]
    assert sorted(param["AllowedValues"]) == accepted
    assert param["Default"] == default == "biz_key"
    env = function(template)["Properties"]["Environment"]["Variables"]
    assert env["FIFO_GROUP_BY"] == {"Ref": "FifoGroupBy"}


# --- encryption and shapes ----------------------------------------------------------------------


def test_every_queue_is_encrypted(template):
    queues = resources_of(template, "AWS::SQS::Queue")
    assert set(queues) == {"RelayQueue", "RelayDeadLetterQueue", "ParkingQueue", "ScheduleDeadLetterQueue"}
    for name, q in queues.items():
        props = q["Properties"]
        assert props.get("SqsManagedSseEnabled") is True or "KmsMasterKeyId" in props, f"{name} is not encrypted"


def test_dedup_table_matches_the_code(template):
    """Key `pk` (S, hash only), TTL on `expires_at`, encrypted, on demand, retained."""
    t = template["Resources"]["DedupTable"]
    props = t["Properties"]
    assert props["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
    assert props["AttributeDefinitions"] == [{"AttributeName": "pk", "AttributeType": "S"}]
    assert props["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert props["SSESpecification"]["SSEEnabled"] is True
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert "PointInTimeRecoverySpecification" in props
    assert t["DeletionPolicy"] == "Retain" and t["UpdateReplacePolicy"] == "Retain"


def test_relay_queue_takes_1_mib_and_is_fifo_only_by_parameter(template):
    r = template["Resources"]
    relay, dlq = r["RelayQueue"]["Properties"], r["RelayDeadLetterQueue"]["Properties"]
    assert relay["MaximumMessageSize"] == 1048576
    assert r["ParkingQueue"]["Properties"]["MaximumMessageSize"] == 1048576
    for q in (relay, dlq):
        assert q["FifoQueue"] == {"Fn::If": ["IsFifo", True, {"Ref": "AWS::NoValue"}]}
        name = q["QueueName"]["Fn::If"]
        assert name[0] == "IsFifo" and name[1]["Fn::Sub"].endswith(".fifo")
    assert relay["ContentBasedDeduplication"] == {"Fn::If": ["IsFifo", False, {"Ref": "AWS::NoValue"}]}
    assert relay["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": ["RelayDeadLetterQueue", "Arn"]}
    assert template["Conditions"]["IsFifo"] == {"Fn::Equals": [{"Ref": "FifoQueue"}, "true"]}


# --- function and schedule ----------------------------------------------------------------------


def test_function_runtime_and_build(template):
    fn = function(template)
    p = fn["Properties"]
    assert (p["Runtime"], p["Architectures"], p["Handler"]) == ("provided.al2023", ["arm64"], "bootstrap")
    assert fn["Metadata"]["BuildMethod"] == "rust-cargolambda"
    assert fn["Metadata"]["BuildProperties"]["Binary"] == "bootstrap"
    assert p["LoggingConfig"]["LogFormat"] == "JSON"
    assert p["LoggingConfig"]["LogGroup"] == {"Ref": "RelayLogGroup"}
    assert "RetentionInDays" in template["Resources"]["RelayLogGroup"]["Properties"]
    assert p["ReservedConcurrentExecutions"] == {"Ref": "ReservedConcurrency"}
    assert template["Parameters"]["ReservedConcurrency"]["Default"] >= 2, "leave room for a backfill"


def test_lambda_async_retries_are_off(template):
    """The scheduler retries; Lambda's own async retries must not stack on top."""
    cfg = function(template)["Properties"]["EventInvokeConfig"]
    assert cfg["MaximumRetryAttempts"] == 0


def test_schedule_is_scheduler_v2_with_its_own_retries_and_dlq(template):
    events = function(template)["Properties"]["Events"]
    assert list(events) == ["Schedule"]
    s = events["Schedule"]
    assert s["Type"] == "ScheduleV2"
    p = s["Properties"]
    assert p["ScheduleExpression"] == {"Ref": "ScheduleExpression"}
    assert p["FlexibleTimeWindow"] == {"Mode": "OFF"}
    assert "MaximumRetryAttempts" in p["RetryPolicy"]
    assert p["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": ["ScheduleDeadLetterQueue", "Arn"]}}


def test_default_timeout_fits_in_the_default_schedule_period(template):
    """Passes do not pile up: the default Timeout is at most the default schedule period."""
    params = template["Parameters"]
    m = re.fullmatch(r"rate\((\d+) (minute|minutes|hour|hours)\)", params["ScheduleExpression"]["Default"])
    assert m, "the default schedule should be a rate() expression"
    period = int(m.group(1)) * (60 if m.group(2).startswith("minute") else 3600)
    assert params["Timeout"]["Default"] <= period


# --- alarms and dashboard -----------------------------------------------------------------------


def emf_metric_names() -> set[str]:
    if not TELEMETRY_RS.exists():
        pytest.fail("src/telemetry.rs does not exist yet: it must emit the EMF metrics")
    return set(re.findall(r'\(\s*"([A-Za-z]+)"\s*,', TELEMETRY_RS.read_text())) | set(
        re.findall(r'"Name":\s*"([A-Za-z]+)"', TELEMETRY_RS.read_text())
    )


def test_alarms_cover_the_issue_and_notify_the_optional_topic(template):
    alarms = resources_of(template, "AWS::CloudWatch::Alarm")
    watched = {(a["Properties"]["Namespace"], a["Properties"]["MetricName"]) for a in alarms.values()}
    assert watched == {
        ("AWS/Lambda", "Errors"),
        ("AWS/Lambda", "Throttles"),
        ("TmcRelay", "Parked"),
        ("TmcRelay", "Deferred"),
        ("TmcRelay", "OldestMessageAgeSeconds"),
        ("AWS/SQS", "ApproximateNumberOfMessagesVisible"),
    }
    for name, a in alarms.items():
        p = a["Properties"]
        for key in ("AlarmActions", "OKActions"):
            assert p[key] == {"Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]}, name
        assert p["TreatMissingData"] == "notBreaching", name
        if p["Namespace"] in ("TmcRelay", "AWS/Lambda"):
            assert p["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": "RelayFunction"}}], name


def test_alarms_and_dashboard_use_metrics_the_code_emits(template):
    """A renamed EMF metric in src/telemetry.rs must not silently blind an alarm or a graph."""
    emitted = emf_metric_names()
    alarms = resources_of(template, "AWS::CloudWatch::Alarm")
    for a in alarms.values():
        p = a["Properties"]
        if p["Namespace"] == "TmcRelay":
            assert p["MetricName"] in emitted, f"alarm on {p['MetricName']}, which the code does not emit"
    body = template["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"][0]
    dash = json.loads(re.sub(r"\$\{[^}]+\}", "x", body))
    for w in dash["widgets"]:
        rows = w["properties"]["metrics"]
        namespace = None
        for row in rows:
            namespace = row[0] if row[0] != "." else namespace
            if namespace == "TmcRelay":
                assert row[1] in emitted, f"dashboard graphs {row[1]}, which the code does not emit"


def test_outputs(template):
    assert {"FunctionName", "RelayQueueUrl", "ParkingQueueUrl", "DedupTableName", "DashboardUrl", "ArchiveUrl"} <= set(
        template["Outputs"]
    )


def test_deployer_policy_is_valid_and_names_its_actions():
    """infra/deployer-policy.json parses and never grants a whole service (`*` actions)."""
    doc = json.loads((ROOT / "infra" / "deployer-policy.json").read_text())
    for st in doc["Statement"]:
        assert "NotAction" not in st
        for action in as_list(st["Action"]):
            assert "*" not in action, f"wildcard action in the deployer policy: {st}"


# The SDK calls the `tmc-relay parked` commands make (src/parked), and what each needs. Redrive
# also sends through the relay's SqsQueue adapter (SendMessageBatch, authorised by SendMessage).
PARKED_CODE = ROOT / "src" / "parked"
PARKED_CALL_TO_GRANT = {
    "receive_message": ("sqs:ReceiveMessage", "PARKING_QUEUE_ARN"),
    "delete_message_batch": ("sqs:DeleteMessage", "PARKING_QUEUE_ARN"),
    "change_message_visibility_batch": ("sqs:ChangeMessageVisibility", "PARKING_QUEUE_ARN"),
}
REDRIVE_SEND = ("sqs:SendMessage", "RELAY_QUEUE_ARN")
# `tmc-relay replay` (src/replay.rs reading through src/aws/s3.rs's S3Reader): it lists the
# archive's prefix, reads its objects and sends to the relay queue (or --queue-url).
REPLAY_CODE = [ROOT / "src" / "replay.rs", ROOT / "src" / "aws" / "s3.rs"]
REPLAY_CALL_TO_GRANT = {
    "list_objects_v2": ("s3:ListBucket", "ARCHIVE_BUCKET_ARN"),
    "get_object": ("s3:GetObject", "ARCHIVE_OBJECTS_ARN"),
}


def test_operator_policy_grants_exactly_what_the_parked_commands_call():
    """infra/operator-policy.json (docs/deploying.md, "The operator") allows exactly the calls the parked
    commands make, on the parking and relay queues only: a new call without a grant, or a grant
    for a call no longer made, fails here."""
    calls = set()
    for f in sorted(PARKED_CODE.rglob("*.rs")):
        calls |= set(re.findall(r"\.([a-z_]+)\(\)", f.read_text()))
    sqs_calls = {c for c in calls if c in PARKED_CALL_TO_GRANT}
    assert sqs_calls, "found no SQS calls in src/parked: the scan is broken"
    unknown = {c for c in calls if c.startswith(("send_message", "receive_", "delete_message", "change_message", "purge_queue"))} - set(PARKED_CALL_TO_GRANT)
    assert not unknown, f"src/parked makes SQS calls this test does not know: {sorted(unknown)}"
    replay_calls = set()
    for f in REPLAY_CODE:
        replay_calls |= set(re.findall(r"\.([a-z0-9_]+)\(\)", f.read_text())) & set(REPLAY_CALL_TO_GRANT)
    assert replay_calls == set(REPLAY_CALL_TO_GRANT), replay_calls
    expected = {PARKED_CALL_TO_GRANT[c] for c in sqs_calls} | {REDRIVE_SEND} | {
        REPLAY_CALL_TO_GRANT[c] for c in replay_calls}
    doc = json.loads((ROOT / "infra" / "operator-policy.json").read_text())
    granted_pairs = set()
    for st in doc["Statement"]:
        assert st["Effect"] == "Allow" and "NotAction" not in st and "NotResource" not in st, st
        for action in as_list(st["Action"]):
            for resource in as_list(st["Resource"]):
                assert "*" not in action + resource, f"wildcard in the operator policy: {st}"
                granted_pairs.add((action, resource))
    assert granted_pairs == expected
    assert {"RelayQueueArn", "ParkingQueueArn"} <= set(load_template_outputs())


def load_template_outputs() -> dict:
    tpl, errors = decode(str(TEMPLATE))
    assert not errors
    return plain(tpl)["Outputs"]


def test_sample_events_are_valid_json():
    for f in sorted((ROOT / "infra" / "events").glob("*.json")):
        assert isinstance(json.loads(f.read_text()), dict), f.name
