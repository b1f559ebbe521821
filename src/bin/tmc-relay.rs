//! The operator's command line: run a pass exactly as the Lambda does, the TMC admin calls,
//! and the parking queue's commands.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tokio::time::Instant;

use tmc_relay::config::{Config, ParkedEnv, ReplayEnv, TopEnv};
use tmc_relay::invocation::Overrides;
use tmc_relay::parked::{self, fmt_age, Filter, Selection, REASON_CODES};
use tmc_relay::relay::{Mode, Progress, RelaySettings, Stop, StopReason};
use tmc_relay::replay;
use tmc_relay::signals::Signals;
use tmc_relay::top::{ErrorClass, Secret, TopClient, TopError};
use tmc_relay::wiring::{self, App};

#[derive(Parser)]
#[command(
    name = "tmc-relay",
    version,
    about = "Relay Taobao TMC messages into Amazon SQS; configured by environment variables (see docs/deploying.md)"
)]
struct Cli {
    /// Print machine-readable JSON instead of text (admin and parked commands).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one relay pass and print its JSON report on stdout. SIGINT or SIGTERM stops
    /// consuming: the batches in hand finish (at most 30 s), the report is printed and the
    /// exit code is 3; a second signal exits at once with 130.
    Run(RunArgs),
    /// Permit a seller's messages (taobao.tmc.user.permit). Needs the seller's session.
    Permit {
        /// The seller's session key (or env TOP_SESSION, which keeps it out of `ps`).
        #[arg(long, env = "TOP_SESSION", hide_env_values = true)]
        session: String,
        /// Comma-separated topics; all of the app's topics when omitted.
        #[arg(long, value_delimiter = ',')]
        topics: Option<Vec<String>>,
    },
    /// A seller's subscription (taobao.tmc.user.get / .cancel).
    #[command(subcommand)]
    User(UserCmd),
    /// The app's TMC groups (taobao.tmc.groups.get / group.add / group.delete).
    #[command(subcommand)]
    Groups(GroupsCmd),
    /// A group's queue figures (taobao.tmc.queue.get).
    Backlog {
        /// The group; `default` for the default group.
        #[arg(long, default_value = "default")]
        group: String,
    },
    /// Jushita MQ sync users (taobao.jushita.jms.user.add / get / delete).
    #[command(subcommand)]
    Jms(JmsCmd),
    /// The parking queue: list, show, redrive or purge parked messages. Reads
    /// PARKING_QUEUE_URL (redrive also RELAY_QUEUE_URL and FIFO_GROUP_BY); no TOP credentials.
    #[command(subcommand)]
    Parked(ParkedCmd),
    /// Send archived messages again, rebuilt exactly as the relay builds them and marked with
    /// the tmc_replayed_at attribute, each id once. Reads ARCHIVE_URL and RELAY_QUEUE_URL
    /// (or the flags) and FIFO_GROUP_BY; no TOP credentials. Exit 0 when every selected
    /// message was sent, 1 when something failed or nothing matched, 2 on a bad flag.
    Replay(ReplayArgs),
}

