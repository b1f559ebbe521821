//! The dedup protocol after issue 19 as a stateright model: batches (begin, insert the
//! claims, decide / fence / take over, send, settle and confirm, with a heartbeat beside
//! them), the DynamoDB table (claim items and batch records, each write with its condition,
//! checked where it lands), the SQS queue as copies per id, TMC's confirmations, and
//! per-host clocks. Every claim decision is the real `tmc_relay::relay::lease::decide`.
//!
//! Time is in ticks. A host's clock reads `t + off` with `off` in `0..=2 * skew`, so the
//! servers' time is `t + skew` and two hosts differ by at most `2 * skew`; ticks are handed
//! to `decide` as epoch milliseconds. A batch's requests take no time: any number fit in a
//! tick, interleaved every way with the other batch's. The heartbeat renews once a tick.
//!
//! Faults: any request may be throttled (not carried out) or go unanswered (a write carried
//! out, an SQS entry stored or not); an unanswered begin or renewal stays on the wire and
//! lands any time later, or never; a receipt may be written and its confirmation fail; a
//! batch may crash at any step. At most `Config::faults` of them per run, crashes aside.
//!
//! Ghost state for P2: the batches whose send put a copy of each id in SQS, and which of those
//! copies are excused (a crash, a lost SQS answer, or the holder's own view of its lease
//! ending - `c + 2E >= valid_until`, or a renewal finding it lost - fell between the send and
//! the receipt landing). A copy landing while another batch's copy is there unexcused
//! breaks P2.

use stateright::{Model, Property};
use tmc_relay::relay::lease::{decide, Decision};
use tmc_relay::relay::ports::{BatchRecord, ClaimItem};

/// Ids and batches the state has room for (a config uses as many as it says).
pub const MAX_IDS: usize = 3;
pub const MAX_BATCHES: usize = 3;

/// Tick 0 as epoch ms: any value works, the rules only compare times.
const BASE_MS: u64 = 1_795_300_000_000;
/// Claim items outlive the model by far (TTL expiry is not modelled).
const EXPIRES_AT_S: u64 = BASE_MS / 1000 + 7 * 24 * 3600;

/// Which rules of the new protocol are on. `Rules::NEW` is the protocol; each switched off
/// restores one old behaviour, to show the checker finds what it breaks.
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    /// Renewal condition `lease_until >= :now`: a renewal never revives a lapsed lease.
    pub renew_only_live: bool,
    /// Renewal condition `attribute_not_exists(fenced)`.
    pub renew_not_fenced: bool,
    /// Renewal condition `lease_until < :l` (in the lead's dynamo.rs, not in the spec text): a
    /// late renewal never moves the lease back.
    pub renew_forward_only: bool,
    /// Before each send: `c < valid_until - 2E` and the lease not lost.
    pub fence_check_before_send: bool,
    /// A takeover of an unsettled record's claim first fences the record, conditioned on the
    /// record being exactly as judged; off: conditioned on the item's `b` only.
    pub fence_before_takeover: bool,
    /// `begin` writes its record only if absent; off: a plain PutItem.
    pub put_batch_if_absent: bool,
}

impl Rules {
    /// The protocol after issue 19, with the lead's forward-only renewal.
    pub const NEW: Rules = Rules {
        renew_only_live: true,
        renew_not_fenced: true,
        renew_forward_only: true,
        fence_check_before_send: true,
        fence_before_takeover: true,
        put_batch_if_absent: true,
    };
}

/// The bounds of one model.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Message ids (at most [`MAX_IDS`]).
    pub ids: u8,
    /// Batches, each one consume of every id unconfirmed at the time (at most
    /// [`MAX_BATCHES`]).
    pub batches: u8,
    /// Lease length L, ticks.
    pub lease: u8,
    /// Allowed clock offset E of a host from the servers, ticks.
    pub skew: u8,
    /// Time stops here (the state space is finite).
    pub horizon: u8,
    /// Faults per run at most: throttled or unanswered requests, failed sends (crashes are
    /// not counted: each batch can crash once, at any step).
    pub faults: u8,
    pub rules: Rules,
}

impl Config {
    /// Heartbeat period: a third of the lease, at least a tick.
    fn beat(&self) -> u8 {
        (self.lease / 3).max(1)
    }

    fn all_ids(&self) -> u8 {
        (1u8 << self.ids) - 1
    }
}

