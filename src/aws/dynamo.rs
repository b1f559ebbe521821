//! The dedup table on DynamoDB, one request per port method (see `relay::lease` for the
//! protocol). Items, all keyed by `pk` (S):
//!
//! - a claim: `pk` = the message id, `b` = the batch token, `status` = `claimed`,
//!   `lease_until` (epoch ms: what the previous version reads, so a rollback takes claims over
//!   once it passes) and `expires_at` (epoch s, the TTL attribute). About 60 bytes: one write
//!   unit.
//! - a batch record: `pk` = `b#<token>`, `lease_until`, `expires_at`; once settled, `settled`
//!   (BOOL), `accepted` and `held` (NS, the receipt) and `hold_until`.
//! - the previous version's items: `status` = `done` | `parked` | `claimed`, no `b`.
//!
//! Claims are PartiQL `INSERT`s, 25 to a `BatchExecuteStatement`, each failing on its own
//! with `DuplicateItem` when an item exists. Some emulators do not model PartiQL writes (moto
//! answers a parameterised `INSERT` with HTTP 500 and lets a duplicate succeed): [`probe`]
//! finds out, and such an endpoint gets one conditional `PutItem` per claim instead.
//!
//! Every answer's `Date` header also measures the host clock's offset from DynamoDB's (see
//! `aws::clock`); when no answer came yet, a pass first reads `clock#probe`, a key never
//! written.
//!
//! [`probe`]: DynamoStore::probe

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use aws_sdk_dynamodb::types::{
    AttributeValue, BatchStatementErrorCodeEnum, BatchStatementRequest, ConsumedCapacity,
    KeysAndAttributes, ReturnConsumedCapacity, ReturnValuesOnConditionCheckFailure,
};
use tokio::time::Instant;

use super::clock::{measured, OffsetMeter};
use super::errors::port_error;
use super::within;
use super::Meter;
use crate::relay::lease::Clock;
use crate::relay::offset::ClockOffset;
use crate::relay::ports::{
    BatchRecord, ClaimItem, DedupStore, InsertOutcome, Key, NewClaim, PortError, Renewal, Settle,
    Severity, Stored, TakeOver, INSERT_CHUNK,
};

/// The prefix of batch records' keys.
pub const BATCH_PREFIX: &str = "b#";

/// The key the clock probe reads: never written.
pub const CLOCK_PROBE_KEY: &str = "clock#probe";

#[derive(Clone, Debug)]
pub struct DynamoStore {
    client: aws_sdk_dynamodb::Client,
    /// The table name, validated at configuration time.
    table: String,
    /// `INSERT INTO "<table>" VALUE {...}` with five parameters.
    insert: String,
    /// Claims go in batches of PartiQL `INSERT`s (true unless the probe said otherwise).
    partiql: Arc<AtomicBool>,
    /// Probe the endpoint before the first claim (endpoints other than AWS's own).
    probe_first: bool,
    probed: Arc<tokio::sync::OnceCell<()>>,
    /// The host clock's offset from DynamoDB's, from every answer (see `measuring_clock`).
    clock: Option<Arc<OffsetMeter>>,
    /// Requests and capacity used, for the report and the cost model.
    pub meter: Arc<Meter>,
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn ns(v: &[u64]) -> AttributeValue {
    AttributeValue::Ns(v.iter().map(u64::to_string).collect())
}

type Attrs = HashMap<String, AttributeValue>;

fn get_s<'a>(item: &'a Attrs, name: &str) -> Option<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

