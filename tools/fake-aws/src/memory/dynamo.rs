//! In-memory DynamoDB: tables with a hash (and optional range) key; conditional writes with the
//! expression subset in [`super::expr`]; batch reads and writes; scans; consumed capacity.
//!
//! Limits enforced as DynamoDB does (and moto does not): 25 requests per `BatchWriteItem`, 100
//! keys per `BatchGetItem`, no duplicate keys in a batch, table names of 3 to 255 characters,
//! 400 KB items, placeholders all defined and all used.

use std::collections::{BTreeMap, HashSet};

use serde_json::{json, Map, Value};

use super::super::wire::AwsError;
use super::base64_decode;
use super::expr::{self, av_type, is_number, ExprContext, Item};

const MAX_ITEM_BYTES: usize = 400 * 1024;
const MAX_BATCH_WRITE: usize = 25;
const MAX_BATCH_GET: usize = 100;

/// A table's key: the hash attribute and its type, then optionally the range attribute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableKey {
    pub hash: (String, String),
    pub range: Option<(String, String)>,
}

#[derive(Debug)]
struct Table {
    key: TableKey,
    /// Key schema and attribute definitions as given, echoed by `DescribeTable`.
    schema: Value,
    definitions: Value,
    /// Items by canonical key.
    items: BTreeMap<String, Item>,
    created_s: f64,
    ttl_attribute: Option<String>,
}

#[derive(Debug, Default)]
pub struct DdbState {
    tables: BTreeMap<String, Table>,
}

impl DdbState {
    pub fn items(&self, table: &str) -> Option<Vec<Value>> {
        self.tables
            .get(table)
            .map(|t| t.items.values().cloned().map(Value::Object).collect())
    }
}

fn v(msg: impl AsRef<str>) -> AwsError {
    AwsError::ddb_validation(msg)
}

fn req_str<'a>(body: &'a Value, field: &str) -> Result<&'a str, AwsError> {
    body.get(field).and_then(Value::as_str).ok_or_else(|| {
        v(format!(
            "1 validation error detected: Value null at '{field}' failed to satisfy constraint: Member must not be null"
        ))
    })
}

fn opt_str<'a>(body: &'a Value, field: &str) -> Option<&'a str> {
    body.get(field).and_then(Value::as_str)
}

fn opt_map<'a>(body: &'a Value, field: &str) -> Result<Option<&'a Map<String, Value>>, AwsError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) if m.is_empty() => Err(v(format!("{field} must not be empty"))),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(v(format!("{field} must be a map"))),
    }
}

fn req_map<'a>(body: &'a Value, field: &str) -> Result<&'a Map<String, Value>, AwsError> {
    opt_map(body, field)?.ok_or_else(|| {
        v(format!(
            "1 validation error detected: Value null at '{field}' failed to satisfy constraint: Member must not be null"
        ))
    })
}

/// Parameters of the legacy (pre-expression) API, which this fake refuses rather than ignores.
const LEGACY: &[&str] = &[
    "Expected",
    "ConditionalOperator",
    "AttributeUpdates",
    "AttributesToGet",
    "ScanFilter",
    "KeyConditions",
    "QueryFilter",
];

fn refuse_legacy(body: &Value) -> Result<(), AwsError> {
    match LEGACY.iter().find(|k| body.get(**k).is_some()) {
        Some(k) => Err(v(format!(
            "{k} (the legacy API) is not supported by the fake-aws memory backend; use expressions"
        ))),
        None => Ok(()),
    }
}

/// Carries out one DynamoDB operation.
pub fn call(st: &mut DdbState, op: &str, body: &Value) -> Result<Value, AwsError> {
    refuse_legacy(body)?;
    match op {
        "CreateTable" => create_table(st, body),
        "DescribeTable" => {
            let t = table(st, body)?;
            Ok(json!({"Table": describe(req_str(body, "TableName")?, t)}))
        }
        "DeleteTable" => {
            let name = req_str(body, "TableName")?;
            let t = st.tables.remove(name).ok_or_else(AwsError::ddb_not_found)?;
            Ok(json!({"TableDescription": describe(name, &t)}))
        }
        "ListTables" => Ok(json!({"TableNames": st.tables.keys().collect::<Vec<_>>()})),
        "UpdateTimeToLive" => {
            let spec = body
                .get("TimeToLiveSpecification")
                .cloned()
                .unwrap_or(Value::Null);
            let t = table_mut(st, body)?;
            let enabled = spec["Enabled"].as_bool().unwrap_or(false);
            t.ttl_attribute = spec["AttributeName"]
                .as_str()
                .filter(|_| enabled)
                .map(str::to_owned);
            Ok(json!({"TimeToLiveSpecification": spec}))
        }
        "DescribeTimeToLive" => {
            let t = table(st, body)?;
            Ok(json!({"TimeToLiveDescription": match &t.ttl_attribute {
                Some(a) => json!({"TimeToLiveStatus": "ENABLED", "AttributeName": a}),
                None => json!({"TimeToLiveStatus": "DISABLED"}),
            }}))
        }
        "PutItem" => put_item(st, body),
        "GetItem" => get_item(st, body),
        "UpdateItem" => update_item(st, body),
        "DeleteItem" => delete_item(st, body),
        "BatchGetItem" => batch_get(st, body),
        "BatchWriteItem" => batch_write(st, body),
        "BatchExecuteStatement" => batch_execute(st, body),
        "Scan" => scan(st, body),
        _ => Err(AwsError::ddb_unknown_operation(op)),
    }
}