/// A batch record as stored. Times are host clock ticks of its writer.
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq)]
pub struct Rec {
    pub lease_until: u8,
    pub settled: bool,
    pub fenced: bool,
    /// Ids (bits) SQS accepted, from the receipt.
    pub accepted: u8,
    /// Ids (bits) whose send outcome was unknown, held until `hold_until`.
    pub held: u8,
    pub hold_until: u8,
}

/// Where a batch is in its steps.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Phase {
    /// Not consumed yet.
    Idle,
    /// Writing its record.
    Begin,
    /// Inserting the claim items of all its ids (one request).
    Insert,
    /// Claiming this id, which met an item.
    Claim(u8, ClaimStep),
    /// Sending its own ids (one SendMessageBatch).
    Send,
    /// Writing its receipt, then confirming to TMC.
    Settle,
    Finished,
    Crashed,
}

/// Where the claim of one id is.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ClaimStep {
    /// Read the item and the record it names, and decide.
    Decide,
    /// Fence `owner`'s record, judged with this lease_until.
    Fence { owner: u8, judged: u8 },
    /// Put the claim item over `owner`'s.
    Put { owner: u8 },
}

/// A DynamoDB write, as sent (its condition is checked where it lands).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Write {
    Begin { lease_until: u8 },
    Insert { ids: u8 },
    Fence { owner: u8, judged: u8 },
    TakeOver { id: u8, owner: u8 },
    Renew { until: u8, now: u8 },
    Settle { at: u8, accepted: u8, held: u8 },
}

/// One batch: what it knows, and ghost state for the properties.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct Batch {
    pub phase: Phase,
    /// Its host's clock offset: reads `t + off`.
    pub off: u8,
    /// Ids (bits) it consumed.
    pub ids: u8,
    /// Claim decisions (bits): its own (inserted or taken over), and done by a receipt.
    pub mine: u8,
    pub done: u8,
    /// Mine by a takeover.
    pub taken: u8,
    /// Send outcomes it knows: accepted, or unknown (no answer).
    pub accepted: u8,
    pub unknown: u8,
    /// While it begins: host clock of its first attempt (the record's lease starts no earlier).
    pub first_sent: Option<u8>,
    /// Its lease surely holds until then (host clock), from the writes answered.
    pub valid_until: u8,
    /// A renewal found the lease lapsed or fenced.
    pub lost: bool,
    /// A renewal found the receipt written (a receipt whose answer was lost).
    pub beat_stopped: bool,
    /// The heartbeat's next renewal is due at this host clock.
    pub next_renew: u8,
    /// Host clock of the receipt's first attempt (every attempt writes the same item).
    pub settle_at: Option<u8>,
    /// A begin or renewal whose answer was lost, still on the wire: it may land any time
    /// later, or never.
    pub late: Option<Write>,
    /// Ghost: ids (bits) whose send by this batch put a copy in SQS.
    pub sent: u8,
    /// Ghost: ids (bits) of `sent` for which a crash, a lost SQS answer or a lapse of the
    /// lease it knew of fell between the send and the receipt landing (P2's exceptions).
    pub excused: u8,
    /// Ghost: the receipt is in the table (the batch may not know yet).
    pub receipt_landed: bool,
    /// Ghost: the tick it crashed.
    pub died_at: Option<u8>,
}

impl Batch {
    const IDLE: Batch = Batch {
        phase: Phase::Idle,
        off: 0,
        ids: 0,
        mine: 0,
        done: 0,
        taken: 0,
        accepted: 0,
        unknown: 0,
        first_sent: None,
        valid_until: 0,
        lost: false,
        beat_stopped: false,
        next_renew: 0,
        settle_at: None,
        late: None,
        sent: 0,
        excused: 0,
        receipt_landed: false,
        died_at: None,
    };

    /// Its record is written and its receipt not known written.
    fn holding(&self) -> bool {
        matches!(
            self.phase,
            Phase::Insert | Phase::Claim(..) | Phase::Send | Phase::Settle
        )
    }

    /// The heartbeat runs: holding, and no renewal found the lease gone or the receipt written.
    fn beating(&self) -> bool {
        self.holding() && !self.lost && !self.beat_stopped
    }

    fn working(&self) -> bool {
        !matches!(self.phase, Phase::Idle | Phase::Finished | Phase::Crashed)
    }

    /// The holder's own view at host clock `clock`: its sends must stop.
    fn lapsed_at(&self, clock: u8, skew: u8) -> bool {
        self.lost || u16::from(clock) + 2 * u16::from(skew) >= u16::from(self.valid_until)
    }

