//! Looking into a dedup table from outside, for the tests and the chaos harness: what a
//! crash would strand.

use std::collections::HashSet;

/// Claim items whose batch record is still unsettled (the batch is at work, or died): what a
/// SIGKILL now would leave to be taken over after the lease. Scans the whole table.
pub async fn live_claims(ddb: &aws_sdk_dynamodb::Client, table: &str) -> Result<u64, String> {
    live_claim_ids(ddb, table).await.map(|ids| ids.len() as u64)
}

/// The ids of [`live_claims`]: what the batches at work (or dead) hold now. Items whose key is
/// not a message id are left out.
pub async fn live_claim_ids(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
) -> Result<HashSet<u64>, String> {
    let mut unsettled: HashSet<String> = HashSet::new();
    let mut claimed_by: Vec<(String, String)> = Vec::new();
    let mut start = None;
    loop {
        let out = ddb
            .scan()
            .table_name(table)
            .consistent_read(true)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| format!("Scan {table}: {e:?}"))?;
        for item in out.items() {
            let s = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
            match (s("pk"), s("b")) {
                (Some(pk), _) if pk.starts_with("b#") && !item.contains_key("settled") => {
                    unsettled.insert(pk[2..].to_owned());
                }
                (Some(pk), _) if pk.starts_with("b#") => {}
                (Some(pk), Some(b)) => claimed_by.push((pk, b)),
                _ => {}
            }
        }
        start = out.last_evaluated_key().cloned();
        if start.is_none() {
            break;
        }
    }
    Ok(claimed_by
        .into_iter()
        .filter(|(_, b)| unsettled.contains(b))
        .filter_map(|(pk, _)| pk.parse().ok())
        .collect())
}