fn table<'s>(st: &'s DdbState, body: &Value) -> Result<&'s Table, AwsError> {
    st.tables
        .get(req_str(body, "TableName")?)
        .ok_or_else(AwsError::ddb_not_found)
}

fn table_mut<'s>(st: &'s mut DdbState, body: &Value) -> Result<&'s mut Table, AwsError> {
    st.tables
        .get_mut(req_str(body, "TableName")?)
        .ok_or_else(AwsError::ddb_not_found)
}

fn valid_table_name(name: &str) -> bool {
    (3..=255).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn create_table(st: &mut DdbState, body: &Value) -> Result<Value, AwsError> {
    let name = req_str(body, "TableName")?;
    if !valid_table_name(name) {
        return Err(v(format!(
            "TableName must be at least 3 characters long and at most 255 characters long, and contain only a-z, A-Z, 0-9, '_', '-' and '.'; got {name:?}"
        )));
    }
    if st.tables.contains_key(name) {
        return Err(AwsError::ddb_in_use(name));
    }
    let schema = body.get("KeySchema").cloned().unwrap_or(Value::Null);
    let definitions = body
        .get("AttributeDefinitions")
        .cloned()
        .unwrap_or(Value::Null);
    let type_of = |attr: &str| -> Result<String, AwsError> {
        definitions
            .as_array()
            .and_then(|defs| {
                defs.iter()
                    .find(|d| d["AttributeName"].as_str() == Some(attr))
                    .and_then(|d| d["AttributeType"].as_str())
            })
            .filter(|t| matches!(*t, "S" | "N" | "B"))
            .map(str::to_owned)
            .ok_or_else(|| {
                v(format!(
                    "Key attribute {attr} has no S, N or B AttributeDefinition"
                ))
            })
    };
    let mut hash = None;
    let mut range = None;
    for k in schema.as_array().map(Vec::as_slice).unwrap_or_default() {
        let attr = k["AttributeName"].as_str().unwrap_or_default();
        let slot = match k["KeyType"].as_str() {
            Some("HASH") => &mut hash,
            Some("RANGE") => &mut range,
            _ => return Err(v("KeyType must be HASH or RANGE")),
        };
        if slot.is_some() {
            return Err(v("Too many key attributes of one KeyType"));
        }
        *slot = Some((attr.to_owned(), type_of(attr)?));
    }
    let hash = hash.ok_or_else(|| v("No Hash Key specified in schema."))?;
    let t = Table {
        key: TableKey { hash, range },
        schema,
        definitions,
        items: BTreeMap::new(),
        created_s: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default(),
        ttl_attribute: None,
    };
    let d = describe(name, &t);
    st.tables.insert(name.to_owned(), t);
    Ok(json!({"TableDescription": d}))
}

fn describe(name: &str, t: &Table) -> Value {
    json!({
        "TableName": name,
        "TableStatus": "ACTIVE",
        "TableArn": format!("arn:aws:dynamodb:us-east-1:000000000000:table/{name}"),
        "KeySchema": t.schema,
        "AttributeDefinitions": t.definitions,
        "ItemCount": t.items.len(),
        "TableSizeBytes": t.items.values().map(item_size).sum::<usize>(),
        "CreationDateTime": t.created_s,
        "BillingModeSummary": {"BillingMode": "PAY_PER_REQUEST"},
        "ProvisionedThroughput": {"ReadCapacityUnits": 0, "WriteCapacityUnits": 0, "NumberOfDecreasesToday": 0},
    })
}

/// Checks an AttributeValue's shape: one type tag, and a value fitting it.
fn check_value(name: &str, val: &Value, depth: u32) -> Result<(), AwsError> {
    let bad = || {
        v(format!(
            "One or more parameter values were invalid: Supplied AttributeValue has an invalid shape or value for attribute {name}"
        ))
    };
    let o = val.as_object().filter(|o| o.len() == 1).ok_or_else(bad)?;
    if depth > 32 {
        return Err(v("Nesting Levels have exceeded supported limits"));
    }
    let (t, x) = o.iter().next().ok_or_else(bad)?;
    let ok = match t.as_str() {
        "S" => x.is_string(),
        "N" => x.as_str().is_some_and(is_number),
        "B" => x.as_str().is_some_and(|b| base64_decode(b).is_ok()),
        "BOOL" => x.is_boolean(),
        "NULL" => x == &Value::Bool(true),
        "SS" | "NS" | "BS" => {
            let items: Vec<&str> = x
                .as_array()
                .and_then(|a| a.iter().map(Value::as_str).collect())
                .ok_or_else(bad)?;
            if items.is_empty() {
                return Err(v(format!(
                    "One or more parameter values were invalid: An string set  may not be empty for attribute {name}"
                )));
            }
            let unique: HashSet<&&str> = items.iter().collect();
            if unique.len() != items.len() {
                return Err(v(format!(
                    "One or more parameter values were invalid: Input collection contains duplicates for attribute {name}"
                )));
            }
            match t.as_str() {
                "NS" => items.iter().all(|s| is_number(s)),
                "BS" => items.iter().all(|s| base64_decode(s).is_ok()),
                _ => true,
            }
        }
        "L" => {
            for e in x.as_array().ok_or_else(bad)? {
                check_value(name, e, depth + 1)?;
            }
            true
        }
        "M" => {
            for (k, e) in x.as_object().ok_or_else(bad)? {
                check_value(k, e, depth + 1)?;
            }
            true
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(bad())
    }
}

fn value_size(val: &Value) -> usize {
    let Some((t, x)) = val.as_object().and_then(|o| o.iter().next()) else {
        return 0;
    };
    match t.as_str() {
        "S" => x.as_str().map_or(0, str::len),
        "N" => x.as_str().map_or(0, |n| n.len().div_ceil(2) + 1),
        "B" => x.as_str().map_or(0, |b| b.len() * 3 / 4),
        "SS" | "NS" | "BS" => x.as_array().map_or(0, |a| {
            a.iter().map(|s| s.as_str().map_or(0, str::len)).sum()
        }),
        "L" => {
            3 + x
                .as_array()
                .map_or(0, |a| a.iter().map(|e| 1 + value_size(e)).sum())
        }
        "M" => {
            3 + x.as_object().map_or(0, |m| {
                m.iter().map(|(k, e)| 1 + k.len() + value_size(e)).sum()
            })
        }
        _ => 1,
    }
}

/// The item's size as DynamoDB bills it (names plus values; close, not byte-exact for numbers).
fn item_size(item: &Item) -> usize {
    item.iter().map(|(k, val)| k.len() + value_size(val)).sum()
}

fn check_item(t: &Table, item: &Item) -> Result<(), AwsError> {
    for (k, val) in item {
        check_value(k, val, 0)?;
    }
    key_of(t, item, false)?;
    if item_size(item) > MAX_ITEM_BYTES {
        return Err(v("Item size has exceeded the maximum allowed size"));
    }
    Ok(())
}

/// The canonical key string of an item or key map. With `exact`, only key attributes may appear.
fn key_of(t: &Table, m: &Item, exact: bool) -> Result<String, AwsError> {
    let mut parts = Vec::new();
    let attrs = std::iter::once(&t.key.hash).chain(t.key.range.as_ref());
    for (name, ty) in attrs {
        let val = m.get(name).ok_or_else(|| {
            v(if exact {
                "The provided key element does not match the schema".to_owned()
            } else {
                format!(
                    "One or more parameter values were invalid: Missing the key {name} in the item"
                )
            })
        })?;
        if av_type(val) != ty {
            return Err(v(format!(
                "One or more parameter values were invalid: Type mismatch for key {name} expected: {ty} actual: {}",
                av_type(val)
            )));
        }
        let raw = val[ty.as_str()].as_str().unwrap_or_default();
        if raw.is_empty() {
            return Err(v(format!(
                "One or more parameter values are not valid. The AttributeValue for a key attribute cannot contain an empty string value. Key: {name}"
            )));
        }
        let canon = if ty == "N" {
            expr::normalize_number(raw).ok_or_else(|| {
                v(format!(
                    "The parameter cannot be converted to a numeric value: {raw}"
                ))
            })?
        } else {
            raw.to_owned()
        };
        parts.push(format!("{ty}:{}:{canon}", canon.len()));
    }
    let key_count = 1 + usize::from(t.key.range.is_some());
    if exact && m.len() != key_count {
        return Err(v("The provided key element does not match the schema"));
    }
    Ok(parts.join("|"))
}

fn key_map(t: &Table, item: &Item) -> Item {
    std::iter::once(&t.key.hash)
        .chain(t.key.range.as_ref())
        .filter_map(|(n, _)| item.get(n).map(|val| (n.clone(), val.clone())))
        .collect()
}

/// The request's placeholders, expressions parsed; checks they are all used.
struct Exprs {
    condition: Option<expr::Cond>,
    update: Option<expr::Update>,
    projection: Option<Vec<String>>,
    filter: Option<expr::Cond>,
}

fn parse_exprs(body: &Value) -> Result<Exprs, AwsError> {
    let names = opt_map(body, "ExpressionAttributeNames")?;
    let values = opt_map(body, "ExpressionAttributeValues")?;
    if let Some(vals) = values {
        for (k, val) in vals {
            check_value(k, val, 0)?;
        }
    }
    let mut ctx = ExprContext::new(names, values);
    let wrap = |e: expr::ExprError| v(e.0);
    let condition = opt_str(body, "ConditionExpression")
        .map(|s| ctx.condition(s))
        .transpose()
        .map_err(wrap)?;
    let update = opt_str(body, "UpdateExpression")
        .map(|s| ctx.update(s))
        .transpose()
        .map_err(wrap)?;
    let projection = opt_str(body, "ProjectionExpression")
        .map(|s| ctx.projection(s))
        .transpose()
        .map_err(wrap)?;
    let filter = opt_str(body, "FilterExpression")
        .map(|s| {
            ctx.condition(s).map_err(|e| {
                expr::ExprError(e.0.replace("ConditionExpression", "FilterExpression"))
            })
        })
        .transpose()
        .map_err(wrap)?;
    ctx.finish().map_err(wrap)?;
    Ok(Exprs {
        condition,
        update,
        projection,
        filter,
    })
}

fn project(item: &Item, projection: Option<&Vec<String>>) -> Item {
    match projection {
        None => item.clone(),
        Some(p) => item
            .iter()
            .filter(|(k, _)| p.contains(k))
            .map(|(k, val)| (k.clone(), val.clone()))
            .collect(),
    }
}

/// Capacity units: writes per started 1 KB, reads per started 4 KB (half if eventually consistent).
fn write_units(size: usize) -> f64 {
    size.div_ceil(1024).max(1) as f64
}

fn read_units(size: usize, consistent: bool) -> f64 {
    let u = size.div_ceil(4096).max(1) as f64;
    if consistent {
        u
    } else {
        u / 2.0
    }
}

fn capacity(body: &Value, table: &str, read: f64, write: f64) -> Option<Value> {
    let mode = opt_str(body, "ReturnConsumedCapacity").unwrap_or("NONE");
    if mode == "NONE" {
        return None;
    }
    let mut c = json!({"TableName": table, "CapacityUnits": read + write});
    if read > 0.0 {
        c["ReadCapacityUnits"] = json!(read);
    }
    if write > 0.0 {
        c["WriteCapacityUnits"] = json!(write);
    }
    if mode == "INDEXES" {
        c["Table"] = json!({"CapacityUnits": read + write});
    }
    Some(c)
}

fn with_capacity(mut out: Value, cap: Option<Value>) -> Value {
    if let (Some(c), Some(o)) = (cap, out.as_object_mut()) {
        o.insert("ConsumedCapacity".into(), c);
    }
    out
}

fn return_values<'a>(body: &'a Value, allowed: &[&str]) -> Result<&'a str, AwsError> {
    let rv = opt_str(body, "ReturnValues").unwrap_or("NONE");
    if allowed.contains(&rv) {
        Ok(rv)
    } else {
        Err(v(format!(
            "ReturnValues can only be {} on this operation",
            allowed.join(", ")
        )))
    }
}