    /// A batch that ended keeps only what the table, the queue and the properties still see
    /// of it: states that differ in the rest are one. No exception can befall it any more,
    /// so of its copies only the unexcused ones count.
    fn forget(&mut self) {
        if matches!(self.phase, Phase::Crashed | Phase::Finished) {
            *self = Batch {
                phase: self.phase,
                late: self.late,
                sent: self.sent & !self.excused,
                died_at: self.died_at,
                ..Batch::IDLE
            };
        }
    }
}

/// The whole system.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct State {
    /// Ticks since the start.
    pub t: u8,
    /// TMC: ids (bits) confirmed.
    pub confirmed: u8,
    /// SQS: copies of each id.
    pub copies: [u8; MAX_IDS],
    /// DynamoDB: the claim item of each id names this batch.
    pub items: [Option<u8>; MAX_IDS],
    /// DynamoDB: each batch's record.
    pub records: [Option<Rec>; MAX_BATCHES],
    pub batches: [Batch; MAX_BATCHES],
    /// Ghost, P2: ids (bits) that got a copy while an unexcused one of another batch was there.
    pub dup: u8,
    /// Ghost, for the `sometimes` properties: `SEEN_*` bits.
    pub seen: u8,
    /// Faults so far (at most `Config::faults`).
    pub faults: u8,
}

/// A batch confirmed an id it took over.
const SEEN_TAKEOVER_CONFIRMED: u8 = 1;
/// A batch confirmed an id decided done by a receipt.
const SEEN_DONE_CONFIRMED: u8 = 2;

/// What happens next.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Action {
    /// TMC hands batch `b` the unconfirmed `ids`; its host's clock is off by `off`.
    Consume { b: u8, ids: u8, off: u8 },
    /// Batch `b` takes its next step; a write or send ends as `outcome`.
    Step { b: u8, outcome: Outcome },
    /// Batch `b`'s late write lands.
    Land { b: u8 },
    /// Batch `b`'s process dies.
    Crash { b: u8 },
    /// Batch `b` sends its own ids in one request; each entry ends as its outcome.
    Send { b: u8, entries: [Outcome; MAX_IDS] },
    /// Time moves on one tick; each heartbeat due renews, ending as its outcome.
    Tick { renewals: [Outcome; MAX_BATCHES] },
}

/// How a request ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Outcome {
    /// Answered (a read, or a write that was carried out or failed its condition).
    Answered,
    /// Throttled: not carried out.
    Throttled,
    /// No answer. A begin or renewal stays on the wire (lands later, or never); any other
    /// write was carried out; an SQS send stored nothing.
    Lost,
    /// SQS: no answer, but the message was stored.
    LostStored,
    /// SQS: failed for good, not stored. A receipt: written, but the confirmation failed.
    Failed,
    /// SQS: not sent, the lease being past its holder's fence.
    Fenced,
}

/// The model.
pub struct Protocol {
    pub cfg: Config,
}

fn bits(set: u8, n: u8) -> impl Iterator<Item = u8> {
    (0..n).filter(move |i| set & (1 << i) != 0)
}

fn ids_of(set: u8) -> Vec<u64> {
    (0..8u8)
        .filter(|i| set & (1 << i) != 0)
        .map(u64::from)
        .collect()
}

/// A batch's token, as the real code keeps it.
pub fn token(b: u8) -> String {
    format!("b{b}")
}

/// A tick as the epoch ms `decide` reads.
fn ms(tick: u8) -> u64 {
    BASE_MS + u64::from(tick)
}

/// The claim item of `id` as the real code reads it.
pub fn claim_item(id: u8, owner: u8) -> ClaimItem {
    ClaimItem {
        id: u64::from(id),
        batch: Some(token(owner)),
        legacy_status: None,
        lease_until_ms: 0,
        expires_at: EXPIRES_AT_S,
    }
}

/// A record as the real code reads it.
pub fn batch_record(owner: u8, r: &Rec) -> BatchRecord {
    BatchRecord {
        token: token(owner),
        lease_until_ms: ms(r.lease_until),
        expires_at: EXPIRES_AT_S,
        accepted: ids_of(r.accepted),
        held: ids_of(r.held),
        hold_until_ms: ms(r.hold_until),
        settled: r.settled,
        fenced: r.fenced,
    }
}

