//! The production AWS adapters (`DynamoStore`, `SqsQueue`) against the fake-aws stand-in, for
//! behaviours moto cannot produce: lost responses.

use std::time::Duration;

use tokio::time::Instant;

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_sqs::config::Credentials;
use tmc_relay::aws::dynamo::DynamoStore;
use tmc_relay::fakeaws::{FakeAws, FakeAwsConfig, OpRules, Rules};
use tmc_relay::relay::ports::{Claim, ClaimOutcome, DedupStore};

/// A lost PutItem answer followed by the SDK's retry finds the call's own claim: it is reported
/// as claimed, never as held by another pass (which would delay the message a whole lease).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_claim_after_a_lost_answer_is_still_ours() {
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
        "PutItem",
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
    let mut claimed = 0;
    for i in 0..40 {
        let id = format!("{}", 7_104_300_007_405_429_232u64 + i);
        let token = format!("claim-{i}");
        let r = store
            .claim(
                Claim {
                    id: &id,
                    owner: "pass-1",
                    token: &token,
                    lease_until_ms: now_ms + 60_000,
                    now_ms,
                    expires_at: now_ms / 1000 + 86_400,
                },
                Instant::now() + Duration::from_secs(30),
            )
            .await;
        match r {
            Ok(ClaimOutcome::Claimed) => claimed += 1,
            Ok(other) => panic!("claim of fresh id {id} came back {other:?}"),
            Err(_) => {} // every attempt's answer lost: unknown outcome, allowed
        }
    }
    let lost = fake.stats().op("PutItem").lost_responses;
    assert!(
        lost >= 10,
        "the rule must have lost answers for the test to mean anything ({lost})"
    );
    assert!(claimed >= 35, "{claimed} of 40 claimed");
}