/// Fails with `ConditionalCheckFailedException` (carrying the old item if asked) when the
/// condition does not hold on `old`.
fn check_condition(
    body: &Value,
    cond: Option<&expr::Cond>,
    old: Option<&Item>,
) -> Result<(), AwsError> {
    let Some(c) = cond else {
        return Ok(());
    };
    let empty = Item::new();
    if expr::eval(c, old.unwrap_or(&empty)) {
        return Ok(());
    }
    let all_old = opt_str(body, "ReturnValuesOnConditionCheckFailure") == Some("ALL_OLD");
    Err(AwsError::ddb_condition_failed(
        old.filter(|_| all_old).cloned().map(Value::Object),
    ))
}

fn put_item(st: &mut DdbState, body: &Value) -> Result<Value, AwsError> {
    let name = req_str(body, "TableName")?.to_owned();
    let rv = return_values(body, &["NONE", "ALL_OLD"])?;
    let item = req_map(body, "Item")?.clone();
    let ex = parse_exprs(body)?;
    if ex.update.is_some() || ex.projection.is_some() || ex.filter.is_some() {
        return Err(v("PutItem takes only a ConditionExpression"));
    }
    let t = table_mut(st, body)?;
    check_item(t, &item)?;
    let key = key_of(t, &item, false)?;
    let old = t.items.get(&key);
    check_condition(body, ex.condition.as_ref(), old)?;
    let units = write_units(item_size(&item).max(old.map_or(0, item_size)));
    let old = t.items.insert(key, item);
    let mut out = json!({});
    if let (Some(o), "ALL_OLD") = (old, rv) {
        out["Attributes"] = Value::Object(o);
    }
    Ok(with_capacity(out, capacity(body, &name, 0.0, units)))
}

