//! Fault injection: what can go wrong between a client and the gateway, per method, drawn from
//! the seeded generator so a run can be replayed.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::rng::SplitMix64;

/// Faults per API method. Replaced as a whole by `set_faults` / `POST /_sim/faults`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Keyed by method name (`taobao.tmc.messages.consume`); the key `*` applies to every
    /// method without an entry of its own.
    pub per_method: BTreeMap<String, MethodFaults>,
}

impl Faults {
    /// No faults.
    pub fn none() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the faults of one method; `"*"` for every other method.
    pub fn with(mut self, method: &str, faults: MethodFaults) -> Self {
        self.per_method.insert(method.to_owned(), faults);
        self
    }

    /// The faults that apply to `method`.
    pub fn for_method(&self, method: &str) -> Option<&MethodFaults> {
        self.per_method
            .get(method)
            .or_else(|| self.per_method.get("*"))
    }

    /// Refuses rates outside `0..=1` (the admin API answers 400 with this text).
    pub fn validate(&self) -> Result<(), String> {
        for (method, f) in &self.per_method {
            for (name, rate) in f.rates() {
                if !(0.0..=1.0).contains(&rate) {
                    return Err(format!("{method}: {name} must be within 0..=1, got {rate}"));
                }
            }
        }
        Ok(())
    }

    /// Clamps rates into `0..=1` (NaN becomes 0), for in-process callers that skip `validate`.
    pub(crate) fn clamped(mut self) -> Self {
        for f in self.per_method.values_mut() {
            for rate in [
                &mut f.error_rate,
                &mut f.ban_rate,
                &mut f.http502_rate,
                &mut f.malformed_rate,
                &mut f.reset_rate,
                &mut f.confirm_false_rate,
            ] {
                *rate = if rate.is_nan() {
                    0.0
                } else {
                    rate.clamp(0.0, 1.0)
                };
            }
        }
        self
    }
}

/// What can go wrong with one method. Rates are probabilities per call; one draw per call
/// picks at most one fault, checked in field order (so rates summing above 1 crowd out the
/// later kinds).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MethodFaults {
    /// Added to every call of the method, after the work is done: a client that times out
    /// has still had its messages leased. `latency_ms` in JSON.
    #[serde(rename = "latency_ms", with = "duration_ms")]
    pub latency: Duration,
    /// An error response before anything changes: by default a transient platform error
    /// (code 15 `isp.top-remote-connection-timeout` or code 10), or `error` when given.
    pub error_rate: f64,
    /// The error `error_rate` answers with, when a test needs a particular code (a permission
    /// error, an `isv.*` refusal, an unknown code) at a rate rather than scripted once.
    pub error: Option<InjectedError>,
    /// A call-limit error (code 7), before anything changes; the method then stays banned
    /// for `ban_secs` of the simulator's clock.
    pub ban_rate: f64,
    /// The ban length announced in `sub_msg` and enforced.
    pub ban_secs: u64,
    /// HTTP 502 with the front proxy's HTML page, before anything changes.
    pub http502_rate: f64,
    /// HTTP 200 with the real answer cut in half, after the work is done (consume: the
    /// messages are leased and come back when the lease ends).
    pub malformed_rate: f64,
    /// The connection is dropped without a response, after the work is done.
    pub reset_rate: f64,
    /// Confirm only: `is_success=false` and nothing is confirmed.
    pub confirm_false_rate: f64,
}

impl MethodFaults {
    fn rates(&self) -> [(&'static str, f64); 6] {
        [
            ("error_rate", self.error_rate),
            ("ban_rate", self.ban_rate),
            ("http502_rate", self.http502_rate),
            ("malformed_rate", self.malformed_rate),
            ("reset_rate", self.reset_rate),
            ("confirm_false_rate", self.confirm_false_rate),
        ]
    }
}

/// An error response chosen by the caller: `{"code":11,"sub_code":"isv.permission-api-package-limit"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectedError {
    /// The platform code, sent as a JSON number.
    pub code: i64,
    /// The short message; the platform's usual text for the code when absent.
    #[serde(default)]
    pub msg: Option<String>,
    #[serde(default)]
    pub sub_code: Option<String>,
    #[serde(default)]
    pub sub_msg: Option<String>,
}

/// A canned answer for the next call of a method, given instead of normal handling (after the
/// signature is verified).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scripted {
    /// HTTP status, 200..=599.
    pub status: u16,
    /// The body, sent as is.
    #[serde(default)]
    pub body: String,
    /// `None` means `application/json;charset=UTF-8`.
    #[serde(default)]
    pub content_type: Option<String>,
    /// Drop the connection without answering (status and body are ignored).
    #[serde(default)]
    pub reset_connection: bool,
}

impl Scripted {
    /// HTTP 200 with a JSON body.
    pub fn json(body: impl Into<String>) -> Self {
        Self {
            status: 200,
            body: body.into(),
            content_type: None,
            reset_connection: false,
        }
    }

    /// Any status and body, JSON content type.
    pub fn status(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            ..Self::json(body)
        }
    }

    /// The connection is dropped without a response.
    pub fn reset() -> Self {
        Self {
            reset_connection: true,
            ..Self::json("")
        }
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if !(200..=599).contains(&self.status) {
            return Err(format!(
                "status must be within 200..=599, got {}",
                self.status
            ));
        }
        Ok(())
    }
}