/// The real rules, on the model's state: what batch `me` decides for `id`'s item, named by
/// `owner`, at host clock `clock`.
pub fn decide_in(s: &State, id: u8, owner: u8, me: &str, clock: u8) -> Decision {
    let record = s.records[usize::from(owner)].map(|r| batch_record(owner, &r));
    decide(&claim_item(id, owner), record.as_ref(), me, ms(clock))
}

impl Protocol {
    fn clock(&self, s: &State, b: u8) -> u8 {
        s.t + s.batches[usize::from(b)].off
    }

    /// Applies a write where it lands; false when its condition failed.
    fn apply(&self, s: &mut State, b: u8, w: Write) -> bool {
        let rules = self.cfg.rules;
        let bi = usize::from(b);
        match w {
            Write::Begin { lease_until } => {
                if rules.put_batch_if_absent && s.records[bi].is_some() {
                    return false;
                }
                s.records[bi] = Some(Rec {
                    lease_until,
                    ..Rec::default()
                });
                true
            }
            Write::Insert { ids } => {
                for id in bits(ids, self.cfg.ids) {
                    s.items[usize::from(id)].get_or_insert(b);
                }
                true
            }
            Write::Fence { owner, judged } => match &mut s.records[usize::from(owner)] {
                Some(r) if r.lease_until == judged && !r.settled => {
                    r.fenced = true;
                    true
                }
                _ => false,
            },
            Write::TakeOver { id, owner } => {
                let item = &mut s.items[usize::from(id)];
                if *item != Some(owner) {
                    return false;
                }
                *item = Some(b);
                true
            }
            Write::Renew { until, now } => match &mut s.records[bi] {
                Some(r)
                    if !r.settled
                        && (!rules.renew_not_fenced || !r.fenced)
                        && (!rules.renew_only_live || r.lease_until >= now)
                        && (!rules.renew_forward_only || r.lease_until < until) =>
                {
                    r.lease_until = until;
                    true
                }
                _ => false,
            },
            Write::Settle { at, accepted, held } => {
                // A PutItem: the whole item, `fenced` gone.
                s.records[bi] = Some(Rec {
                    lease_until: at,
                    settled: true,
                    fenced: false,
                    accepted,
                    held,
                    hold_until: at + self.cfg.lease,
                });
                s.batches[bi].receipt_landed = true;
                true
            }
        }
    }

    /// One of P2's exceptions happened to batch `b`: its copies not yet covered by a receipt
    /// in the table are excused.
    fn excuse(s: &mut State, b: u8) {
        let batch = &mut s.batches[usize::from(b)];
        if !batch.receipt_landed {
            batch.excused |= batch.sent;
        }
    }

    /// A copy of `id` reaches SQS, sent by `b`: P2 is broken if another batch's copy is there
    /// and not excused.
    fn land_copy(&self, s: &mut State, b: u8, id: u8) {
        let unexcused_elsewhere = (0..self.cfg.batches).any(|o| {
            let other = &s.batches[usize::from(o)];
            o != b && other.sent & !other.excused & (1 << id) != 0
        });
        if unexcused_elsewhere {
            s.dup |= 1 << id;
        }
        // More than two copies tell nothing more.
        s.copies[usize::from(id)] = (s.copies[usize::from(id)] + 1).min(2);
        s.batches[usize::from(b)].sent |= 1 << id;
    }

    /// The first id of `set` after `after` (`None`: from the start).
    fn next_of(&self, set: u8, after: Option<u8>) -> Option<u8> {
        let from = after.map_or(0, |a| a + 1);
        (from..self.cfg.ids).find(|i| set & (1 << i) != 0)
    }

    /// The phase after claiming `id` (after the inserts: `None`).
    fn after_claim(&self, batch: &Batch, id: Option<u8>) -> Phase {
        match self.next_of(batch.ids & !batch.mine, id) {
            Some(n) => Phase::Claim(n, ClaimStep::Decide),
            None if batch.mine != 0 => Phase::Send,
            None => Phase::Settle,
        }
    }

    fn step_outcomes(&self, s: &State, b: u8, out: &mut Vec<Outcome>) {
        let batch = &s.batches[usize::from(b)];
        match batch.phase {
            Phase::Begin => {
                out.extend([Outcome::Answered, Outcome::Throttled]);
                if batch.late.is_none() {
                    out.push(Outcome::Lost);
                }
            }
            // A read: throttling only delays it.
            Phase::Claim(_, ClaimStep::Decide) => out.push(Outcome::Answered),
            Phase::Insert | Phase::Claim(..) => {
                out.extend([Outcome::Answered, Outcome::Throttled, Outcome::Lost]);
            }
            Phase::Send => {
                let c = self.clock(s, b);
                if self.cfg.rules.fence_check_before_send && batch.lapsed_at(c, self.cfg.skew) {
                    // Past the fence: not sent, left for redelivery.
                    out.push(Outcome::Fenced);
                }
            }
            Phase::Settle => out.extend([
                Outcome::Answered,
                Outcome::Throttled,
                Outcome::Lost,
                Outcome::Failed,
            ]),
            Phase::Idle | Phase::Finished | Phase::Crashed => {}
        }
    }

