//! Leases compare the wall clocks of different hosts, so a pass does not start on a host whose
//! clock is certainly further from DynamoDB's than `MAX_CLOCK_OFFSET_MS`, and says so; a host
//! in sync runs. The host clock is the relay's own `Clock` (manual here: the system clock
//! cannot be changed), the one its leases read; the offset comes from the `Date` of moto's
//! answers, through the relay built exactly as the binaries build it.

mod support;

use std::time::{Duration, SystemTime};

use support::{sim, Env};
use tmc_relay::invocation::Overrides;
use tmc_relay::relay::lease::Clock;
use tmc_relay::relay::{RelaySettings, Report, StopReason};
use tmc_relay::top::clock::epoch_millis;
use tmc_relay::wiring::App;

/// The relay on a host whose clock stands `ms` off the system clock (ahead when positive),
/// set once the relay is built, right before its pass.
async fn skewed_app(env: &Env, gateway: &str, extra: &[(&str, &str)], ms: i64) -> App {
    let clock = Clock::manual(0);
    let app = app(env, gateway, extra, clock.clone()).await;
    let now = i64::try_from(epoch_millis(SystemTime::now())).unwrap();
    clock.advance(Duration::from_millis(u64::try_from(now + ms).unwrap()));
    app
}

async fn app(env: &Env, gateway: &str, extra: &[(&str, &str)], clock: Clock) -> App {
    let settings = RelaySettings {
        clock,
        ..RelaySettings::default()
    };
    env.app_via(gateway, &env.endpoint, extra, settings).await
}

async fn pass(app: &App) -> Report {
    let ov = Overrides {
        max_seconds: Some(60),
        ..Overrides::default()
    };
    app.run(&ov, None, Default::default()).await
}

/// The offset the error names: "the host clock is 7.4 s (± ...".
fn named_offset(error: &str) -> f64 {
    let rest = error.strip_prefix("the host clock is ").expect(error);
    rest.split(' ').next().unwrap().parse().expect(error)
}

/// Items in the dedup table: a refused pass writes no lease.
async fn items(env: &Env) -> i32 {
    env.ddb
        .scan()
        .table_name(&env.table)
        .send()
        .await
        .unwrap()
        .count()
}

/// A host 7.4 s ahead is refused before anything is consumed or written, with the figure,
/// the limit and what to do; one cheap request measured it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_clock_ahead_is_refused_before_anything_is_consumed() {
    let sim = sim(Duration::from_secs(300)).await;
    let env = Env::new(false).await;
    sim.generate(None, 5);
    let app = skewed_app(&env, &sim.gateway_url(), &[], 7_400).await;
    let report = pass(&app).await;

    assert_eq!(report.stop_reason, StopReason::Fatal, "{report:?}");
    let error = report.error.clone().unwrap();
    eprintln!("refused: {error}");
    assert!(
        error.contains("s) ahead of DynamoDB's (limit 2 s): leases are compared across hosts; sync the clock (NTP) or raise MAX_CLOCK_OFFSET_MS"),
        "{error}"
    );
    // 7.4 s when the test set it, less the moments since (the manual clock stands still),
    // within the measurement's uncertainty (0.5 s and half the round trip).
    let named = named_offset(&error);
    assert!((5.0..=8.0).contains(&named), "{error}");
    assert_eq!(sim.state().consume_calls, 0);
    assert_eq!(items(&env).await, 0);
    assert_eq!(report.usage.dynamodb_requests, 1, "one probe");
}

/// A host 7.4 s behind is refused the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_clock_behind_is_refused() {
    let sim = sim(Duration::from_secs(300)).await;
    let env = Env::new(false).await;
    sim.generate(None, 5);
    let app = skewed_app(&env, &sim.gateway_url(), &[], -7_400).await;
    let report = pass(&app).await;

    assert_eq!(report.stop_reason, StopReason::Fatal, "{report:?}");
    let error = report.error.clone().unwrap();
    assert!(
        error.contains("s) behind DynamoDB's (limit 2 s)"),
        "{error}"
    );
    let named = named_offset(&error);
    assert!((6.8..=10.0).contains(&named), "{error}");
    assert_eq!(sim.state().consume_calls, 0);
}

/// A host in sync relays as ever. The probe is made once: the second pass goes by the
/// answers of the first (an empty drain then makes no DynamoDB request at all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_in_sync_runs_and_probes_once() {
    let sim = sim(Duration::from_secs(300)).await;
    let env = Env::new(false).await;
    sim.generate(None, 5);
    let app = app(&env, &sim.gateway_url(), &[], Clock::system()).await;
    let first = pass(&app).await;
    assert_eq!(first.stop_reason, StopReason::Empty, "{first:?}");
    assert_eq!((first.counts.enqueued, first.counts.confirmed), (5, 5));

    let second = pass(&app).await;
    assert_eq!(second.stop_reason, StopReason::Empty, "{second:?}");
    assert_eq!(second.counts.consumed, 0);
    assert_eq!(second.usage.dynamodb_requests, 0, "{:?}", second.usage);
}

/// A larger MAX_CLOCK_OFFSET_MS lets the same skewed host run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raised_limit_lets_a_skewed_host_run() {
    let sim = sim(Duration::from_secs(300)).await;
    let env = Env::new(false).await;
    sim.generate(None, 5);
    let app = skewed_app(
        &env,
        &sim.gateway_url(),
        &[("MAX_CLOCK_OFFSET_MS", "10000")],
        7_400,
    )
    .await;
    let report = pass(&app).await;
    assert_eq!(report.stop_reason, StopReason::Empty, "{report:?}");
    assert_eq!((report.counts.enqueued, report.counts.confirmed), (5, 5));
}
