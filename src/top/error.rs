//! The one error type of the TOP client and the only question callers ask of it: what now?

use std::time::Duration;

/// How long to stay away after a call-limit error whose `sub_msg` does not say.
pub const DEFAULT_BAN: Duration = Duration::from_secs(60);

/// Everything a TOP call can fail with. No variant ever holds the app secret or a session key.
#[derive(Debug, thiserror::Error)]
pub enum TopError {
    /// The gateway answered with an `error_response`.
    #[error("{method}: TOP error {code}{}: {msg}{}{}", sub_code.as_deref().map(|s| format!(" ({s})")).unwrap_or_default(), sub_msg.as_deref().map(|s| format!(": {s}")).unwrap_or_default(), request_id.as_deref().map(|s| format!(" [request_id {s}]")).unwrap_or_default())]
    Api {
        /// The API method that failed, e.g. `taobao.tmc.messages.consume`.
        method: &'static str,
        /// The numeric error code (sent as a number or a string; unparseable codes become -1).
        code: i64,
        /// `msg`, empty when absent.
        msg: String,
        /// `sub_code`, which refines the class (`isp.*` transient, `isv.*` the request's fault).
        sub_code: Option<String>,
        /// `sub_msg`, which carries the ban length for call limits.
        sub_msg: Option<String>,
        /// For support tickets with the platform.
        request_id: Option<String>,
    },
    /// The gateway answered with a non-success HTTP status and no error envelope.
    #[error("{method}: HTTP {status} from the gateway: {body_head:?}")]
    Http {
        method: &'static str,
        status: u16,
        /// The first bytes of the body, for diagnosis.
        body_head: String,
    },
    /// The body was not the JSON this method returns (HTML page, truncated JSON, wrong types).
    #[error("{method}: undecodable response (HTTP {status}): {reason}; body starts {body_head:?}")]
    Decode {
        method: &'static str,
        status: u16,
        reason: String,
        body_head: String,
    },
    /// The response body exceeded the client's cap; nothing past the cap was read.
    #[error("{method}: response body larger than {limit} bytes")]
    TooLarge { method: &'static str, limit: usize },
    /// Connection refused or reset, DNS, TLS, or a timeout.
    #[error("{method}: transport error{}: {detail}", if *timeout { " (timeout)" } else { "" })]
    Transport {
        method: &'static str,
        /// True when the request or connection timed out.
        timeout: bool,
        detail: String,
    },
    /// The caller asked for something the API does not allow; nothing was sent.
    #[error("{method}: invalid request: {reason}")]
    InvalidRequest {
        method: &'static str,
        reason: String,
    },
    /// The caller's deadline had passed before the call could be made.
    #[error("{method}: deadline reached before the call could complete")]
    Deadline { method: &'static str },
}

/// What a caller should do about an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Call limit hit: stay away for `ban`. Never hammer.
    RateLimited { ban: Duration },
    /// Platform-side or network trouble: retry with backoff.
    Transient,
    /// This request is wrong and will fail again; other requests may succeed.
    Permanent,
    /// Configuration or clock is wrong; nothing will succeed until `check` is fixed.
    Fatal { check: &'static str },
}

impl ErrorClass {
    pub fn is_retryable(&self) -> bool {
        matches!(self, ErrorClass::Transient)
    }
}

impl TopError {
    /// Classifies the error by the platform's rules (see docs: error codes and what to do).
    pub fn class(&self) -> ErrorClass {
        match self {
            TopError::Api {
                code,
                sub_code,
                sub_msg,
                ..
            } => classify_api(*code, sub_code.as_deref(), sub_msg.as_deref()),
            TopError::Http { status, .. } => match status {
                429 => ErrorClass::RateLimited { ban: DEFAULT_BAN },
                500..=599 | 408 => ErrorClass::Transient,
                300..=399 => ErrorClass::Fatal {
                    check:
                        "TOP_ENDPOINT (the gateway answered with a redirect, which is not followed)",
                },
                401 | 403 => ErrorClass::Fatal {
                    check: "TOP_ENDPOINT (the gateway refused access at the HTTP level)",
                },
                404 => ErrorClass::Fatal {
                    check: "TOP_ENDPOINT (no gateway at that path)",
                },
                _ => ErrorClass::Permanent,
            },
            // A proxy's HTML page or a cut-off body: the next attempt usually works.
            TopError::Decode { .. } | TopError::Transport { .. } | TopError::TooLarge { .. } => {
                ErrorClass::Transient
            }
            TopError::InvalidRequest { .. } => ErrorClass::Permanent,
            TopError::Deadline { .. } => ErrorClass::Transient,
        }
    }

    /// The TOP error code, for API errors.
    pub fn code(&self) -> Option<i64> {
        match self {
            TopError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub fn method(&self) -> &str {
        match self {
            TopError::Api { method, .. }
            | TopError::Http { method, .. }
            | TopError::Decode { method, .. }
            | TopError::TooLarge { method, .. }
            | TopError::Transport { method, .. }
            | TopError::InvalidRequest { method, .. }
            | TopError::Deadline { method } => method,
        }
    }
}

/// The classification table, as a pure function so it can be tested code by code.
pub fn classify_api(code: i64, sub_code: Option<&str>, sub_msg: Option<&str>) -> ErrorClass {
    let sub = sub_code.unwrap_or("");
    // Server-side sub-codes go away after a wait, whatever the code (e.g. 15 isp.*).
    if sub.starts_with("isp.") {
        return ErrorClass::Transient;
    }
    match code {
        4..=8 => ErrorClass::RateLimited {
            ban: sub_msg.and_then(parse_ban).unwrap_or(DEFAULT_BAN),
        },
        1 | 10 => ErrorClass::Transient,
        11..=13 => ErrorClass::Fatal {
            check: "the app's API permissions and IP whitelist on the TOP console",
        },
        21..=23 => ErrorClass::Fatal {
            check: "TOP_ENDPOINT and the API method name",
        },
        24 | 25 => ErrorClass::Fatal {
            check: "TOP_APP_SECRET / TOP_APP_SECRET_ARN (the app secret) and TOP_SIGN_METHOD",
        },
        26 | 27 => ErrorClass::Fatal {
            check: "the seller's session key (--session)",
        },
        28 | 29 => ErrorClass::Fatal {
            check: "TOP_APP_KEY",
        },
        30 | 31 => ErrorClass::Fatal {
            check: "the host clock (timestamps must be within 10 minutes of GMT+8 time)",
        },
        32..=34 => ErrorClass::Fatal {
            check: "the API version parameter v (must be 2.0)",
        },
        // 15 with isv.*, missing/invalid arguments (40, 41), encoding (43, 47) and anything
        // else we do not know: this request will fail again.
        _ => ErrorClass::Permanent,
    }
}

/// Extracts N from "This ban will last for N more seconds". The number is the platform's
/// text: one too large for 64 bits saturates (a ban longer than any budget is just that).
pub fn parse_ban(sub_msg: &str) -> Option<Duration> {
    let lower = sub_msg.to_ascii_lowercase();
    let idx = lower.find("last for")?;
    let rest = lower.get(idx + "last for".len()..)?.trim_start();
    let digits = rest.bytes().take_while(u8::is_ascii_digit);
    let mut secs: Option<u64> = None;
    for d in digits {
        let so_far = secs.unwrap_or(0);
        secs = Some(
            so_far
                .saturating_mul(10)
                .saturating_add(u64::from(d - b'0')),
        );
    }
    secs.map(Duration::from_secs)
}

/// The first `max` bytes of a body as text (lossy), for error evidence.
pub fn body_head(body: &[u8], max: usize) -> String {
    let cut = &body[..body.len().min(max)];
    String::from_utf8_lossy(cut).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row of the notes' error table lands in its class.
    #[test]
    fn classifies_the_documented_codes() {
        let ban = |s| ErrorClass::RateLimited {
            ban: Duration::from_secs(s),
        };
        assert_eq!(
            classify_api(
                7,
                Some("accesscontrol.limited-by-app-access-count"),
                Some("This ban will last for 31 more seconds")
            ),
            ban(31)
        );
        for code in [4, 5, 6, 8] {
            assert_eq!(
                classify_api(code, None, None),
                ErrorClass::RateLimited { ban: DEFAULT_BAN },
                "code {code}"
            );
        }
        for code in [1, 10] {
            assert_eq!(
                classify_api(code, None, None),
                ErrorClass::Transient,
                "code {code}"
            );
        }
        assert_eq!(
            classify_api(15, Some("isp.top-remote-connection-timeout"), None),
            ErrorClass::Transient
        );
        assert_eq!(
            classify_api(40, Some("isp.whatever"), None),
            ErrorClass::Transient
        );
        assert_eq!(
            classify_api(15, Some("isv.invalid-parameter"), None),
            ErrorClass::Permanent
        );
        for code in [40, 41, 43, 47, 99, 150, -1] {
            assert_eq!(
                classify_api(code, None, None),
                ErrorClass::Permanent,
                "code {code}"
            );
        }
        for code in [
            11, 12, 13, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34,
        ] {
            assert!(
                matches!(classify_api(code, None, None), ErrorClass::Fatal { .. }),
                "code {code}"
            );
        }
    }

    /// Fatal errors name what to check.
    #[test]
    fn fatal_errors_name_the_setting() {
        let check = |code| match classify_api(code, None, None) {
            ErrorClass::Fatal { check } => check,
            other => panic!("{other:?}"),
        };
        assert!(check(25).contains("TOP_APP_SECRET"));
        assert!(check(29).contains("TOP_APP_KEY"));
        assert!(check(31).contains("clock"));
        assert!(check(11).contains("permission"));
    }

    /// Ban lengths are read from sub_msg, and a sub_msg without one falls back.
    #[test]
    fn parses_ban_durations() {
        assert_eq!(
            parse_ban("This ban will last for 31 more seconds"),
            Some(Duration::from_secs(31))
        );
        assert_eq!(
            parse_ban("this ban will last for 1 more seconds"),
            Some(Duration::from_secs(1))
        );
        assert_eq!(parse_ban("App Call Limited"), None);
        for huge in [
            "This ban will last for 18446744073709551615 more seconds",
            "This ban will last for 99999999999999999999999999 more seconds",
        ] {
            assert_eq!(
                parse_ban(huge),
                Some(Duration::from_secs(u64::MAX)),
                "{huge}"
            );
        }
        assert_eq!(
            parse_ban("This ban will last for 9223372036854775807 more seconds"),
            Some(Duration::from_secs(i64::MAX as u64))
        );
        assert_eq!(parse_ban("This ban will last for many more seconds"), None);
        assert_eq!(
            classify_api(7, None, Some("busy")),
            ErrorClass::RateLimited { ban: DEFAULT_BAN }
        );
    }

    /// HTTP-level failures: 5xx transient, 429 a ban; undecodable bodies transient.
    #[test]
    fn classifies_http_and_transport() {
        let http = |status| TopError::Http {
            method: "m",
            status,
            body_head: String::new(),
        };
        assert_eq!(http(502).class(), ErrorClass::Transient);
        assert_eq!(
            http(429).class(),
            ErrorClass::RateLimited { ban: DEFAULT_BAN }
        );
        assert_eq!(http(400).class(), ErrorClass::Permanent);
        let t = TopError::Transport {
            method: "m",
            timeout: true,
            detail: "x".into(),
        };
        assert!(t.class().is_retryable());
        assert!(t.to_string().contains("timeout"));
    }

    /// The Display of an API error carries code, sub-code and request id.
    #[test]
    fn api_error_display() {
        let e = TopError::Api {
            method: "taobao.tmc.messages.consume",
            code: 7,
            msg: "App Call Limited".into(),
            sub_code: Some("accesscontrol.limited-by-app-access-count".into()),
            sub_msg: Some("This ban will last for 31 more seconds".into()),
            request_id: Some("abc".into()),
        };
        assert_eq!(
            e.to_string(),
            "taobao.tmc.messages.consume: TOP error 7 (accesscontrol.limited-by-app-access-count): App Call Limited: This ban will last for 31 more seconds [request_id abc]"
        );
    }
}