    fn step(&self, s: &mut State, b: u8, outcome: Outcome) {
        let bi = usize::from(b);
        let c = self.clock(s, b);
        let lease = self.cfg.lease;
        let batch = s.batches[bi];
        match batch.phase {
            Phase::Begin => {
                let first = batch.first_sent.unwrap_or(c);
                let w = Write::Begin {
                    lease_until: c + lease,
                };
                let batch = &mut s.batches[bi];
                batch.first_sent = Some(first);
                match outcome {
                    Outcome::Answered => {
                        // A conditional failure is our own earlier attempt: written too.
                        self.apply(s, b, w);
                        let batch = &mut s.batches[bi];
                        batch.first_sent = None;
                        batch.valid_until = first + lease;
                        batch.next_renew = c + self.cfg.beat();
                        batch.phase = Phase::Insert;
                    }
                    Outcome::Lost => batch.late = Some(w),
                    _ => {}
                }
            }
            Phase::Insert => {
                let before = s.items;
                if outcome != Outcome::Throttled {
                    self.apply(s, b, Write::Insert { ids: batch.ids });
                }
                if outcome == Outcome::Answered {
                    let batch = &mut s.batches[bi];
                    for id in bits(batch.ids, self.cfg.ids) {
                        if before[usize::from(id)].is_none() {
                            batch.mine |= 1 << id;
                        }
                    }
                    batch.phase = self.after_claim(batch, None);
                }
            }
            Phase::Claim(id, ClaimStep::Decide) => {
                let Some(owner) = s.items[usize::from(id)] else {
                    // Items are never deleted: not after the inserts.
                    unreachable!("an id met no item after its insert");
                };
                let decision = decide_in(s, id, owner, &token(b), c);
                let record = s.records[usize::from(owner)];
                let batch = &mut s.batches[bi];
                let next = match decision {
                    Decision::Mine => {
                        batch.mine |= 1 << id;
                        None
                    }
                    Decision::Done => {
                        batch.done |= 1 << id;
                        None
                    }
                    // Neither sent nor confirmed: left for redelivery.
                    Decision::Held => None,
                    Decision::TakeOver => Some(match record {
                        Some(r)
                            if self.cfg.rules.fence_before_takeover && !r.settled && !r.fenced =>
                        {
                            ClaimStep::Fence {
                                owner,
                                judged: r.lease_until,
                            }
                        }
                        _ => ClaimStep::Put { owner },
                    }),
                };
                batch.phase = match next {
                    Some(step) => Phase::Claim(id, step),
                    None => self.after_claim(batch, Some(id)),
                };
            }
            Phase::Claim(id, ClaimStep::Fence { owner, judged }) => {
                let applied = outcome != Outcome::Throttled
                    && self.apply(s, b, Write::Fence { owner, judged });
                // Changed since judged, or no answer: decide again.
                let next = if applied && outcome == Outcome::Answered {
                    ClaimStep::Put { owner }
                } else {
                    ClaimStep::Decide
                };
                s.batches[bi].phase = Phase::Claim(id, next);
            }
            Phase::Claim(id, ClaimStep::Put { owner }) => {
                let applied = outcome != Outcome::Throttled
                    && self.apply(s, b, Write::TakeOver { id, owner });
                let batch = &mut s.batches[bi];
                if applied && outcome == Outcome::Answered {
                    batch.mine |= 1 << id;
                    batch.taken |= 1 << id;
                    batch.phase = self.after_claim(batch, Some(id));
                } else {
                    // Someone moved first, or no answer: decide again.
                    batch.phase = Phase::Claim(id, ClaimStep::Decide);
                }
            }
            Phase::Send => s.batches[bi].phase = Phase::Settle,
            Phase::Settle => {
                let at = batch.settle_at.unwrap_or(c);
                s.batches[bi].settle_at = Some(at);
                if outcome != Outcome::Throttled {
                    let w = Write::Settle {
                        at,
                        accepted: batch.accepted,
                        held: batch.unknown,
                    };
                    self.apply(s, b, w);
                }
                if outcome == Outcome::Answered {
                    // Confirmed: the ids of the receipt, and those done by an earlier one.
                    let ok = batch.accepted | batch.done;
                    s.confirmed |= ok;
                    if batch.taken & ok != 0 {
                        s.seen |= SEEN_TAKEOVER_CONFIRMED;
                    }
                    if batch.done != 0 {
                        s.seen |= SEEN_DONE_CONFIRMED;
                    }
                }
                if matches!(outcome, Outcome::Answered | Outcome::Failed) {
                    s.batches[bi].phase = Phase::Finished;
                }
            }
            Phase::Idle | Phase::Finished | Phase::Crashed => {}
        }
    }

