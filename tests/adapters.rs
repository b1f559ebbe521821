//! The production DynamoDB adapter (`DynamoStore`) under the lease protocol, on real wire
//! protocols: the fake-aws stand-in (for lost answers, which no emulator produces), ministack
//! (which models PartiQL writes, as DynamoDB does) and moto (which does not: the probe must
//! find that out and claims fall back to conditional `PutItem`).

mod support;

use std::collections::HashMap;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_sqs::config::Credentials;
use tokio::time::Instant;

use fake_aws::{FakeAws, FakeAwsConfig, OpRules, Rules};
use tmc_relay::aws::dynamo::DynamoStore;
use tmc_relay::relay::flow::{LimitConfig, Limiter};
use tmc_relay::relay::lease::{Clock, LeasePolicy, Leases};
use tmc_relay::relay::ports::{
    BatchRecord, DedupStore, InsertOutcome, Key, NewClaim, Renewal, Stored,
};

const FIRST_ID: u64 = 7_104_300_007_405_429_232;

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(30)
}

/// A lost `BatchExecuteStatement` answer followed by the SDK's retry finds the batch's own
/// claims: they come back as existing items naming this batch (ours), never another's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_insert_after_a_lost_answer_finds_its_own_claims() {
    let fake = FakeAws::start(
        "127.0.0.1:0".parse().unwrap(),
        FakeAwsConfig::memory().with_seed(7),
    )
    .await
    .unwrap();
    fake.memory()
        .unwrap()
        .create_table("dedup", &[("pk", "S")])
        .unwrap();
    fake.set_rules(Rules::none().with(
        "BatchExecuteStatement",
        OpRules {
            lost_response_rate: 0.5,
            ..OpRules::default()
        },
    ))
    .unwrap();
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("x", "x", None, None, "test"))
        .endpoint_url(fake.endpoint())
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(6)
                .with_initial_backoff(Duration::from_millis(5)),
        )
        .load()
        .await;
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), "dedup");
    let now_ms = 1_795_300_000_000u64;
    let (mut inserted, mut own, mut unknown) = (0, 0, 0);
    for chunk in 0..16u64 {
        let claims: Vec<NewClaim> = (0..25)
            .map(|i| NewClaim {
                id: FIRST_ID + chunk * 25 + i,
                batch: format!("b-{chunk}"),
                lease_until_ms: now_ms + 60_000,
                expires_at: now_ms / 1000 + 86_400,
            })
            .collect();
        match store.insert_claims(&claims, soon()).await {
            Ok(outcomes) => {
                for o in outcomes {
                    match o {
                        InsertOutcome::Inserted => inserted += 1,
                        InsertOutcome::Exists(Some(item))
                            if item.batch.as_deref() == Some(&format!("b-{chunk}")) =>
                        {
                            own += 1
                        }
                        other => panic!("a fresh id came back {other:?}"),
                    }
                }
            }
            // Every attempt's answer lost: unknown outcome, allowed.
            Err(_) => unknown += 1,
        }
    }
    let lost = fake.stats().op("BatchExecuteStatement").lost_responses;
    assert!(lost >= 4, "the rule must have lost answers ({lost})");
    assert!(
        own > 0,
        "some retries found their own first attempt's claims"
    );
    assert_eq!(inserted + own + unknown * 25, 400);
}