#[derive(Args)]
struct ReplayArgs {
    /// Messages consumed at or after this time (RFC 3339, e.g. 2026-12-01T00:00:00+08:00).
    #[arg(long)]
    since: String,
    /// Messages consumed before this time (RFC 3339).
    #[arg(long)]
    until: String,
    /// Only these topics, comma-separated.
    #[arg(long = "topic", value_delimiter = ',')]
    topics: Vec<String>,
    /// Only these business keys, comma-separated, as the relay's biz_key attribute writes
    /// them (trade_<tid>, refund_<refund_id>, item_<num_iid>).
    #[arg(long = "biz-key", value_delimiter = ',')]
    biz_keys: Vec<String>,
    /// Only these sellers' user ids, comma-separated.
    #[arg(long = "user-id", value_delimiter = ',')]
    user_ids: Vec<String>,
    /// Only messages consumed from these TMC groups, comma-separated (`default` for the
    /// default group).
    #[arg(long = "group", value_delimiter = ',')]
    groups: Vec<String>,
    /// Only these TMC ids, comma-separated.
    #[arg(long = "id", value_delimiter = ',')]
    ids: Vec<String>,
    /// Send to this queue instead of RELAY_QUEUE_URL (e.g. a fresh queue to inspect).
    #[arg(long)]
    queue_url: Option<String>,
    /// Read this archive instead of ARCHIVE_URL (s3://bucket/prefix/).
    #[arg(long)]
    archive_url: Option<String>,
    /// Messages per second at most.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=3000))]
    rate: u32,
    /// Send nothing; count what would be sent.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Subcommand)]
enum ParkedCmd {
    /// List parked messages, oldest first: reason code, TMC id, topic, age, SQS message id.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// List at most this many.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        max: Option<u64>,
    },
    /// Show every parked record with this TMC id or SQS message id, in full.
    Show {
        /// A TMC id, or the SQS message id `list` shows (the only name of a record without one).
        id: String,
    },
    /// Send parked messages to the relay queue, rebuilt exactly as the relay builds them, and
    /// delete each from the parking queue once SQS accepted it. What still cannot be relayed
    /// stays parked, and the output says why.
    Redrive {
        #[command(flatten)]
        filter: FilterArgs,
        /// Redrive at most this many.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        max: Option<u64>,
        /// Send and delete nothing; say what would be done.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete parked messages for good (they were confirmed to TMC: nothing else holds them).
    Purge {
        #[command(flatten)]
        filter: FilterArgs,
        /// Purge at most this many.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        max: Option<u64>,
        /// Delete nothing; say what would be deleted.
        #[arg(long)]
        dry_run: bool,
        /// Select every parked message (instead of --reason, --topic or --id).
        #[arg(long)]
        all: bool,
        /// Required to delete: the explicit confirmation.
        #[arg(long)]
        confirm: bool,
    },
}

#[derive(Args)]
struct FilterArgs {
    /// Only these reason codes, comma-separated: missing_topic, missing_content, too_large,
    /// sqs_rejected, invalid_id, unreadable (a body that is not a parking record).
    #[arg(long = "reason", value_delimiter = ',')]
    reasons: Vec<String>,
    /// Only these topics, comma-separated; a trailing `*` matches a prefix (taobao_trade_*).
    #[arg(long = "topic", value_delimiter = ',')]
    topics: Vec<String>,
    /// Only these TMC ids or SQS message ids, comma-separated.
    #[arg(long = "id", value_delimiter = ',')]
    ids: Vec<String>,
}

impl FilterArgs {
    fn filter(self) -> Result<Filter, String> {
        let f = Filter {
            reasons: self.reasons,
            topics: self.topics,
            ids: self.ids,
        };
        f.validate()?;
        Ok(f)
    }
}

#[derive(Args)]
struct RunArgs {
    /// Comma-separated groups (overrides TMC_GROUP_NAMES).
    #[arg(long, value_delimiter = ',')]
    group_names: Option<Vec<String>>,
    /// Messages per consume, 10..=200 (overrides TMC_QUANTITY).
    #[arg(long)]
    quantity: Option<u32>,
    /// drain: stop at the first empty poll; follow: poll until the time budget ends.
    #[arg(long)]
    mode: Option<Mode>,
    /// Stop each group after this many consumes (batches); no limit by default.
    #[arg(long)]
    max_batches: Option<u64>,
    /// Stop each group after this many messages: the last consume asks for only what is left
    /// (at least 10, TMC's minimum); no limit by default.
    #[arg(long)]
    max_messages: Option<u64>,
    /// Time budget in seconds (default 300).
    #[arg(long)]
    max_seconds: Option<u64>,
    /// Consume loops per group (overrides TMC_CONCURRENCY).
    #[arg(long)]
    concurrency: Option<u32>,
    /// Batches processed while the next consume runs (default 4; 0 processes each batch
    /// before the next consume). Lower it against a slow local emulator.
    #[arg(long, value_parser = clap::value_parser!(u16).range(0..=16))]
    pipeline_depth: Option<u16>,
}

#[derive(Subcommand)]
enum UserCmd {
    /// Show a seller's subscription.
    Get {
        /// The seller's nick (shop owner account name).
        #[arg(long)]
        nick: String,
        /// tbUIC (Taobao, default), icbu or ae.
        #[arg(long)]
        platform: Option<String>,
    },
    /// Cancel a seller's subscription.
    Cancel {
        /// The seller's nick (shop owner account name).
        #[arg(long)]
        nick: String,
        /// tbUIC (Taobao, default), icbu or ae.
        #[arg(long)]
        platform: Option<String>,
    },
}

#[derive(Subcommand)]
enum GroupsCmd {
    /// List groups.
    List {
        /// The page to show, from 1.
        #[arg(long)]
        page: Option<u32>,
        /// Groups per page (TMC's own default when omitted).
        #[arg(long)]
        page_size: Option<u32>,
    },
    /// Create a group and move sellers into it.
    Add {
        /// The new group's name.
        #[arg(long)]
        name: String,
        /// Comma-separated nicks of the sellers whose messages go to the group from now on.
        #[arg(long, value_delimiter = ',', required = true)]
        nicks: Vec<String>,
    },
    /// Delete a group (its unconsumed messages are lost), or remove sellers from it.
    Delete {
        /// The group's name.
        #[arg(long)]
        name: String,
        /// Comma-separated nicks to remove from the group (back to the default group); without
        /// it the whole group is deleted.
        #[arg(long, value_delimiter = ',')]
        nicks: Vec<String>,
    },
}

#[derive(Subcommand)]
enum JmsCmd {
    /// Add the session's seller to Jushita MQ sync.
    Add {
        /// The seller's session key (or env TOP_SESSION, which keeps it out of `ps`).
        #[arg(long, env = "TOP_SESSION", hide_env_values = true)]
        session: String,
        /// Comma-separated topics to sync (at most 20).
        #[arg(long, value_delimiter = ',')]
        topics: Vec<String>,
    },
    /// Show a Jushita MQ sync user.
    Get {
        /// The seller's nick.
        #[arg(long)]
        nick: String,
    },
    /// Remove a Jushita MQ sync user.
    Delete {
        /// The seller's nick.
        #[arg(long)]
        nick: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    tmc_relay::telemetry::init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args).await,
        Command::Parked(cmd) => parked_cmd(cmd, cli.json).await,
        Command::Replay(args) => replay_cmd(args, cli.json).await,
        other => admin(other, cli.json).await,
    };
    match result {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
    }
}