    /// Batch `b` sends its own ids (past its fence, if the rule is on, it sends nothing).
    fn send(&self, s: &mut State, b: u8, entries: [Outcome; MAX_IDS]) {
        let bi = usize::from(b);
        for id in bits(s.batches[bi].mine, self.cfg.ids) {
            let outcome = entries[usize::from(id)];
            s.faults += u8::from(is_fault(outcome));
            match outcome {
                Outcome::Answered => {
                    self.land_copy(s, b, id);
                    s.batches[bi].accepted |= 1 << id;
                }
                Outcome::LostStored => {
                    self.land_copy(s, b, id);
                    let batch = &mut s.batches[bi];
                    batch.unknown |= 1 << id;
                    batch.excused |= 1 << id;
                }
                Outcome::Lost => s.batches[bi].unknown |= 1 << id,
                _ => {}
            }
        }
        s.batches[bi].phase = Phase::Settle;
    }

    /// Every combination of `choices` for the ids in `set`, within the fault budget.
    fn combinations<const N: usize>(
        &self,
        s: &State,
        set: u8,
        choices: impl Fn(u8) -> Vec<Outcome>,
    ) -> Vec<[Outcome; N]> {
        let mut all = vec![[Outcome::Answered; N]];
        for i in bits(set, N as u8) {
            all = all
                .into_iter()
                .flat_map(|r: [Outcome; N]| {
                    choices(i).into_iter().map(move |o| {
                        let mut r = r;
                        r[usize::from(i)] = o;
                        r
                    })
                })
                .collect();
        }
        all.retain(|r| {
            let faults = bits(set, N as u8)
                .filter(|&i| is_fault(r[usize::from(i)]))
                .count();
            usize::from(s.faults) + faults <= usize::from(self.cfg.faults)
        });
        all
    }

    /// The heartbeat of batch `b` renews at host clock `c`.
    fn renew(&self, s: &mut State, b: u8, c: u8, outcome: Outcome) {
        let bi = usize::from(b);
        let until = c + self.cfg.lease;
        let w = Write::Renew { until, now: c };
        match outcome {
            Outcome::Answered => {
                if self.apply(s, b, w) {
                    let batch = &mut s.batches[bi];
                    batch.valid_until = batch.valid_until.max(until);
                } else {
                    // The condition failed: the record as it is says why.
                    match s.records[bi] {
                        Some(r) if r.settled => s.batches[bi].beat_stopped = true,
                        Some(r)
                            if self.cfg.rules.renew_forward_only
                                && !r.fenced
                                && r.lease_until >= until =>
                        {
                            // An earlier attempt of ours got there.
                            let batch = &mut s.batches[bi];
                            batch.valid_until = batch.valid_until.max(until);
                        }
                        _ => {
                            s.batches[bi].lost = true;
                            Self::excuse(s, b);
                        }
                    }
                }
                s.batches[bi].next_renew = c + self.cfg.beat();
            }
            // Retried next tick.
            Outcome::Lost => {
                s.batches[bi].late = Some(w);
                s.batches[bi].next_renew = c + 1;
            }
            _ => s.batches[bi].next_renew = c + 1,
        }
    }

    /// Whether batch `b`'s heartbeat renews at the next tick.
    fn renews_next_tick(&self, s: &State, b: u8) -> bool {
        let batch = &s.batches[usize::from(b)];
        batch.beating() && self.clock(s, b) + 1 >= batch.next_renew
    }
}

