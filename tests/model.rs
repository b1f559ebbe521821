//! An exhaustive model check of the dedup protocol (claim, lease, receipt, takeover) with
//! stateright, calling the real `decide` for every claim: the protocol after issue 19 keeps
//! P1-P3 in every reachable state, and each old behaviour it fixes breaks P2. The model:
//! tests/model/protocol.rs. `cargo nextest run --test model --no-capture` prints the state
//! counts and the counterexamples.

#[path = "model/protocol.rs"]
mod protocol;

use std::collections::BTreeSet;
use std::time::Instant;

use protocol::{Config, Protocol, Rules};
use stateright::{Checker, HasDiscoveries, Model};

const P1: &str = "P1 confirmed only what SQS holds";
const P2: &str = "P2 no unexcused second copy";
const P3: &str = "P3 a dead holder's claims free after L + 2E";

/// The protocol's check: two message ids, a holder and a redelivery, a lease of 4 ticks,
/// clocks within 1 tick of the servers', 7 ticks of time, at most 2 faults (throttled or
/// unanswered requests, failed sends) besides a crash of either batch at any step.
const BOUNDS: Config = Config {
    ids: 2,
    batches: 2,
    lease: 4,
    skew: 1,
    horizon: 7,
    faults: 2,
    rules: Rules::NEW,
};

/// The old behaviours' checks: one id is enough to break P2 (and the search stops there).
const SMALL: Config = Config {
    ids: 1,
    horizon: 6,
    ..BOUNDS
};

/// Runs the checker to the end, or until `stop_at` has a counterexample.
fn check(cfg: Config, stop_at: Option<&'static str>) -> impl Checker<Protocol> {
    let started = Instant::now();
    let mut builder = Protocol { cfg }.checker().threads(2);
    if let Some(name) = stop_at {
        builder = builder.finish_when(HasDiscoveries::AnyOf(BTreeSet::from([name])));
    }
    let checked = builder.spawn_bfs().join();
    eprintln!(
        "{cfg:?}\n  {} states ({} distinct), depth {}, {:.1} s",
        checked.state_count(),
        checked.unique_state_count(),
        checked.max_depth(),
        started.elapsed().as_secs_f64()
    );
    checked
}

/// Asserts the checker finds a counterexample to `property` with `rules`, and prints it.
fn breaks(rules: Rules, property: &'static str) {
    let checked = check(Config { rules, ..SMALL }, Some(property));
    let Some(path) = checked.discovery(property) else {
        panic!("no counterexample to {property:?} with {rules:?}");
    };
    eprintln!("  counterexample to {property:?}:");
    for action in path.into_actions() {
        eprintln!("    {action:?}");
    }
}

/// The protocol after issue 19: no reachable state breaks P1, P2 or P3, and the happy path,
/// a takeover, a receipt's Done, an excused copy and P3's window are all reached.
#[test]
fn new_protocol_keeps_p1_p2_p3() {
    check(BOUNDS, None).assert_properties();
}

/// Three batches over one id (a holder, a redelivery that may take over, and another that may
/// take over from it), with one fault: no reachable state breaks P1, P2 or P3. About 7
/// million states, over a minute in a debug build: run it with `--run-ignored only`.
#[test]
#[ignore = "over a minute in a debug build; run with --run-ignored only"]
fn three_batches_keep_p1_p2_p3() {
    let checked = check(
        Config {
            batches: 3,
            horizon: 6,
            faults: 1,
            ..SMALL
        },
        None,
    );
    for property in [P1, P2, P3] {
        checked.assert_no_discovery(property);
    }
}

/// The old renewal (no `lease_until >= :now`, no fence condition) revives a lapsed lease
/// after another batch took the claim over: two senders.
#[test]
fn old_renewal_revives_a_lapsed_lease() {
    breaks(
        Rules {
            renew_only_live: false,
            renew_not_fenced: false,
            ..Rules::NEW
        },
        P2,
    );
}

/// Without the fence check before sends, a holder sends after its lease lapsed: two senders.
#[test]
fn sends_without_the_fence_check() {
    breaks(
        Rules {
            fence_check_before_send: false,
            ..Rules::NEW
        },
        P2,
    );
}

/// A takeover conditioned on the item only (no fence on the record judged) races a renewal
/// that a slower clock still finds live: two senders.
#[test]
fn takeover_without_the_record_condition() {
    breaks(
        Rules {
            fence_before_takeover: false,
            ..Rules::NEW
        },
        P2,
    );
}

/// An unconditional put_batch: a late first attempt overwrites the record (its renewed lease,
/// or its receipt), and a redelivery sends an accepted id again.
#[test]
fn unconditional_put_batch() {
    breaks(
        Rules {
            put_batch_if_absent: false,
            ..Rules::NEW
        },
        P2,
    );
}

/// The renewal as protocol-v2.md words it (without `lease_until < :l`, which the lead's
/// dynamo.rs has): a late renewal lands and moves the lease back: two senders.
#[test]
fn renewal_without_forward_only_moves_the_lease_back() {
    breaks(
        Rules {
            renew_forward_only: false,
            ..Rules::NEW
        },
        P2,
    );
}