/// The protocol on one endpoint: claims, receipt, a redelivery's decisions, the previous
/// version's items, and the requests it took.
async fn protocol_on(endpoint: &str, models_partiql: bool) {
    let env = support::Env::on(endpoint, false).await;
    let store = DynamoStore::new(env.ddb.clone(), &env.table);
    assert_eq!(
        store.probe(soon()).await,
        models_partiql,
        "probe at {endpoint}"
    );
    let limiter = Limiter::new("dynamodb", LimitConfig::new(32));
    let policy = LeasePolicy::default();
    let clock = Clock::system();
    let leases = Leases {
        store: &store,
        limiter: &limiter,
        policy: &policy,
        clock: &clock,
    };
    let ids: Vec<u64> = (0..60).map(|i| FIRST_ID + i).collect();

    // Batch A claims 60 fresh ids: 3 requests with PartiQL, 60 without.
    let before = store.meter.requests();
    let a = leases
        .begin("a".into(), Duration::from_secs(60), soon())
        .await
        .unwrap();
    let claimed = leases.claim(&a, &ids, soon()).await;
    assert_eq!(claimed.mine.len(), 60, "{claimed:?}");
    let claim_requests = store.meter.requests() - before - 1;
    assert_eq!(claim_requests, if models_partiql { 3 } else { 60 });

    // Batch B, while A's lease is live: every id is held.
    let b = leases
        .begin("b".into(), Duration::from_secs(60), soon())
        .await
        .unwrap();
    let held = leases.claim(&b, &ids, soon()).await;
    assert_eq!(held.held.len(), 60, "{held:?}");

    // A settles: 50 accepted, 5 of unknown outcome, 5 failed for sure. A late renewal does
    // not undo the receipt.
    leases
        .settle(&a, ids[..50].to_vec(), ids[50..55].to_vec(), soon())
        .await
        .unwrap();
    assert_eq!(
        store
            .renew_batch("a", u64::MAX / 2, 0, soon())
            .await
            .unwrap(),
        Renewal::Settled
    );
    let c = leases
        .begin("c".into(), Duration::from_secs(60), soon())
        .await
        .unwrap();
    let (requests, reads) = (store.meter.requests(), store.meter.read_units());
    let mut decided = leases.claim(&c, &ids, soon()).await;
    // A redelivery costs its inserts, one consistent read of the batch record (two where the
    // endpoint does not hand the old item back: the claim items first), and its takeovers.
    let inserts = if models_partiql { 3 } else { 60 };
    let read_requests = store.meter.requests() - requests - inserts - 5;
    assert!(
        (1..=2).contains(&read_requests),
        "{read_requests} read requests for 60 redelivered messages"
    );
    let read_units = store.meter.read_units() - reads;
    assert!(
        read_units <= 60.0 + 2.0,
        "{read_units} read units for 60 redelivered messages"
    );
    decided.done.sort_unstable();
    decided.held.sort_unstable();
    decided.mine.sort_unstable();
    assert_eq!(decided.done, ids[..50].to_vec());
    assert_eq!(decided.held, ids[50..55].to_vec());
    assert_eq!(
        decided.mine,
        ids[55..].to_vec(),
        "the failed ones are taken over"
    );
    assert_eq!(decided.taken_over, 5);

    // The previous version's items keep their meaning.
    let now_ms = tmc_relay::top::clock::epoch_millis(std::time::SystemTime::now());
    let legacy = [
        (FIRST_ID + 100, "done", 0),
        (FIRST_ID + 101, "parked", 0),
        (FIRST_ID + 102, "claimed", now_ms + 600_000),
        (FIRST_ID + 103, "claimed", now_ms - 1_000),
    ];
    for (id, status, lease) in legacy {
        let mut item = HashMap::from([
            ("pk".to_owned(), AttributeValue::S(id.to_string())),
            ("status".to_owned(), AttributeValue::S(status.into())),
            (
                "expires_at".to_owned(),
                AttributeValue::N((now_ms / 1000 + 86_400).to_string()),
            ),
        ]);
        if lease > 0 {
            item.insert("lease_until".into(), AttributeValue::N(lease.to_string()));
        }
        env.ddb
            .put_item()
            .table_name(&env.table)
            .set_item(Some(item))
            .send()
            .await
            .unwrap();
    }
    let d = leases
        .begin("d".into(), Duration::from_secs(60), soon())
        .await
        .unwrap();
    let old: Vec<u64> = legacy.iter().map(|l| l.0).collect();
    let mut decided = leases.claim(&d, &old, soon()).await;
    decided.done.sort_unstable();
    assert_eq!(decided.done, vec![FIRST_ID + 100, FIRST_ID + 101]);
    assert_eq!(decided.held, vec![FIRST_ID + 102]);
    assert_eq!(decided.mine, vec![FIRST_ID + 103]);

    lease_rules(&store).await;
}

async fn record_of(store: &DynamoStore, token: &str) -> BatchRecord {
    let (found, _) = store
        .read(&[Key::Batch(token.into())], soon())
        .await
        .unwrap();
    match found.as_slice() {
        [Stored::Batch(r)] => r.clone(),
        other => panic!("record {token}: {other:?}"),
    }
}

/// The lease's conditions on the wire: a record is written only if absent, a renewal only
/// extends a live, unfenced, unsettled lease, and a fence holds only on the record as judged.
async fn lease_rules(store: &DynamoStore) {
    let now = tmc_relay::top::clock::epoch_millis(std::time::SystemTime::now());
    // A late first attempt of batch a's record never overwrites its receipt.
    let late = BatchRecord {
        token: "a".into(),
        lease_until_ms: now + 60_000,
        expires_at: now / 1000 + 86_400,
        ..BatchRecord::default()
    };
    store.put_batch(&late, soon()).await.unwrap();
    let a = record_of(store, "a").await;
    assert!(a.settled && a.accepted.len() == 50, "{a:?}");

    let e = BatchRecord {
        token: "e".into(),
        lease_until_ms: now + 60_000,
        expires_at: now / 1000 + 86_400,
        ..BatchRecord::default()
    };
    store.put_batch(&e, soon()).await.unwrap();
    let renew = |until: u64, at: u64| store.renew_batch("e", until, at, soon());
    assert_eq!(renew(now + 90_000, now).await.unwrap(), Renewal::Renewed);
    // A late attempt never shortens it.
    assert_eq!(renew(now + 80_000, now).await.unwrap(), Renewal::Renewed);
    assert_eq!(record_of(store, "e").await.lease_until_ms, now + 90_000);
    // Past its end (a host suspended for minutes) the lease is lapsed: not revived.
    assert_eq!(
        renew(now + 400_000, now + 200_000).await.unwrap(),
        Renewal::Lost
    );
    assert_eq!(record_of(store, "e").await.lease_until_ms, now + 90_000);
    // The fence holds only on the record as judged; once fenced, no renewal.
    assert!(!store.fence_batch("e", now + 1, soon()).await.unwrap());
    assert!(store.fence_batch("e", now + 90_000, soon()).await.unwrap());
    assert!(record_of(store, "e").await.fenced);
    assert_eq!(renew(now + 95_000, now).await.unwrap(), Renewal::Lost);
    // A settled record is never fenced.
    assert!(!store
        .fence_batch("a", a.lease_until_ms, soon())
        .await
        .unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_on_the_fake_aws_memory_backend() {
    let fake = FakeAws::start("127.0.0.1:0".parse().unwrap(), FakeAwsConfig::memory())
        .await
        .unwrap();
    protocol_on(&fake.endpoint(), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_on_ministack_batches_claims() {
    protocol_on(&support::ministack(), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_on_moto_falls_back_to_conditional_puts() {
    protocol_on(&support::moto(), false).await;
}