impl Protocol {
    /// Sets what no later step, write or property can tell apart to one value, so states
    /// that differ only there are one state.
    fn canonical(&self, s: &mut State) {
        let t = s.t;
        for batch in &mut s.batches {
            batch.forget();
            // Past the fence it stays past until a renewal moves it to a fresh time.
            if batch.holding() && batch.lapsed_at(t + batch.off, self.cfg.skew) {
                batch.valid_until = 0;
            }
        }
        let rules = self.cfg.rules;
        for (batch, record) in s.batches.iter_mut().zip(&s.records) {
            // A late write that can no longer be carried out: the same as none.
            let dead = match (batch.late, record) {
                (Some(Write::Begin { .. }), Some(_)) => rules.put_batch_if_absent,
                // Only its own late begin could unsettle it, and there is one late write.
                (Some(Write::Renew { .. }), Some(r)) => r.settled,
                _ => false,
            };
            if dead {
                batch.late = None;
            }
        }
        for r in s.records.iter_mut().flatten() {
            // Every host clock is past it: `decide` reads nothing else from it.
            if r.hold_until < t {
                r.hold_until = 0;
            }
            // Only unsettled records' leases are read (renewals, fences and `decide` all
            // stop at `settled`), and no fenced one's once renewals respect the fence (a
            // fence landing on a fenced record changes nothing, whatever its condition says;
            // its writer puts the claim either way, now or after deciding again).
            if r.settled || (r.fenced && rules.renew_not_fenced) {
                r.lease_until = 0;
            }
        }
        for b in 0..self.cfg.batches {
            let named = s.items.contains(&Some(b));
            let limit = u16::from(self.cfg.lease) + 2 * u16::from(self.cfg.skew);
            let batch = &mut s.batches[usize::from(b)];
            if let Some(died) = batch.died_at {
                // P3 reads it only for claims naming the dead batch, which writes none now,
                // and only whether its window has opened.
                batch.died_at = if !named {
                    None
                } else if u16::from(t) > u16::from(died) + limit {
                    Some(0)
                } else {
                    Some(died)
                };
            }
        }
    }
}