fn get_item(st: &mut DdbState, body: &Value) -> Result<Value, AwsError> {
    let name = req_str(body, "TableName")?.to_owned();
    let ex = parse_exprs(body)?;
    if ex.condition.is_some() || ex.update.is_some() || ex.filter.is_some() {
        return Err(v("GetItem takes only a ProjectionExpression"));
    }
    let t = table(st, body)?;
    let key = key_of(t, req_map(body, "Key")?, true)?;
    let consistent = body["ConsistentRead"].as_bool().unwrap_or(false);
    let found = t.items.get(&key);
    let cap = capacity(
        body,
        &name,
        read_units(found.map_or(0, item_size), consistent),
        0.0,
    );
    let mut out = json!({});
    if let Some(i) = found {
        out["Item"] = Value::Object(project(i, ex.projection.as_ref()));
    }
    Ok(with_capacity(out, cap))
}

fn update_item(st: &mut DdbState, body: &Value) -> Result<Value, AwsError> {
    let name = req_str(body, "TableName")?.to_owned();
    let rv = return_values(
        body,
        &["NONE", "ALL_OLD", "ALL_NEW", "UPDATED_OLD", "UPDATED_NEW"],
    )?;
    let key_in = req_map(body, "Key")?.clone();
    let ex = parse_exprs(body)?;
    if ex.projection.is_some() || ex.filter.is_some() {
        return Err(v(
            "UpdateItem takes an UpdateExpression and a ConditionExpression only",
        ));
    }
    let t = table_mut(st, body)?;
    let key = key_of(t, &key_in, true)?;
    let update = ex.update.unwrap_or_default();
    let key_names: Vec<&String> = key_in.keys().collect();
    if let Some(p) = update
        .set
        .iter()
        .map(|(p, _)| p)
        .chain(&update.remove)
        .find(|p| key_names.contains(p))
    {
        return Err(v(format!(
            "One or more parameter values were invalid: Cannot update attribute {p}. This attribute is part of the key"
        )));
    }
    let old = t.items.get(&key);
    check_condition(body, ex.condition.as_ref(), old)?;
    let base = old.cloned().unwrap_or_else(|| key_in.clone());
    let new = expr::apply(&update, &base).map_err(|e| v(e.0))?;
    for (k, val) in &new {
        check_value(k, val, 0)?;
    }
    if item_size(&new) > MAX_ITEM_BYTES {
        return Err(v(
            "Item size to update has exceeded the maximum allowed size",
        ));
    }
    let units = write_units(item_size(&new).max(old.map_or(0, item_size)));
    let touched: Vec<&String> = update
        .set
        .iter()
        .map(|(p, _)| p)
        .chain(&update.remove)
        .collect();
    let pick = |i: &Item| -> Item {
        i.iter()
            .filter(|(k, _)| touched.contains(k))
            .map(|(k, val)| (k.clone(), val.clone()))
            .collect()
    };
    let attributes = match rv {
        "ALL_OLD" => old.cloned(),
        "ALL_NEW" => Some(new.clone()),
        "UPDATED_OLD" => old.map(pick),
        "UPDATED_NEW" => Some(pick(&new)),
        _ => None,
    };
    t.items.insert(key, new);
    let mut out = json!({});
    if let Some(a) = attributes.filter(|a| !a.is_empty()) {
        out["Attributes"] = Value::Object(a);
    }
    Ok(with_capacity(out, capacity(body, &name, 0.0, units)))
}