/// The fault a call gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Transient platform error; `code10` picks code 10 over code 15 `isp.*`.
    Error {
        code10: bool,
    },
    Ban {
        secs: u64,
    },
    Http502,
    Malformed,
    Reset,
    ConfirmFalse,
}

impl Fault {
    /// The name counted in `SimState::faults_injected`.
    pub(crate) fn kind(self) -> &'static str {
        match self {
            Fault::Error { .. } => "error",
            Fault::Ban { .. } => "ban",
            Fault::Http502 => "http502",
            Fault::Malformed => "malformed",
            Fault::Reset => "reset",
            Fault::ConfirmFalse => "confirm_false",
        }
    }
}

/// One draw per call of a method that has faults configured.
pub(crate) fn draw(f: &MethodFaults, is_confirm: bool, rng: &mut SplitMix64) -> Option<Fault> {
    let u = rng.next_f64();
    let mut edge = 0.0;
    let mut hit = |rate: f64| {
        edge += rate;
        u < edge
    };
    if hit(f.error_rate) {
        return Some(Fault::Error {
            code10: rng.chance(0.5),
        });
    }
    if hit(f.ban_rate) {
        return Some(Fault::Ban { secs: f.ban_secs });
    }
    if hit(f.http502_rate) {
        return Some(Fault::Http502);
    }
    if hit(f.malformed_rate) {
        return Some(Fault::Malformed);
    }
    if hit(f.reset_rate) {
        return Some(Fault::Reset);
    }
    if is_confirm && hit(f.confirm_false_rate) {
        return Some(Fault::ConfirmFalse);
    }
    None
}

/// What the front proxy answers when the platform behind it is unreachable.
pub(crate) const BAD_GATEWAY_HTML: &str = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>Tengine</center>\r\n</body>\r\n</html>\r\n";

/// The first half of a body: never valid JSON when the body was a JSON object.
pub(crate) fn truncate_half(body: &str) -> String {
    let mut cut = body.len() / 2;
    while !body.is_char_boundary(cut) {
        cut -= 1;
    }
    body[..cut].to_owned()
}

mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same seed gives the same faults; the rates are roughly honoured.
    #[test]
    fn draws_are_deterministic_and_follow_rates() {
        let f = MethodFaults {
            error_rate: 0.1,
            http502_rate: 0.2,
            ..MethodFaults::default()
        };
        let run = |seed| {
            let mut rng = SplitMix64::new(seed);
            (0..10_000)
                .map(|_| draw(&f, false, &mut rng))
                .collect::<Vec<_>>()
        };
        let a = run(1);
        assert_eq!(a, run(1));
        assert_ne!(a, run(2));
        let errors = a
            .iter()
            .filter(|x| matches!(x, Some(Fault::Error { .. })))
            .count();
        let bad_gw = a.iter().filter(|x| **x == Some(Fault::Http502)).count();
        assert!((800..1200).contains(&errors), "{errors}");
        assert!((1700..2300).contains(&bad_gw), "{bad_gw}");
    }

    /// confirm_false only applies to confirm; rate 1 always fires.
    #[test]
    fn confirm_false_is_confirm_only() {
        let f = MethodFaults {
            confirm_false_rate: 1.0,
            ..MethodFaults::default()
        };
        let mut rng = SplitMix64::new(1);
        assert_eq!(draw(&f, true, &mut rng), Some(Fault::ConfirmFalse));
        assert_eq!(draw(&f, false, &mut rng), None);
    }

    /// The JSON form uses latency_ms and defaults every missing field; bad rates are named.
    #[test]
    fn json_form_and_validation() {
        let f: Faults = serde_json::from_str(
            r#"{"per_method":{"*":{"latency_ms":250,"reset_rate":0.5},"taobao.tmc.messages.confirm":{"confirm_false_rate":1}}}"#,
        )
        .unwrap();
        assert_eq!(
            f.for_method("taobao.tmc.groups.get").unwrap().latency,
            Duration::from_millis(250)
        );
        assert_eq!(
            f.for_method("taobao.tmc.messages.confirm")
                .unwrap()
                .confirm_false_rate,
            1.0
        );
        assert!(f.validate().is_ok());
        let bad = Faults::none().with(
            "m",
            MethodFaults {
                ban_rate: 1.5,
                ..MethodFaults::default()
            },
        );
        assert!(bad.validate().unwrap_err().contains("ban_rate"));
        assert_eq!(bad.clamped().per_method["m"].ban_rate, 1.0);
        assert!(serde_json::from_str::<Faults>(r#"{"per_method":{"m":{"eror_rate":1}}}"#).is_err());
        let coded: Faults = serde_json::from_str(
            r#"{"per_method":{"m":{"error_rate":1,"error":{"code":11,"sub_code":"isv.permission-ip-whitelist-limit"}}}}"#,
        )
        .unwrap();
        let err = coded.per_method["m"].error.as_ref().unwrap();
        assert_eq!((err.code, err.msg.as_deref()), (11, None));
        assert_eq!(
            err.sub_code.as_deref(),
            Some("isv.permission-ip-whitelist-limit")
        );
    }

    /// A cut body is shorter, on a character boundary, and not JSON.
    #[test]
    fn truncation_breaks_json() {
        let body = r#"{"messages":[{"user_nick":"商家测试帐号"}]}"#;
        let cut = truncate_half(body);
        assert!(cut.len() < body.len());
        assert!(serde_json::from_str::<serde_json::Value>(&cut).is_err());
    }
}