fn get_n(item: &Attrs, name: &str) -> u64 {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn get_ns(item: &Attrs, name: &str) -> Vec<u64> {
    item.get(name)
        .and_then(|v| v.as_ns().ok())
        .map(|v| v.iter().filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_default()
}

/// Reads a claim item (`None` for anything else, e.g. a batch record).
pub fn parse_claim(item: &Attrs) -> Option<ClaimItem> {
    let id = get_s(item, "pk")?.parse().ok()?;
    Some(ClaimItem {
        id,
        batch: get_s(item, "b").map(str::to_owned),
        legacy_status: get_s(item, "b")
            .is_none()
            .then(|| get_s(item, "status").map(str::to_owned))
            .flatten(),
        lease_until_ms: get_n(item, "lease_until"),
        expires_at: get_n(item, "expires_at"),
    })
}

/// Reads a batch record.
pub fn parse_batch(item: &Attrs) -> Option<BatchRecord> {
    let token = get_s(item, "pk")?.strip_prefix(BATCH_PREFIX)?;
    Some(BatchRecord {
        token: token.to_owned(),
        lease_until_ms: get_n(item, "lease_until"),
        expires_at: get_n(item, "expires_at"),
        accepted: get_ns(item, "accepted"),
        held: get_ns(item, "held"),
        hold_until_ms: get_n(item, "hold_until"),
        settled: get_bool(item, "settled"),
        fenced: get_bool(item, "fenced"),
    })
}

fn get_bool(item: &Attrs, name: &str) -> bool {
    item.get(name)
        .and_then(|v| v.as_bool().ok())
        .copied()
        .unwrap_or(false)
}

fn claim_attrs(c: &NewClaim) -> Attrs {
    HashMap::from([
        ("pk".to_owned(), n_key(c.id)),
        ("b".to_owned(), s(&c.batch)),
        ("status".to_owned(), s("claimed")),
        ("lease_until".to_owned(), n(c.lease_until_ms)),
        ("expires_at".to_owned(), n(c.expires_at)),
    ])
}

fn n_key(id: u64) -> AttributeValue {
    s(&id.to_string())
}

fn key_value(k: &Key) -> AttributeValue {
    match k {
        Key::Claim(id) => n_key(*id),
        Key::Batch(t) => s(&format!("{BATCH_PREFIX}{t}")),
    }
}

/// What one statement's error means.
fn statement_outcome(
    code: Option<&BatchStatementErrorCodeEnum>,
    message: Option<&str>,
    item: Option<&Attrs>,
) -> InsertOutcome {
    use BatchStatementErrorCodeEnum as C;
    let detail = format!(
        "{}: {}",
        code.map_or("unknown", |c| c.as_str()),
        message.unwrap_or("")
    );
    let op = "BatchExecuteStatement";
    match code {
        Some(C::DuplicateItem | C::ConditionalCheckFailed) => {
            InsertOutcome::Exists(item.and_then(parse_claim))
        }
        Some(C::ProvisionedThroughputExceeded | C::ThrottlingError | C::RequestLimitExceeded) => {
            InsertOutcome::Failed(PortError::throttled(op, detail))
        }
        Some(C::ResourceNotFound | C::AccessDenied) => {
            InsertOutcome::Failed(PortError::new(op, Severity::Fatal, detail))
        }
        Some(C::ValidationError | C::ItemCollectionSizeLimitExceeded) => {
            InsertOutcome::Failed(PortError::new(op, Severity::Permanent, detail))
        }
        // InternalServerError, TransactionConflict, and codes added later: try again.
        _ => InsertOutcome::Failed(PortError::new(op, Severity::Retryable, detail)),
    }
}

impl DynamoStore {
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        let table = table.into();
        Self {
            client,
            insert: format!(
                "INSERT INTO \"{table}\" VALUE {{'pk': ?, 'b': ?, 'status': ?, 'lease_until': ?, 'expires_at': ?}}"
            ),
            table,
            partiql: Arc::new(AtomicBool::new(true)),
            probe_first: false,
            probed: Arc::default(),
            clock: None,
            meter: Arc::default(),
        }
    }

    /// Probes the endpoint (see [`probe`](Self::probe)) before the first claim, not at start:
    /// a cold start makes no request it does not need.
    pub fn probe_before_first_claim(mut self) -> Self {
        self.probe_first = true;
        self
    }

    /// Measures the host clock's offset from DynamoDB's on every answer, reading the host's
    /// time from `clock` (the leases' clock), for the check a pass starts with.
    pub fn measuring_clock(mut self, clock: Clock) -> Self {
        let meter = Arc::new(OffsetMeter::new(clock));
        self.client = measured(&self.client, Arc::clone(&meter));
        self.clock = Some(meter);
        self
    }

    /// One strongly consistent read of a key that never exists: the cheapest request whose
    /// answer carries DynamoDB's `Date` (one read unit). Its outcome does not matter, only
    /// that an answer came.
    async fn probe_clock(&self, deadline: Instant) -> Result<(), PortError> {
        let op = "BatchGetItem";
        let ka = KeysAndAttributes::builder()
            .consistent_read(true)
            .keys(HashMap::from([("pk".to_owned(), s(CLOCK_PROBE_KEY))]))
            .build()
            .map_err(|e| PortError::new(op, Severity::Permanent, e.to_string()))?;
        self.meter.request();
        let call = self
            .client
            .batch_get_item()
            .request_items(&self.table, ka)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send();
        match within(deadline, op, call).await? {
            Ok(out) => {
                self.record_all(out.consumed_capacity());
                Ok(())
            }
            Err(e) => Err(port_error(op, &e)),
        }
    }

    /// True while claims go in batches of PartiQL `INSERT`s.
    pub fn batches_claims(&self) -> bool {
        self.partiql.load(Ordering::Relaxed)
    }

    /// Finds out whether the endpoint models PartiQL `INSERT`: a probe item inserted twice
    /// must succeed, then fail with `DuplicateItem`. If not, claims fall back to one
    /// conditional `PutItem` each. For endpoints other than AWS's own (emulators); costs two
    /// small writes, and the probe item expires within the hour.
    pub async fn probe(&self, deadline: Instant) -> bool {
        let key = format!("probe#{}", crate::relay::pass::unique_token("p"));
        let expires = crate::top::clock::epoch_secs(std::time::SystemTime::now()) + 3600;
        let statement = format!(
            "INSERT INTO \"{}\" VALUE {{'pk': ?, 'expires_at': ?}}",
            self.table
        );
        let mut answers = Vec::new();
        for _ in 0..2 {
            let req = BatchStatementRequest::builder()
                .statement(&statement)
                .parameters(s(&key))
                .parameters(n(expires))
                .build();
            let Ok(req) = req else { return false };
            let call = self.client.batch_execute_statement().statements(req).send();
            match within(deadline, "BatchExecuteStatement", call).await {
                Ok(Ok(out)) => answers.push(
                    out.responses()
                        .first()
                        .and_then(|r| r.error())
                        .and_then(|e| e.code().cloned()),
                ),
                _ => answers.push(Some(BatchStatementErrorCodeEnum::InternalServerError)),
            }
        }
        let ok = answers.first() == Some(&None)
            && answers.get(1) == Some(&Some(BatchStatementErrorCodeEnum::DuplicateItem));
        self.partiql.store(ok, Ordering::Relaxed);
        ok
    }

    fn record_all(&self, ccs: &[ConsumedCapacity]) {
        for cc in ccs {
            self.record(Some(cc));
        }
    }

    fn record(&self, cc: Option<&ConsumedCapacity>) {
        if let Some(c) = cc {
            self.meter.capacity(
                c.write_capacity_units()
                    .or(c.capacity_units())
                    .unwrap_or(0.0),
                c.read_capacity_units().unwrap_or(0.0),
            );
        }
    }

    async fn insert_batch(
        &self,
        claims: &[NewClaim],
        deadline: Instant,
    ) -> Result<Vec<InsertOutcome>, PortError> {
        let op = "BatchExecuteStatement";
        let mut statements = Vec::with_capacity(claims.len());
        for c in claims.iter().take(INSERT_CHUNK) {
            let req = BatchStatementRequest::builder()
                .statement(&self.insert)
                .set_parameters(Some(vec![
                    n_key(c.id),
                    s(&c.batch),
                    s("claimed"),
                    n(c.lease_until_ms),
                    n(c.expires_at),
                ]))
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                )
                .build()
                .map_err(|e| PortError::new(op, Severity::Permanent, e.to_string()))?;
            statements.push(req);
        }
        self.meter.request();
        let call = self
            .client
            .batch_execute_statement()
            .set_statements(Some(statements))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send();
        let out = within(deadline, op, call)
            .await?
            .map_err(|e| port_error(op, &e))?;
        self.record_all(out.consumed_capacity());
        let responses = out.responses();
        if responses.len() != claims.len() {
            return Err(PortError::new(
                op,
                Severity::Retryable,
                format!(
                    "{} responses for {} statements",
                    responses.len(),
                    claims.len()
                ),
            ));
        }
        Ok(responses
            .iter()
            .map(|r| match r.error() {
                None => InsertOutcome::Inserted,
                Some(e) => statement_outcome(e.code(), e.message(), e.item()),
            })
            .collect())
    }

    /// One conditional `PutItem` (only if no item exists), for endpoints without PartiQL.
    async fn insert_one(&self, c: &NewClaim, deadline: Instant) -> InsertOutcome {
        match self
            .put(
                claim_attrs(c),
                Some(("attribute_not_exists(pk)", Vec::new())),
                deadline,
            )
            .await
        {
            Ok(None) => InsertOutcome::Inserted,
            Ok(Some(old)) => InsertOutcome::Exists(old.as_ref().and_then(parse_claim)),
            Err(e) => InsertOutcome::Failed(e),
        }
    }

    /// A `PutItem`, conditional when `condition` is given. `Ok(Some(old))` when the condition
    /// failed, with the item there (`ALL_OLD`).
    async fn put(
        &self,
        item: Attrs,
        condition: Option<(&str, Vec<(&str, AttributeValue)>)>,
        deadline: Instant,
    ) -> Result<Option<Option<Attrs>>, PortError> {
        let op = "PutItem";
        let mut req = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .return_consumed_capacity(ReturnConsumedCapacity::Total);
        if let Some((expr, values)) = condition {
            req = req
                .condition_expression(expr)
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                );
            if expr.contains("#b") {
                req = req.expression_attribute_names("#b", "b");
            }
            if expr.contains("#st") {
                req = req.expression_attribute_names("#st", "status");
            }
            for (k, v) in values {
                req = req.expression_attribute_values(k, v);
            }
        }
        self.meter.request();
        match within(deadline, op, req.send()).await? {
            Ok(out) => {
                self.record(out.consumed_capacity());
                Ok(None)
            }
            Err(e) => {
                use aws_sdk_dynamodb::operation::put_item::PutItemError;
                if let Some(PutItemError::ConditionalCheckFailedException(cf)) =
                    e.as_service_error()
                {
                    // A failed conditional write still consumes a write unit.
                    self.meter.capacity(1.0, 0.0);
                    return Ok(Some(cf.item().cloned()));
                }
                Err(port_error(op, &e))
            }
        }
    }

    /// A conditional `UpdateItem` of a batch record. `Ok(Some(old))` when the condition
    /// failed, with the item there when the endpoint hands it back (`ALL_OLD`).
    async fn update_batch(
        &self,
        token: &str,
        update: &str,
        condition: &str,
        values: Vec<(&str, AttributeValue)>,
        deadline: Instant,
    ) -> Result<Option<Option<Attrs>>, PortError> {
        let op = "UpdateItem";
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", key_value(&Key::Batch(token.to_owned())))
            .update_expression(update)
            .condition_expression(condition)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .return_consumed_capacity(ReturnConsumedCapacity::Total);
        for (k, v) in values {
            req = req.expression_attribute_values(k, v);
        }
        self.meter.request();
        match within(deadline, op, req.send()).await? {
            Ok(out) => {
                self.record(out.consumed_capacity());
                Ok(None)
            }
            Err(e) => {
                use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
                if let Some(UpdateItemError::ConditionalCheckFailedException(cf)) =
                    e.as_service_error()
                {
                    // A failed conditional write still consumes a write unit.
                    self.meter.capacity(1.0, 0.0);
                    return Ok(Some(cf.item().cloned()));
                }
                Err(port_error(op, &e))
            }
        }
    }
}