fn delete_item(st: &mut DdbState, body: &Value) -> Result<Value, AwsError> {
    let name = req_str(body, "TableName")?.to_owned();
    let rv = return_values(body, &["NONE", "ALL_OLD"])?;
    let ex = parse_exprs(body)?;
    if ex.update.is_some() || ex.projection.is_some() || ex.filter.is_some() {
        return Err(v("DeleteItem takes only a ConditionExpression"));
    }
    let t = table_mut(st, body)?;
    let key = key_of(t, req_map(body, "Key")?, true)?;
    check_condition(body, ex.condition.as_ref(), t.items.get(&key))?;
    let old = t.items.remove(&key);
    let units = write_units(old.as_ref().map_or(0, item_size));
    let mut out = json!({});
    if let (Some(o), "ALL_OLD") = (old, rv) {
        out["Attributes"] = Value::Object(o);
    }
    Ok(with_capacity(out, capacity(body, &name, 0.0, units)))
}

fn capacity_list(body: &Value, per_table: BTreeMap<String, (f64, f64)>) -> Option<Value> {
    let list: Vec<Value> = per_table
        .into_iter()
        .filter_map(|(t, (r, w))| capacity(body, &t, r, w))
        .collect();
    (opt_str(body, "ReturnConsumedCapacity").unwrap_or("NONE") != "NONE")
        .then_some(Value::Array(list))
}

fn batch_get(st: &mut DdbState, body: &Value) -> Result<Value, AwsError> {
    let requests = req_map(body, "RequestItems")?;
    let total: usize = requests
        .values()
        .map(|r| r["Keys"].as_array().map_or(0, Vec::len))
        .sum();
    if total > MAX_BATCH_GET {
        return Err(v("Too many items requested for the BatchGetItem call"));
    }
    let mut responses = Map::new();
    let mut used = BTreeMap::new();
    for (name, r) in requests {
        let t = st.tables.get(name).ok_or_else(AwsError::ddb_not_found)?;
        let ex = parse_exprs(r)?;
        let consistent = r["ConsistentRead"].as_bool().unwrap_or(false);
        let keys = r["Keys"]
            .as_array()
            .filter(|k| !k.is_empty())
            .ok_or_else(|| v("Keys must not be empty"))?;
        let mut seen = HashSet::new();
        let mut found = Vec::new();
        let mut units = 0.0;
        for k in keys {
            let k = k.as_object().ok_or_else(|| v("A key must be a map"))?;
            let key = key_of(t, k, true)?;
            if !seen.insert(key.clone()) {
                return Err(v("Provided list of item keys contains duplicates"));
            }
            if let Some(i) = t.items.get(&key) {
                units += read_units(item_size(i), consistent);
                found.push(Value::Object(project(i, ex.projection.as_ref())));
            }
        }
        used.insert(name.clone(), (units, 0.0));
        responses.insert(name.clone(), Value::Array(found));
    }
    let out = json!({"Responses": responses, "UnprocessedKeys": {}});
    Ok(with_capacity(out, capacity_list(body, used)))
}