/// `run` was stopped by SIGINT or SIGTERM and finished its batches in hand (or left them
/// for redelivery when the grace ran out): the report is on stdout.
const EXIT_STOPPED: u8 = 3;
/// A second signal: the process exits at once, the batches in hand left for redelivery (a
/// batch confirms nothing before its receipt), and no report.
const EXIT_INTERRUPTED: i32 = 130;

/// From now on SIGINT and SIGTERM stop the pass instead of killing the process: the first
/// fires `stop`, a second exits at once.
fn stop_on_signals(stop: &Stop) -> Result<(), String> {
    let mut signals = Signals::new().map_err(|e| format!("could not catch SIGINT/SIGTERM: {e}"))?;
    let stop = stop.clone();
    tokio::spawn(async move {
        let first = signals.recv().await;
        eprintln!(
            "\n{first}: stopping: no more consumes; the batches in hand finish within {} s (a second signal exits at once)",
            stop.grace().as_secs()
        );
        stop.fire();
        let second = signals.recv().await;
        eprintln!(
            "{second} again: exiting now; TMC redelivers what the batches in hand did not confirm"
        );
        std::process::exit(EXIT_INTERRUPTED);
    });
    Ok(())
}

async fn run(args: RunArgs) -> Result<ExitCode, String> {
    // Before anything else: a signal during the start still ends the run cleanly.
    let stop = Stop::default();
    stop_on_signals(&stop)?;
    let overrides = Overrides {
        group_names: args.group_names,
        quantity: args.quantity,
        mode: args.mode,
        max_batches: args.max_batches,
        max_messages: args.max_messages,
        max_seconds: args.max_seconds,
        concurrency: args.concurrency,
    };
    overrides.validate().map_err(|e| e.to_string())?;
    let config = Config::from_env().map_err(|e| e.to_string())?;
    let mut settings = RelaySettings::default();
    if let Some(depth) = args.pipeline_depth {
        settings.pipeline_depth = usize::from(depth);
    }
    let app = App::build_with(config, &wiring::aws_config().await, settings)
        .await
        .map_err(|e| e.to_string())?;
    let progress = Arc::new(Progress::default());
    let ticker = {
        let p = Arc::clone(&progress);
        ProgressLine::start(move || {
            format!(
                "consumed {}  enqueued {}  confirmed {}",
                p.consumed.load(Ordering::Relaxed),
                p.enqueued.load(Ordering::Relaxed),
                p.confirmed.load(Ordering::Relaxed)
            )
        })
    };
    let report = app.run_stoppable(&overrides, None, progress, stop).await;
    ticker.stop();
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    println!("{json}");
    if report.is_fatal() {
        eprintln!(
            "error: {}",
            report.error.as_deref().unwrap_or("fatal error")
        );
        return Ok(ExitCode::from(1));
    }
    if report
        .groups
        .iter()
        .any(|g| g.stop_reason == StopReason::Stopped)
    {
        eprintln!(
            "stopped by a signal: {} confirmed; {} abandoned when the grace ran out",
            report.counts.confirmed, report.counts.abandoned
        );
        return Ok(ExitCode::from(EXIT_STOPPED));
    }
    Ok(ExitCode::SUCCESS)
}