impl DedupStore for DynamoStore {
    async fn ready(&self, deadline: Instant) {
        if !self.probe_first {
            return;
        }
        self.probed
            .get_or_init(|| async {
                if !self.probe(deadline).await {
                    tracing::warn!(
                        "this DynamoDB endpoint does not model PartiQL INSERT (an emulator such as moto): claiming with one conditional PutItem per message"
                    );
                }
            })
            .await;
    }

    async fn clock_offset(&self, deadline: Instant) -> Result<Option<ClockOffset>, PortError> {
        let Some(meter) = &self.clock else {
            return Ok(None);
        };
        if meter.offset().is_none() {
            let probed = self.probe_clock(deadline).await;
            // An error answer carries a Date too: only no answer at all leaves it unknown.
            if meter.offset().is_none() {
                probed?;
            }
        }
        Ok(meter.offset())
    }

    fn insert_chunk(&self) -> usize {
        if self.batches_claims() {
            INSERT_CHUNK
        } else {
            1
        }
    }

    fn insert_operation(&self) -> &'static str {
        if self.batches_claims() {
            "BatchExecuteStatement"
        } else {
            "PutItem"
        }
    }

    async fn insert_claims(
        &self,
        claims: &[NewClaim],
        deadline: Instant,
    ) -> Result<Vec<InsertOutcome>, PortError> {
        if self.batches_claims() {
            return self.insert_batch(claims, deadline).await;
        }
        let mut out = Vec::with_capacity(claims.len());
        for c in claims {
            out.push(self.insert_one(c, deadline).await);
        }
        Ok(out)
    }

    async fn read(
        &self,
        keys: &[Key],
        deadline: Instant,
    ) -> Result<(Vec<Stored>, Vec<Key>), PortError> {
        let op = "BatchGetItem";
        let mut ka = KeysAndAttributes::builder().consistent_read(true);
        for k in keys {
            ka = ka.keys(HashMap::from([("pk".to_owned(), key_value(k))]));
        }
        let ka = ka
            .build()
            .map_err(|e| PortError::new(op, Severity::Permanent, e.to_string()))?;
        self.meter.request();
        let call = self
            .client
            .batch_get_item()
            .request_items(&self.table, ka)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send();
        let out = within(deadline, op, call)
            .await?
            .map_err(|e| port_error(op, &e))?;
        self.record_all(out.consumed_capacity());
        let found = out
            .responses()
            .and_then(|r| r.get(&self.table))
            .map(|items| {
                items
                    .iter()
                    .filter_map(|i| {
                        parse_batch(i)
                            .map(Stored::Batch)
                            .or_else(|| parse_claim(i).map(Stored::Claim))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let left = out
            .unprocessed_keys()
            .and_then(|u| u.get(&self.table))
            .map(|ka| {
                ka.keys()
                    .iter()
                    .filter_map(|k| {
                        let pk = k.get("pk")?.as_s().ok()?;
                        Some(match pk.strip_prefix(BATCH_PREFIX) {
                            Some(t) => Key::Batch(t.to_owned()),
                            None => Key::Claim(pk.parse().ok()?),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok((found, left))
    }

    async fn take_over(
        &self,
        new: &NewClaim,
        old: &ClaimItem,
        deadline: Instant,
    ) -> Result<TakeOver, PortError> {
        // Conditioned on the old item: its batch token, or for the previous version's items
        // their exact status and expiry.
        let condition = match &old.batch {
            Some(b) => ("#b = :ob", vec![(":ob", s(b))]),
            None => (
                "attribute_not_exists(#b) AND #st = :ost AND expires_at = :oexp",
                vec![
                    (":ost", s(old.legacy_status.as_deref().unwrap_or("claimed"))),
                    (":oexp", n(old.expires_at)),
                ],
            ),
        };
        Ok(
            match self
                .put(claim_attrs(new), Some(condition), deadline)
                .await?
            {
                None => TakeOver::Taken,
                Some(now) => TakeOver::Changed(now.as_ref().and_then(parse_claim)),
            },
        )
    }

    async fn put_batch(&self, record: &BatchRecord, deadline: Instant) -> Result<(), PortError> {
        let item = HashMap::from([
            (
                "pk".to_owned(),
                key_value(&Key::Batch(record.token.clone())),
            ),
            ("lease_until".to_owned(), n(record.lease_until_ms)),
            ("expires_at".to_owned(), n(record.expires_at)),
        ]);
        // Only if absent: a late first attempt must not overwrite the receipt. The token is
        // unique, so a record that exists is an earlier attempt's: written.
        self.put(
            item,
            Some(("attribute_not_exists(pk)", Vec::new())),
            deadline,
        )
        .await
        .map(|_| ())
    }

    async fn renew_batch(
        &self,
        token: &str,
        lease_until_ms: u64,
        now_ms: u64,
        deadline: Instant,
    ) -> Result<Renewal, PortError> {
        let Some(old) = self
            .update_batch(
                token,
                "SET lease_until = :l",
                // Only a live lease, never fenced nor settled, and only forward: a renewal
                // never revives a lapsed lease, and a late attempt never shortens a later one.
                "attribute_exists(pk) AND attribute_not_exists(settled) \
                 AND attribute_not_exists(fenced) AND lease_until >= :now AND lease_until < :l",
                vec![(":l", n(lease_until_ms)), (":now", n(now_ms))],
                deadline,
            )
            .await?
        else {
            return Ok(Renewal::Renewed);
        };
        // Endpoints that do not hand the old item back (emulators): read it.
        let record = match old {
            Some(item) => parse_batch(&item),
            None => self
                .read(&[Key::Batch(token.to_owned())], deadline)
                .await?
                .0
                .into_iter()
                .find_map(|s| match s {
                    Stored::Batch(r) => Some(r),
                    Stored::Claim(_) => None,
                }),
        };
        Ok(match record {
            Some(r) if r.settled => Renewal::Settled,
            // An earlier attempt of ours got there: the lease runs at least that long.
            Some(r) if !r.fenced && r.lease_until_ms >= lease_until_ms => Renewal::Renewed,
            _ => Renewal::Lost,
        })
    }

    async fn fence_batch(
        &self,
        token: &str,
        judged_lease_until_ms: u64,
        deadline: Instant,
    ) -> Result<bool, PortError> {
        let changed = self
            .update_batch(
                token,
                "SET fenced = :t",
                "lease_until = :judged AND attribute_not_exists(settled)",
                vec![
                    (":t", AttributeValue::Bool(true)),
                    (":judged", n(judged_lease_until_ms)),
                ],
                deadline,
            )
            .await?;
        Ok(changed.is_none())
    }

    async fn settle_batch(&self, st: &Settle, deadline: Instant) -> Result<(), PortError> {
        let mut item = HashMap::from([
            ("pk".to_owned(), key_value(&Key::Batch(st.token.clone()))),
            ("lease_until".to_owned(), n(st.lease_until_ms)),
            ("expires_at".to_owned(), n(st.expires_at)),
            ("settled".to_owned(), AttributeValue::Bool(true)),
            ("hold_until".to_owned(), n(st.hold_until_ms)),
        ]);
        // A number set cannot be empty.
        if !st.accepted.is_empty() {
            item.insert("accepted".to_owned(), ns(&st.accepted));
        }
        if !st.held.is_empty() {
            item.insert("held".to_owned(), ns(&st.held));
        }
        self.put(item, None, deadline).await.map(|_| ())
    }
}