/// At most this many statements per `BatchExecuteStatement`.
const MAX_BATCH_STATEMENTS: usize = 25;

/// `BatchExecuteStatement` for the one statement shape the relay writes: a parameterised
/// PartiQL `INSERT INTO "<table>" VALUE {'a': ?, ...}`. Each statement succeeds or fails on
/// its own; an existing item fails it with `DuplicateItem` (with the item when
/// `ReturnValuesOnConditionCheckFailure` is `ALL_OLD`), as DynamoDB does. Other statements
/// fail with `ValidationError`, naming what this stand-in supports.
fn batch_execute(st: &mut DdbState, body: &Value) -> Result<Value, AwsError> {
    let statements = body
        .get("Statements")
        .and_then(Value::as_array)
        .ok_or_else(|| v("1 validation error detected: Value null at 'statements' failed to satisfy constraint: Member must not be null"))?;
    if statements.is_empty() || statements.len() > MAX_BATCH_STATEMENTS {
        return Err(v(format!(
            "1 validation error detected: Value at 'statements' failed to satisfy constraint: Member must have length less than or equal to 25, Member must have length greater than or equal to 1; got {}",
            statements.len()
        )));
    }
    let mut responses = Vec::with_capacity(statements.len());
    let mut used: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for stmt in statements {
        let err = |code: &str, msg: String| json!({"Error": {"Code": code, "Message": msg}});
        let (name, item) = match parse_insert(stmt) {
            Ok(x) => x,
            Err(msg) => {
                responses.push(err("ValidationError", msg));
                continue;
            }
        };
        let Some(t) = st.tables.get_mut(&name) else {
            responses.push(err(
                "ResourceNotFound",
                format!("Requested resource not found: {name}"),
            ));
            continue;
        };
        if let Err(e) = check_item(t, &item) {
            responses.push(err("ValidationError", e.message.clone()));
            continue;
        }
        let key = match key_of(t, &item, false) {
            Ok(k) => k,
            Err(e) => {
                responses.push(err("ValidationError", e.message.clone()));
                continue;
            }
        };
        let units = write_units(item_size(&item));
        used.entry(name.clone()).or_default().1 += units;
        match t.items.get(&key) {
            Some(old) => {
                let mut e = err(
                    "DuplicateItem",
                    "Duplicate primary key exists in table".to_owned(),
                );
                if opt_str(stmt, "ReturnValuesOnConditionCheckFailure") == Some("ALL_OLD") {
                    e["Error"]["Item"] = Value::Object(old.clone());
                }
                responses.push(e);
            }
            None => {
                t.items.insert(key, item);
                responses.push(json!({"TableName": name}));
            }
        }
    }
    let out = json!({"Responses": responses});
    let out = match capacity_list(body, used) {
        Some(c) => {
            let mut out = out;
            out["ConsumedCapacity"] = c;
            out
        }
        None => out,
    };
    Ok(out)
}

/// Reads `INSERT INTO "<table>" VALUE {'a': ?, 'b': ?}` and its parameters into an item.
fn parse_insert(stmt: &Value) -> Result<(String, Item), String> {
    let text = opt_str(stmt, "Statement").ok_or("Statement must not be null")?;
    let unsupported = || {
        format!(
            "fake-aws supports only INSERT INTO \"<table>\" VALUE {{'name': ?, ...}}; got {text:?}"
        )
    };
    let rest = text.trim();
    let rest = strip_keyword(rest, "INSERT")
        .and_then(|r| strip_keyword(r, "INTO"))
        .ok_or_else(unsupported)?;
    let (name, rest) = match rest.strip_prefix('"') {
        Some(r) => r.split_once('"').ok_or_else(unsupported)?,
        None => rest
            .split_once(char::is_whitespace)
            .ok_or_else(unsupported)?,
    };
    let rest = strip_keyword(rest.trim_start(), "VALUE").ok_or_else(unsupported)?;
    let inner = rest
        .trim()
        .strip_prefix('{')
        .and_then(|r| r.strip_suffix('}'))
        .ok_or_else(unsupported)?;
    let params = stmt
        .get("Parameters")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut item = Item::new();
    let mut next = params.into_iter();
    for pair in inner.split(',') {
        let (k, val) = pair.split_once(':').ok_or_else(unsupported)?;
        let k = k
            .trim()
            .strip_prefix('\'')
            .and_then(|k| k.strip_suffix('\''))
            .ok_or_else(unsupported)?;
        if val.trim() != "?" {
            return Err(unsupported());
        }
        let p = next
            .next()
            .ok_or("Number of parameters in request and statement don't match.")?;
        item.insert(k.to_owned(), p);
    }
    if next.next().is_some() {
        return Err("Number of parameters in request and statement don't match.".into());
    }
    Ok((name.to_owned(), item))
}

fn strip_keyword<'a>(s: &'a str, kw: &str) -> Option<&'a str> {
    let head = s.get(..kw.len())?;
    let rest = &s[kw.len()..];
    (head.eq_ignore_ascii_case(kw) && rest.starts_with(char::is_whitespace))
        .then(|| rest.trim_start())
}