fn explain(e: TopError) -> String {
    match e.class() {
        ErrorClass::Fatal { check } => format!("{e}. Check {check}."),
        ErrorClass::RateLimited { ban } => format!(
            "{e}. The app is banned for {} s; try again later.",
            ban.as_secs()
        ),
        _ => e.to_string(),
    }
}

fn print<T: serde::Serialize>(
    json: bool,
    value: &T,
    text: impl FnOnce() -> String,
) -> Result<ExitCode, String> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).map_err(|e| e.to_string())?
        );
    } else {
        println!("{}", text());
    }
    Ok(ExitCode::SUCCESS)
}

fn group_param(g: &str) -> Option<&str> {
    (g != "default" && !g.is_empty()).then_some(g)
}

async fn admin(cmd: Command, json: bool) -> Result<ExitCode, String> {
    let env = TopEnv::from_env().map_err(|e| e.to_string())?;
    let sdk = wiring::aws_config().await;
    let client: TopClient = wiring::top_client(&env, &sdk)
        .await
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    match cmd {
        Command::Run(_) | Command::Parked(_) | Command::Replay(_) => {
            unreachable!("handled by run, parked_cmd and replay_cmd")
        }
        Command::Permit { session, topics } => {
            let ok = client
                .user_permit(&Secret::new(session), topics.as_deref(), deadline)
                .await
                .map_err(explain)?;
            print(json, &serde_json::json!({ "is_success": ok }), || {
                format!("permitted: {}", yes_no(ok))
            })
        }
        Command::User(UserCmd::Get { nick, platform }) => {
            let user = client
                .user_get(&nick, platform.as_deref(), deadline)
                .await
                .map_err(explain)?;
            print(json, &user, || match &user {
                None => format!("{nick}: not subscribed"),
                Some(u) => format!(
                    "{}: topics {}; valid {}; group {}; platform {}",
                    u.user_nick.as_deref().unwrap_or(&nick),
                    if u.topics.is_empty() {
                        "(none)".into()
                    } else {
                        u.topics.join(",")
                    },
                    u.is_valid.map(yes_no).unwrap_or("?"),
                    u.group_name.as_deref().unwrap_or("default"),
                    u.user_platform.as_deref().unwrap_or("?"),
                ),
            })
        }
        Command::User(UserCmd::Cancel { nick, platform }) => {
            let ok = client
                .user_cancel(&nick, platform.as_deref(), deadline)
                .await
                .map_err(explain)?;
            print(json, &serde_json::json!({ "is_success": ok }), || {
                if ok {
                    format!("{nick}: cancelled")
                } else {
                    format!("{nick}: no such user")
                }
            })
        }
        Command::Groups(GroupsCmd::List { page, page_size }) => {
            let groups = client
                .groups_get(None, page, page_size, deadline)
                .await
                .map_err(explain)?;
            print(json, &groups, || groups.groups.join("\n"))
        }
        Command::Groups(GroupsCmd::Add { name, nicks }) => {
            let created = client
                .group_add(&name, &nicks, deadline)
                .await
                .map_err(explain)?;
            print(
                json,
                &serde_json::json!({ "group_name": name, "created": created }),
                || format!("group {name} created {}", created.as_deref().unwrap_or("")),
            )
        }
        Command::Groups(GroupsCmd::Delete { name, nicks }) => {
            let ok = client
                .group_delete(&name, &nicks, deadline)
                .await
                .map_err(explain)?;
            print(json, &serde_json::json!({ "is_success": ok }), || {
                format!("group {name} deleted: {}", yes_no(ok))
            })
        }
        Command::Backlog { group } => {
            let name = group_param(&group).unwrap_or("default");
            let queues = client.queue_get(name, deadline).await.map_err(explain)?;
            print(json, &queues, || {
                queues
                    .iter()
                    .map(|q| {
                        format!(
                            "{} ({}): put today {}, read today {}",
                            q.name.as_deref().unwrap_or(name),
                            q.broker_name.as_deref().unwrap_or("-"),
                            q.put_total.map(|v| v.to_string()).unwrap_or("?".into()),
                            q.get_total.map(|v| v.to_string()).unwrap_or("?".into())
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        Command::Jms(JmsCmd::Add { session, topics }) => {
            let ok = client
                .jms_user_add(&Secret::new(session), &topics, deadline)
                .await
                .map_err(explain)?;
            print(json, &serde_json::json!({ "is_success": ok }), || {
                format!("added: {}", yes_no(ok))
            })
        }
        Command::Jms(JmsCmd::Get { nick }) => {
            let user = client
                .jms_user_get(&nick, deadline)
                .await
                .map_err(explain)?;
            print(json, &user, || match &user {
                None => format!("{nick}: not a Jushita MQ sync user"),
                Some(u) => format!(
                    "{}: topics {}",
                    u.user_nick.as_deref().unwrap_or(&nick),
                    u.topic_names.join(",")
                ),
            })
        }
        Command::Jms(JmsCmd::Delete { nick }) => {
            let ok = client
                .jms_user_delete(&nick, deadline)
                .await
                .map_err(explain)?;
            print(json, &serde_json::json!({ "is_success": ok }), || {
                format!("deleted: {}", yes_no(ok))
            })
        }
    }
}

/// `tmc-relay parked ...`: exit 0 when everything selected was done, 1 when something stayed
/// parked, was not found or an AWS call failed, 2 on a bad flag or setting (nothing done).
async fn parked_cmd(cmd: ParkedCmd, json: bool) -> Result<ExitCode, String> {
    let with_relay = matches!(cmd, ParkedCmd::Redrive { .. });
    let (sel, what) = match cmd {
        ParkedCmd::Show { id } => {
            if id.trim().is_empty() {
                return Err("show needs a TMC id or an SQS message id".into());
            }
            (None, Some(id))
        }
        ParkedCmd::List { filter, max } => (
            Some(Selection {
                filter: filter.filter()?,
                max,
                dry_run: false,
            }),
            None,
        ),
        ParkedCmd::Redrive {
            filter,
            max,
            dry_run,
        } => (
            Some(Selection {
                filter: filter.filter()?,
                max,
                dry_run,
            }),
            Some("redrive".to_owned()),
        ),
        ParkedCmd::Purge {
            filter,
            max,
            dry_run,
            all,
            confirm,
        } => {
            let filter = filter.filter()?;
            if filter.is_empty() && !all {
                return Err("purge needs --reason, --topic or --id, or --all to select every parked message".into());
            }
            if !filter.is_empty() && all {
                return Err(
                    "purge takes --all or a filter (--reason, --topic, --id), not both".into(),
                );
            }
            if !dry_run && !confirm {
                return Err("purge deletes parked messages for good, and TMC no longer holds them: add --confirm (see what it would delete with --dry-run)".into());
            }
            (
                Some(Selection {
                    filter,
                    max,
                    dry_run,
                }),
                Some("purge".to_owned()),
            )
        }
    };
    let env = ParkedEnv::from_env(with_relay).map_err(|e| e.to_string())?;
    let tools = wiring::parked(&env, &wiring::aws_config().await);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    let progress = Arc::new(parked::Progress::default());
    let ticker = {
        let p = Arc::clone(&progress);
        ProgressLine::start(move || {
            format!(
                "scanned {}  selected {}  done {}",
                p.scanned.load(Ordering::Relaxed),
                p.selected.load(Ordering::Relaxed),
                p.done.load(Ordering::Relaxed)
            )
        })
    };
    let failed = |e: tmc_relay::relay::ports::PortError| {
        eprintln!("error: {e}. Check PARKING_QUEUE_URL and the operator's SQS permissions (docs/operating.md)");
        Ok(ExitCode::from(1))
    };
    match (sel, what.as_deref()) {
        (Some(sel), None) => {
            let listed = tools.list(&sel, now_ms, &progress).await;
            ticker.stop();
            let listed = match listed {
                Ok(l) => l,
                Err(e) => return failed(e),
            };
            print(json, &listed, || list_table(&listed))
        }
        (None, Some(id)) => {
            let shown = tools.show(id, now_ms).await;
            ticker.stop();
            let shown = match shown {
                Ok(s) => s,
                Err(e) => return failed(e),
            };
            if shown.is_empty() {
                if json {
                    println!("[]");
                }
                eprintln!("no parked message has the TMC id or SQS message id {id:?}");
                return Ok(ExitCode::from(1));
            }
            print(json, &shown, || {
                shown
                    .iter()
                    .map(|s| {
                        format!(
                            "message {} (parked {} ago)\n{}",
                            s.message_id,
                            s.age_seconds.map(fmt_age).unwrap_or_else(|| "?".into()),
                            serde_json::to_string_pretty(&s.record).unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n\n")
            })
        }
        (Some(sel), Some(command)) => {
            let report = if command == "redrive" {
                tools.redrive(&sel, &progress).await
            } else {
                tools.purge(&sel, &progress).await
            };
            ticker.stop();
            print(json, &report, || run_text(&report))?;
            if let Some(e) = &report.error {
                eprintln!("error: {e}");
            }
            Ok(if report.is_complete() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        (None, None) => unreachable!("every parked command sets one"),
    }
}

fn list_table(listed: &[parked::Listed]) -> String {
    if listed.is_empty() {
        return "no parked messages".into();
    }
    let rows: Vec<[String; 5]> = listed
        .iter()
        .map(|l| {
            [
                l.reason_code.clone(),
                l.id.clone().unwrap_or_else(|| "-".into()),
                l.topic.clone().unwrap_or_else(|| "-".into()),
                l.age_seconds.map(fmt_age).unwrap_or_else(|| "?".into()),
                l.message_id.clone(),
            ]
        })
        .collect();
    let head = ["REASON", "ID", "TOPIC", "AGE", "MESSAGE ID"].map(String::from);
    let mut width = [0usize; 5];
    for r in std::iter::once(&head).chain(&rows) {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |r: &[String; 5]| {
        r.iter()
            .zip(width)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out: Vec<String> = std::iter::once(&head).chain(&rows).map(line).collect();
    let mut by_reason: Vec<(&str, usize)> = REASON_CODES
        .iter()
        .map(|c| (*c, listed.iter().filter(|l| l.reason_code == *c).count()))
        .filter(|(_, n)| *n > 0)
        .collect();
    by_reason.sort_by_key(|r| std::cmp::Reverse(r.1));
    out.push(format!(
        "{} parked: {}",
        listed.len(),
        by_reason
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    out.join("\n")
}

fn run_text(r: &parked::RunReport) -> String {
    let mut out: Vec<String> = r
        .messages
        .iter()
        .map(|d| {
            let name = serde_json::to_value(d.outcome)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let mut line = format!(
                "{name:<16}  {}  {}  [parked as {}]",
                d.id.as_deref().unwrap_or(&d.message_id),
                d.topic.as_deref().unwrap_or("-"),
                d.reason_code
            );
            if let Some(detail) = &d.detail {
                line.push_str("  ");
                line.push_str(detail);
            }
            line
        })
        .collect();
    let counts = r
        .outcomes
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    out.push(format!(
        "{}{}: scanned {}, selected {}{}{}",
        r.command,
        if r.dry_run { " --dry-run" } else { "" },
        r.scanned,
        r.selected,
        if counts.is_empty() { "" } else { ": " },
        counts
    ));
    out.join("\n")
}

/// A progress line on a terminal's stderr, redrawn every second with the elapsed seconds and
/// what `line` says; nothing when stderr is not a terminal.
struct ProgressLine(Option<tokio::task::JoinHandle<()>>);

impl ProgressLine {
    fn start(line: impl Fn() -> String + Send + 'static) -> Self {
        Self(std::io::stderr().is_terminal().then(|| {
            tokio::spawn(async move {
                let started = Instant::now();
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    eprint!("\r{:>5}s  {}   ", started.elapsed().as_secs(), line());
                }
            })
        }))
    }

    /// Stops redrawing and ends the line.
    fn stop(self) {
        if let Some(t) = self.0 {
            t.abort();
            eprintln!();
        }
    }
}

/// `tmc-relay replay`: exit 0 when every selected message was sent (or would be, in a dry
/// run), 1 when something failed, was unsendable or nothing matched, 2 on a bad flag or
/// setting (nothing sent).
async fn replay_cmd(args: ReplayArgs, json: bool) -> Result<ExitCode, String> {
    let time = |flag: &str, v: &str| {
        time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
            .map_err(|e| format!("{flag} {v:?} is not an RFC 3339 time ({e})"))
    };
    let sel = replay::Selection {
        since: Some(time("--since", &args.since)?),
        until: Some(time("--until", &args.until)?),
        topics: args.topics,
        biz_keys: args.biz_keys,
        user_ids: args.user_ids,
        groups: args.groups,
        ids: args.ids,
    };
    let env = ReplayEnv::from_env(args.archive_url.as_deref(), args.queue_url.as_deref())
        .map_err(|e| e.to_string())?;
    let (reader, queue) = wiring::replay(&env, &wiring::aws_config().await);
    let opts = replay::Options {
        dry_run: args.dry_run,
        rate: args.rate,
        fifo_group_by: env.fifo_group_by,
    };
    let progress = Arc::new(replay::Progress::default());
    let ticker = {
        let p = Arc::clone(&progress);
        ProgressLine::start(move || {
            format!(
                "objects {}  matched {}  sent {}",
                p.objects.load(Ordering::Relaxed),
                p.matched.load(Ordering::Relaxed),
                p.sent.load(Ordering::Relaxed)
            )
        })
    };
    let done = replay::replay(&reader, &env.archive, &queue, &sel, &opts, &progress).await;
    ticker.stop();
    let out = match done {
        Ok(out) => out,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    print(json, &out, || {
        let verb = if out.dry_run { "would send" } else { "sent" };
        let count = if out.dry_run { out.unique } else { out.sent };
        let mut text = format!(
            "{} archive objects, {} lines, {} matched, {} distinct ids: {verb} {count} to {}",
            out.objects, out.lines, out.matched, out.unique, env.queue_url
        );
        if !out.failed.is_empty() {
            text += &format!("\nfailed ({}): {}", out.failed.len(), out.failed.join(","));
        }
        if !out.unsendable.is_empty() {
            text += &format!(
                "\nnot sendable as relay messages ({}): {}",
                out.unsendable.len(),
                out.unsendable.join(",")
            );
        }
        text
    })?;
    if out.matched == 0 {
        eprintln!("no archived message matched the selection");
    }
    Ok(
        if out.matched == 0 || !out.failed.is_empty() || !out.unsendable.is_empty() {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        },
    )
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every flag and positional of every command has a help line, so `--help` documents the
    /// whole command line.
    #[test]
    fn every_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>, seen: &mut usize) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                *seen += 1;
                let has_help = arg
                    .get_help()
                    .is_some_and(|h| !h.to_string().trim().is_empty());
                if !has_help {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing, seen);
            }
        }
        let (mut missing, mut seen) = (Vec::new(), 0);
        walk(&Cli::command(), "tmc-relay", &mut missing, &mut seen);
        assert!(seen > 40, "only {seen} arguments found: the walk is broken");
        assert!(missing.is_empty(), "arguments without help: {missing:?}");
    }

    /// The command line as clap checks it (conflicts, defaults, value parsers).
    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