impl Model for Protocol {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![State {
            t: 0,
            confirmed: 0,
            copies: [0; MAX_IDS],
            items: [None; MAX_IDS],
            records: [None; MAX_BATCHES],
            batches: [Batch::IDLE; MAX_BATCHES],
            dup: 0,
            seen: 0,
            faults: 0,
        }]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        let unconfirmed = self.cfg.all_ids() & !s.confirmed;
        for b in 0..self.cfg.batches {
            let batch = &s.batches[usize::from(b)];
            if batch.phase == Phase::Idle {
                // Batches start in order: the slots are interchangeable.
                if b == 0 || s.batches[usize::from(b - 1)].phase != Phase::Idle {
                    // TMC hands over every unconfirmed id (the batches overlap: the harder
                    // case, and a smaller state space than every subset).
                    let ids = unconfirmed;
                    // Only clock differences matter: the first batch's is the origin.
                    let offs = if b == 0 { 0 } else { 2 * self.cfg.skew };
                    if ids != 0 {
                        for off in 0..=offs {
                            actions.push(Action::Consume { b, ids, off });
                        }
                    }
                }
                continue;
            }
            let mut outcomes = Vec::new();
            self.step_outcomes(s, b, &mut outcomes);
            let sending = batch.phase == Phase::Send && outcomes.is_empty();
            let spare = s.faults < self.cfg.faults;
            outcomes.retain(|&o| spare || !is_fault(o));
            actions.extend(
                outcomes
                    .into_iter()
                    .map(|outcome| Action::Step { b, outcome }),
            );
            if sending {
                let entries = self.combinations(s, batch.mine, |_| {
                    vec![
                        Outcome::Answered,
                        Outcome::Failed,
                        Outcome::Lost,
                        Outcome::LostStored,
                    ]
                });
                actions.extend(
                    entries
                        .into_iter()
                        .map(|entries| Action::Send { b, entries }),
                );
            }
            if batch.late.is_some() {
                actions.push(Action::Land { b });
            }
            if batch.working() {
                actions.push(Action::Crash { b });
            }
        }
        if s.t < self.cfg.horizon {
            // Every combination of the renewals' outcomes.
            let due = (0..self.cfg.batches)
                .filter(|&b| self.renews_next_tick(s, b))
                .fold(0u8, |set, b| set | 1 << b);
            let renewals = self.combinations(s, due, |b| {
                let mut choices = vec![Outcome::Answered, Outcome::Throttled];
                if s.batches[usize::from(b)].late.is_none() {
                    choices.push(Outcome::Lost);
                }
                choices
            });
            actions.extend(
                renewals
                    .into_iter()
                    .map(|renewals| Action::Tick { renewals }),
            );
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        match action {
            Action::Consume { b, ids, off } => {
                let batch = &mut s.batches[usize::from(b)];
                batch.phase = Phase::Begin;
                batch.ids = ids;
                batch.off = off;
            }
            Action::Step { b, outcome } => {
                s.faults += u8::from(is_fault(outcome));
                self.step(&mut s, b, outcome);
            }
            Action::Send { b, entries } => self.send(&mut s, b, entries),
            Action::Land { b } => {
                if let Some(w) = s.batches[usize::from(b)].late.take() {
                    self.apply(&mut s, b, w);
                }
            }
            Action::Crash { b } => {
                let batch = &mut s.batches[usize::from(b)];
                batch.phase = Phase::Crashed;
                batch.died_at = Some(s.t);
                Self::excuse(&mut s, b);
            }
            Action::Tick { renewals } => {
                let due: Vec<bool> = (0..self.cfg.batches)
                    .map(|b| self.renews_next_tick(&s, b))
                    .collect();
                let was_lapsed: Vec<bool> = (0..self.cfg.batches)
                    .map(|b| {
                        let batch = &s.batches[usize::from(b)];
                        batch.lapsed_at(self.clock(&s, b), self.cfg.skew)
                    })
                    .collect();
                s.t += 1;
                for b in 0..self.cfg.batches {
                    if due[usize::from(b)] {
                        s.faults += u8::from(is_fault(renewals[usize::from(b)]));
                    }
                    let bi = usize::from(b);
                    let c = self.clock(&s, b);
                    if due[bi] {
                        self.renew(&mut s, b, c, renewals[bi]);
                    }
                    // The holder's view of its lease ends now, its receipt not written.
                    let batch = &s.batches[bi];
                    if batch.holding() && !was_lapsed[bi] && batch.lapsed_at(c, self.cfg.skew) {
                        Self::excuse(&mut s, b);
                    }
                }
            }
        }
        self.canonical(&mut s);
        (s != *last).then_some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("P1 confirmed only what SQS holds", p1),
            Property::always("P2 no unexcused second copy", |_: &Protocol, s: &State| {
                s.dup == 0
            }),
            Property::always("P3 a dead holder's claims free after L + 2E", p3),
            Property::sometimes("a message is confirmed", |_: &Protocol, s: &State| {
                s.confirmed != 0
            }),
            Property::sometimes(
                "a redelivery takes a claim over and confirms it",
                |_: &Protocol, s: &State| s.seen & SEEN_TAKEOVER_CONFIRMED != 0,
            ),
            Property::sometimes(
                "a redelivery confirms from a receipt",
                |_: &Protocol, s: &State| s.seen & SEEN_DONE_CONFIRMED != 0,
            ),
            Property::sometimes(
                "an id reaches SQS twice, excused",
                |m: &Protocol, s: &State| (0..m.cfg.ids).any(|i| s.copies[usize::from(i)] > 1),
            ),
            Property::sometimes(
                "P3 is checked: a dead holder's claim past L + 2E",
                |m: &Protocol, s: &State| stuck_window(m, s).next().is_some(),
            ),
        ]
    }
}

/// A fault, counted against `Config::faults`.
fn is_fault(o: Outcome) -> bool {
    !matches!(o, Outcome::Answered | Outcome::Fenced)
}

/// P1: every confirmed id has a copy in SQS.
fn p1(m: &Protocol, s: &State) -> bool {
    bits(s.confirmed, m.cfg.ids).all(|id| s.copies[usize::from(id)] > 0)
}

/// The claims (id, dead owner) of holders dead for more than a lease and twice the skew.
fn stuck_window<'a>(m: &'a Protocol, s: &'a State) -> impl Iterator<Item = (u8, u8)> + 'a {
    (0..m.cfg.ids).filter_map(move |id| {
        let owner = s.items[usize::from(id)]?;
        let died = s.batches[usize::from(owner)].died_at?;
        let limit = u16::from(died) + u16::from(m.cfg.lease) + 2 * u16::from(m.cfg.skew);
        (u16::from(s.t) > limit).then_some((id, owner))
    })
}

/// P3: no host's clock (any offset within E) makes `decide` hold such a claim.
fn p3(m: &Protocol, s: &State) -> bool {
    stuck_window(m, s).all(|(id, owner)| {
        (0..=2 * m.cfg.skew)
            .all(|off| decide_in(s, id, owner, "redelivery", s.t + off) != Decision::Held)
    })
}