fn batch_write(st: &mut DdbState, body: &Value) -> Result<Value, AwsError> {
    let requests = req_map(body, "RequestItems")?;
    let total: usize = requests
        .values()
        .map(|r| r.as_array().map_or(0, Vec::len))
        .sum();
    if total == 0 || total > MAX_BATCH_WRITE {
        return Err(v(format!(
            "1 validation error detected: Value at 'requestItems' failed to satisfy constraint: Map value must satisfy constraint: [Member must have length less than or equal to 25, Member must have length greater than or equal to 1]; got {total}"
        )));
    }
    // Validate everything first: a bad request writes nothing.
    let mut plan: Vec<(String, String, Option<Item>)> = Vec::new();
    for (name, list) in requests {
        let t = st.tables.get(name).ok_or_else(AwsError::ddb_not_found)?;
        let mut seen = HashSet::new();
        for w in list.as_array().map(Vec::as_slice).unwrap_or_default() {
            let (key, item) = match (w.get("PutRequest"), w.get("DeleteRequest")) {
                (Some(p), None) => {
                    let item = p["Item"]
                        .as_object()
                        .ok_or_else(|| v("PutRequest needs an Item"))?;
                    check_item(t, item)?;
                    (key_of(t, item, false)?, Some(item.clone()))
                }
                (None, Some(d)) => {
                    let k = d["Key"]
                        .as_object()
                        .ok_or_else(|| v("DeleteRequest needs a Key"))?;
                    (key_of(t, k, true)?, None)
                }
                _ => {
                    return Err(v(
                        "Each WriteRequest needs exactly one of PutRequest or DeleteRequest",
                    ))
                }
            };
            if !seen.insert(key.clone()) {
                return Err(v("Provided list of item keys contains duplicates"));
            }
            plan.push((name.clone(), key, item));
        }
    }
    let mut used: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for (name, key, item) in plan {
        let Some(t) = st.tables.get_mut(&name) else {
            continue;
        };
        let size = match item {
            Some(i) => {
                let s = item_size(&i);
                let old = t.items.insert(key, i);
                s.max(old.as_ref().map_or(0, item_size))
            }
            None => t.items.remove(&key).as_ref().map_or(0, item_size),
        };
        used.entry(name).or_default().1 += write_units(size);
    }
    let out = json!({"UnprocessedItems": {}});
    Ok(with_capacity(out, capacity_list(body, used)))
}

fn scan(st: &mut DdbState, body: &Value) -> Result<Value, AwsError> {
    let name = req_str(body, "TableName")?.to_owned();
    let ex = parse_exprs(body)?;
    if ex.condition.is_some() || ex.update.is_some() {
        return Err(v(
            "Scan takes a FilterExpression and a ProjectionExpression only",
        ));
    }
    let t = table(st, body)?;
    let limit = body["Limit"].as_u64().map_or(usize::MAX, |l| l as usize);
    let start = match opt_map(body, "ExclusiveStartKey")? {
        Some(k) => Some(key_of(t, k, true)?),
        None => None,
    };
    let range = t.items.range::<String, _>((
        start
            .as_ref()
            .map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded),
        std::ops::Bound::Unbounded,
    ));
    let (mut items, mut scanned, mut last, mut size) = (Vec::new(), 0usize, None, 0usize);
    for (_, i) in range.take(limit) {
        scanned += 1;
        size += item_size(i);
        last = Some(key_map(t, i));
        if ex.filter.as_ref().is_none_or(|f| expr::eval(f, i)) {
            items.push(Value::Object(project(i, ex.projection.as_ref())));
        }
    }
    let more = start.as_ref().map_or(t.items.len(), |s| {
        t.items
            .range::<String, _>((std::ops::Bound::Excluded(s), std::ops::Bound::Unbounded))
            .count()
    }) > scanned;
    let consistent = body["ConsistentRead"].as_bool().unwrap_or(false);
    let mut out = json!({"Items": items, "Count": items.len(), "ScannedCount": scanned});
    if let (true, Some(k)) = (more, last) {
        out["LastEvaluatedKey"] = Value::Object(k);
    }
    Ok(with_capacity(
        out,
        capacity(body, &name, read_units(size, consistent), 0.0),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> DdbState {
        let mut st = DdbState::default();
        call(
            &mut st,
            "CreateTable",
            &json!({"TableName": "dedup", "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
                    "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}]}),
        )
        .unwrap();
        st
    }

    fn put(st: &mut DdbState, pk: &str, status: &str) -> Result<Value, AwsError> {
        call(
            st,
            "PutItem",
            &json!({"TableName": "dedup", "Item": {"pk": {"S": pk}, "status": {"S": status}},
                    "ConditionExpression": "attribute_not_exists(pk)",
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                    "ReturnConsumedCapacity": "TOTAL"}),
        )
    }

    /// A conditional put succeeds once, then fails carrying the old item.
    #[test]
    fn conditional_put_claims_once() {
        let mut st = state();
        let ok = put(&mut st, "1", "claimed").unwrap();
        assert_eq!(ok["ConsumedCapacity"]["CapacityUnits"], json!(1.0));
        let err = put(&mut st, "1", "other").unwrap_err();
        assert_eq!(err.shape, "ConditionalCheckFailedException");
        let (_, old) = err.extra.unwrap();
        assert_eq!(old["status"]["S"], "claimed");
    }

    /// A batch write of 26 requests is refused whole, as DynamoDB does (moto accepts it).
    #[test]
    fn batch_write_over_25_is_refused() {
        let mut st = state();
        let reqs: Vec<Value> = (0..26)
            .map(|i| json!({"PutRequest": {"Item": {"pk": {"S": i.to_string()}}}}))
            .collect();
        let err = call(
            &mut st,
            "BatchWriteItem",
            &json!({"RequestItems": {"dedup": reqs}}),
        )
        .unwrap_err();
        assert_eq!(err.shape, "ValidationException");
        assert!(st.items("dedup").unwrap().is_empty());
    }

    /// Duplicate keys inside one batch write are refused.
    #[test]
    fn batch_write_with_duplicate_keys_is_refused() {
        let mut st = state();
        let reqs = json!([{"PutRequest": {"Item": {"pk": {"S": "a"}}}},
                          {"DeleteRequest": {"Key": {"pk": {"S": "a"}}}}]);
        let err = call(
            &mut st,
            "BatchWriteItem",
            &json!({"RequestItems": {"dedup": reqs}}),
        )
        .unwrap_err();
        assert!(err.message.contains("duplicates"), "{err:?}");
    }

    /// Table names shorter than 3 characters are refused (moto accepts 1).
    #[test]
    fn short_table_names_are_refused() {
        let mut st = DdbState::default();
        let err = call(
            &mut st,
            "CreateTable",
            &json!({"TableName": "x", "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
                    "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}]}),
        )
        .unwrap_err();
        assert_eq!(err.shape, "ValidationException");
    }

    /// An update creates the item when absent, and cannot touch the key.
    #[test]
    fn update_creates_and_protects_the_key() {
        let mut st = state();
        let out = call(
            &mut st,
            "UpdateItem",
            &json!({"TableName": "dedup", "Key": {"pk": {"S": "k"}},
                    "UpdateExpression": "SET #s = :d", "ExpressionAttributeNames": {"#s": "status"},
                    "ExpressionAttributeValues": {":d": {"S": "done"}}, "ReturnValues": "ALL_NEW"}),
        )
        .unwrap();
        assert_eq!(
            out["Attributes"],
            json!({"pk": {"S": "k"}, "status": {"S": "done"}})
        );
        let err = call(
            &mut st,
            "UpdateItem",
            &json!({"TableName": "dedup", "Key": {"pk": {"S": "k"}},
                    "UpdateExpression": "SET pk = :d", "ExpressionAttributeValues": {":d": {"S": "x"}}}),
        )
        .unwrap_err();
        assert!(err.message.contains("part of the key"), "{err:?}");
    }

    /// A conditional delete removes only when the condition holds.
    #[test]
    fn conditional_delete_checks_owner() {
        let mut st = state();
        put(&mut st, "d", "claimed").unwrap();
        let del = |st: &mut DdbState, owner: &str| {
            call(
                st,
                "DeleteItem",
                &json!({"TableName": "dedup", "Key": {"pk": {"S": "d"}},
                        "ConditionExpression": "#s = :s", "ExpressionAttributeNames": {"#s": "status"},
                        "ExpressionAttributeValues": {":s": {"S": owner}}}),
            )
        };
        assert!(del(&mut st, "done").is_err());
        assert!(del(&mut st, "claimed").is_ok());
        assert!(st.items("dedup").unwrap().is_empty());
    }

    /// A key of the wrong type, or with extra attributes, does not match the schema.
    #[test]
    fn keys_must_match_the_schema() {
        let mut st = state();
        for key in [
            json!({"pk": {"N": "1"}}),
            json!({"pk": {"S": "1"}, "x": {"S": "y"}}),
            json!({"pk": {"S": ""}}),
        ] {
            let err = call(
                &mut st,
                "GetItem",
                &json!({"TableName": "dedup", "Key": key}),
            )
            .unwrap_err();
            assert_eq!(err.shape, "ValidationException", "{key}");
        }
    }

    /// Scan pages through items with Limit and LastEvaluatedKey.
    #[test]
    fn scan_pages_with_limit() {
        let mut st = state();
        for i in 0..5 {
            put(&mut st, &i.to_string(), "done").unwrap();
        }
        let mut seen = 0;
        let mut start = Value::Null;
        loop {
            let mut req = json!({"TableName": "dedup", "Limit": 2});
            if !start.is_null() {
                req["ExclusiveStartKey"] = start.clone();
            }
            let out = call(&mut st, "Scan", &req).unwrap();
            seen += out["Count"].as_u64().unwrap();
            match out.get("LastEvaluatedKey") {
                Some(k) => start = k.clone(),
                None => break,
            }
        }
        assert_eq!(seen, 5);
    }

    /// The legacy `Expected` parameter is refused rather than ignored.
    #[test]
    fn legacy_parameters_are_refused() {
        let mut st = state();
        let err = call(
            &mut st,
            "PutItem",
            &json!({"TableName": "dedup", "Item": {"pk": {"S": "1"}}, "Expected": {"pk": {"Exists": false}}}),
        )
        .unwrap_err();
        assert!(err.message.contains("Expected"), "{err:?}");
    }
}
