//! The gateway side of a request: parameters from the query and the form body, the system
//! checks in the platform's order, and the error envelope.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::signature::{self, Algorithm};
use crate::wire::{method as api, parse_wire_time, response_key};

use super::SimConfig;

/// The methods the simulator serves, and whether each needs a seller `session`.
pub const KNOWN_METHODS: [(&str, bool); 12] = [
    (api::CONSUME, false),
    (api::CONFIRM, false),
    (api::USER_PERMIT, true),
    (api::USER_CANCEL, false),
    (api::USER_GET, false),
    (api::GROUPS_GET, false),
    (api::GROUP_ADD, false),
    (api::GROUP_DELETE, false),
    (api::QUEUE_GET, false),
    (api::JMS_USER_ADD, true),
    (api::JMS_USER_GET, false),
    (api::JMS_USER_DELETE, false),
];

/// The session value the simulator treats as expired or revoked (error 27).
pub const INVALID_SESSION: &str = "invalid-session";

/// An `error_response` the gateway answers with (HTTP 200, like the platform).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// The platform's error code (25 invalid signature, 41 invalid arguments, ...).
    pub code: i64,
    /// The platform's short message for the code.
    pub msg: String,
    /// The refinement clients classify by (`isv.*` the request's fault, `isp.*` transient).
    pub sub_code: Option<String>,
    /// What exactly was wrong, for a human.
    pub sub_msg: Option<String>,
}

impl ApiError {
    pub(crate) fn new(code: i64, msg: &str) -> Self {
        Self {
            code,
            msg: msg.to_owned(),
            sub_code: None,
            sub_msg: None,
        }
    }

    pub(crate) fn sub(mut self, sub_code: &str, sub_msg: impl Into<String>) -> Self {
        self.sub_code = Some(sub_code.to_owned());
        self.sub_msg = Some(sub_msg.into());
        self
    }

    pub(crate) fn detail(mut self, sub_msg: impl Into<String>) -> Self {
        self.sub_msg = Some(sub_msg.into());
        self
    }

    /// 40 with `isv.missing-parameter:<name>`.
    pub(crate) fn missing(name: &str) -> Self {
        Self::new(40, &format!("Missing required arguments:{name}")).sub(
            &format!("isv.missing-parameter:{name}"),
            format!("{name} is required"),
        )
    }

    /// 41 with `isv.invalid-parameter:<name>`.
    pub(crate) fn invalid(name: &str, why: impl Into<String>) -> Self {
        Self::new(41, &format!("Invalid arguments:{name}"))
            .sub(&format!("isv.invalid-parameter:{name}"), why)
    }

    /// 15 with an `isv.*` sub-code: the request breaks a business rule.
    pub(crate) fn business(sub_code: &str, why: impl Into<String>) -> Self {
        Self::new(15, "Remote service error").sub(sub_code, why)
    }

    /// The JSON body, `{"error_response":{...}}`.
    pub(crate) fn body(&self, request_id: &str) -> String {
        let mut e = Map::new();
        e.insert("code".into(), json!(self.code));
        e.insert("msg".into(), json!(self.msg));
        if let Some(s) = &self.sub_code {
            e.insert("sub_code".into(), json!(s));
        }
        if let Some(s) = &self.sub_msg {
            e.insert("sub_msg".into(), json!(s));
        }
        e.insert("request_id".into(), json!(request_id));
        json!({ "error_response": e }).to_string()
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.msg)?;
        if let Some(s) = &self.sub_code {
            write!(f, " ({s})")?;
        }
        if let Some(s) = &self.sub_msg {
            write!(f, ": {s}")?;
        }
        Ok(())
    }
}

/// Every parameter of a request, query first then form body, as received. Values can hold
/// the seller's session key, so `Debug` shows names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RequestParams {
    pairs: Vec<(String, String)>,
}

impl fmt::Debug for RequestParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.pairs.iter().map(|(k, _)| k))
            .finish()
    }
}

impl RequestParams {
    /// Merges the query string and an `application/x-www-form-urlencoded` body (pass `None`
    /// for any other body). Percent-escapes must decode to UTF-8 (47 otherwise).
    pub fn parse(query: Option<&str>, form_body: Option<&[u8]>) -> Result<Self, ApiError> {
        let mut pairs = Vec::new();
        for part in [query.map(str::as_bytes), form_body].into_iter().flatten() {
            for field in part.split(|b| *b == b'&').filter(|f| !f.is_empty()) {
                let (name, value) = match field.iter().position(|b| *b == b'=') {
                    Some(i) => (&field[..i], &field[i + 1..]),
                    None => (field, &field[..0]),
                };
                let name = decode_component(name)?;
                let value = decode_component(value).map_err(|e| {
                    ApiError::new(47, "Invalid encoding")
                        .detail(format!("the value of {name} is not UTF-8 ({})", e.0))
                })?;
                pairs.push((name, value));
            }
        }
        Ok(Self { pairs })
    }

    /// Builds a parameter set directly (unit tests and callers that already hold pairs).
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            pairs: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// The first value of `name`; an empty value counts as absent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// Every pair as received.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }
}

struct BadEncoding(String);

impl From<BadEncoding> for ApiError {
    fn from(e: BadEncoding) -> Self {
        ApiError::new(47, "Invalid encoding")
            .detail(format!("a parameter name is not UTF-8 ({})", e.0))
    }
}

/// `+` is a space and `%XX` a byte; a `%` not followed by two hex digits stays literal (as in
/// the WHATWG form decoder). The bytes must be UTF-8.
fn decode_component(raw: &[u8]) -> Result<String, BadEncoding> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let digit = |at: usize| raw.get(at).and_then(|b| hex(*b));
                match (digit(i + 1), digit(i + 2)) {
                    (Some(h), Some(l)) => {
                        out.push(h << 4 | l);
                        i += 3;
                    }
                    _ => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|e| BadEncoding(e.utf8_error().to_string()))
}

/// What a verified request asks for.
#[derive(Clone, PartialEq, Eq)]
pub struct Verified {
    /// A method from [`KNOWN_METHODS`].
    pub method: String,
    /// The algorithm the signature was checked with.
    pub sign_method: Algorithm,
    /// `simplify=true`: answer flat JSON with plain arrays.
    pub simplify: bool,
    /// The seller's session key, when sent (never logged).
    pub session: Option<String>,
}

impl fmt::Debug for Verified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verified")
            .field("method", &self.method)
            .field("sign_method", &self.sign_method)
            .field("simplify", &self.simplify)
            .field("session", &self.session.as_ref().map(|_| "***"))
            .finish()
    }
}

/// The gateway's system checks, in order: method (21), app key (28, 29), signature (24, 25),
/// timestamp (30, 31; against the real wall clock `wall_now`), version (32, 33, 34), format
/// (23), method known (22), session (26, 27), then empty or repeated parameters (41).
pub fn verify_request(
    params: &RequestParams,
    cfg: &SimConfig,
    wall_now: SystemTime,
) -> Result<Verified, ApiError> {
    let method = params
        .get("method")
        .ok_or_else(|| ApiError::new(21, "Missing method"))?;
    let app_key = params
        .get("app_key")
        .ok_or_else(|| ApiError::new(28, "Missing app key"))?;
    if app_key != cfg.app_key {
        return Err(ApiError::new(29, "Invalid app key").detail("no app with this app_key"));
    }
    let received = params
        .get("sign")
        .ok_or_else(|| ApiError::new(24, "Missing signature"))?;
    let sign_method = match params.get("sign_method") {
        None => Algorithm::Md5,
        Some(m) => Algorithm::from_wire(m).ok_or_else(|| {
            ApiError::new(25, "Invalid signature")
                .detail("sign_method must be md5, hmac or hmac-sha256")
        })?,
    };
    let expected = signature::expected(&params.pairs, &cfg.app_secret, sign_method);
    if !signature::matches(received, &expected) {
        return Err(ApiError::new(25, "Invalid signature").detail(format!(
            "the {sign_method} signature of the sorted parameters does not match"
        )));
    }
    let timestamp = params
        .get("timestamp")
        .ok_or_else(|| ApiError::new(30, "Missing timestamp"))?;
    check_timestamp(timestamp, wall_now, cfg.max_skew)?;
    match params.get("v") {
        None => return Err(ApiError::new(32, "Missing version")),
        Some("2.0") => {}
        Some(v) if is_version_number(v) => {
            return Err(ApiError::new(34, "Unsupported version").detail("only v=2.0 is served"))
        }
        Some(_) => return Err(ApiError::new(33, "Invalid version")),
    }
    match params.get("format") {
        Some(f) if f.eq_ignore_ascii_case("json") => {}
        Some(_) => {
            return Err(ApiError::new(23, "Invalid format")
                .detail("this simulator answers json only; send format=json"))
        }
        None => {
            return Err(ApiError::new(23, "Invalid format")
                .detail("format is missing: the real gateway would answer XML; send format=json"))
        }
    }
    let Some(&(method, needs_session)) = KNOWN_METHODS.iter().find(|(m, _)| *m == method) else {
        return Err(ApiError::new(22, "Invalid method").detail(format!("no method {method}")));
    };
    let session = params.get("session");
    if needs_session && session.is_none() {
        return Err(ApiError::new(26, "Missing session"));
    }
    if session == Some(INVALID_SESSION) {
        return Err(
            ApiError::new(27, "Invalid session").detail("the session key is expired or revoked")
        );
    }
    if let Some((name, _)) = params.pairs.iter().find(|(_, v)| v.is_empty()) {
        return Err(ApiError::invalid(
            name,
            format!("{name} has an empty value; SDKs disagree on whether empty values are signed, so never send one"),
        ));
    }
    for (i, (name, _)) in params.pairs.iter().enumerate() {
        if params.pairs[..i].iter().any(|(n, _)| n == name) {
            return Err(ApiError::invalid(
                name,
                format!("{name} is sent more than once"),
            ));
        }
    }
    Ok(Verified {
        method: method.to_owned(),
        sign_method,
        simplify: params
            .get("simplify")
            .is_some_and(|s| s.eq_ignore_ascii_case("true")),
        session: session.map(str::to_owned),
    })
}

/// `yyyy-MM-dd HH:mm:ss` in GMT+8, or epoch milliseconds (the Python SDK), within `max_skew`.
fn check_timestamp(ts: &str, wall_now: SystemTime, max_skew: Duration) -> Result<(), ApiError> {
    let invalid = |why: String| ApiError::new(31, "Invalid timestamp").detail(why);
    let at = if !ts.is_empty() && ts.len() <= 15 && ts.bytes().all(|b| b.is_ascii_digit()) {
        let ms: u64 = ts
            .parse()
            .map_err(|_| invalid(format!("{ts:?} is not epoch milliseconds")))?;
        UNIX_EPOCH + Duration::from_millis(ms)
    } else {
        parse_wire_time(ts).ok_or_else(|| {
            invalid(format!(
                "{ts:?} is neither yyyy-MM-dd HH:mm:ss (GMT+8) nor epoch milliseconds"
            ))
        })?
    };
    let skew = match wall_now.duration_since(at) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    if skew > max_skew {
        return Err(invalid(format!(
            "{ts:?} is {} s away from the gateway's time (GMT+8); at most {} s are allowed",
            skew.as_secs(),
            max_skew.as_secs()
        )));
    }
    Ok(())
}

fn is_version_number(v: &str) -> bool {
    !v.is_empty()
        && v.split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// A strict non-negative integer: ASCII digits only, no sign, no spaces.
pub(crate) fn parse_uint(name: &str, raw: &str) -> Result<u64, ApiError> {
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::invalid(
            name,
            format!("{name} must be an integer, got {raw:?}"),
        ));
    }
    raw.parse()
        .map_err(|_| ApiError::invalid(name, format!("{name} is out of range: {raw}")))
}

/// A comma list without empty items, at most `max` long.
pub(crate) fn comma_list<'a>(
    name: &str,
    raw: &'a str,
    max: usize,
) -> Result<Vec<&'a str>, ApiError> {
    let items: Vec<&str> = raw.split(',').collect();
    if items.iter().any(|s| s.trim().is_empty()) {
        return Err(ApiError::invalid(name, format!("{name} has an empty item")));
    }
    if items.len() > max {
        return Err(ApiError::invalid(
            name,
            format!(
                "{name} has {} items, at most {max} are allowed",
                items.len()
            ),
        ));
    }
    Ok(items.into_iter().map(str::trim).collect())
}

/// How the answer is shaped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    /// `<name>_response` root, lists wrapped by item type.
    Plain,
    /// Flat, lists as arrays (`simplify=true`).
    Simplified,
}

impl Shape {
    /// A list: a plain array, or `{"<item>":[...]}`.
    pub(crate) fn list(self, item: &str, items: Vec<Value>) -> Value {
        match self {
            Shape::Simplified => Value::Array(items),
            Shape::Plain => {
                let mut m = Map::new();
                m.insert(item.to_owned(), Value::Array(items));
                Value::Object(m)
            }
        }
    }

    /// The success body around a method's fields.
    pub(crate) fn body(
        self,
        method: &str,
        mut fields: Map<String, Value>,
        request_id: &str,
    ) -> String {
        fields.insert("request_id".into(), json!(request_id));
        match self {
            Shape::Simplified => Value::Object(fields).to_string(),
            Shape::Plain => {
                let mut root = Map::new();
                root.insert(response_key(method), Value::Object(fields));
                Value::Object(root).to_string()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::wire_timestamp;

    /// The protocol notes' signing vectors, the same table the client's tests read.
    const VECTORS: &str = include_str!("../../../tests/data/sign-vectors.json");

    /// One vector set: its secret, its parameters without `sign_method`, and the signature per
    /// method.
    struct VectorSet {
        secret: String,
        params: Vec<(String, String)>,
        signatures: Vec<(String, String)>,
    }

    fn vector_set(name: &str) -> VectorSet {
        let all: Value = serde_json::from_str(VECTORS).unwrap();
        let set = all["sets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no vector set {name}"));
        let text = |v: &Value| v.as_str().unwrap().to_owned();
        VectorSet {
            secret: text(&set["secret"]),
            params: set["params"]
                .as_array()
                .unwrap()
                .iter()
                .map(|kv| (text(&kv[0]), text(&kv[1])))
                .collect(),
            signatures: set["signatures"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(m, s)| (m.clone(), text(s)))
                .collect(),
        }
    }

    impl VectorSet {
        /// The parameters as sent with `sign_method` and `sign`.
        fn request(&self, sign_method: &str, signature: &str) -> Vec<(String, String)> {
            let mut p = self.params.clone();
            p.push(("sign_method".into(), sign_method.into()));
            p.push(("sign".into(), signature.into()));
            p
        }
    }

    fn cfg() -> SimConfig {
        SimConfig {
            app_key: "12345678".into(),
            app_secret: "helloworld".into(),
            ..SimConfig::default()
        }
    }

    /// 2016-01-01 12:00:00 GMT+8, the vectors' timestamp.
    fn vector_now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_451_620_800)
    }

    fn consume_params(sign_method: &str, signature: &str) -> Vec<(String, String)> {
        vector_set("taobao.tmc.messages.consume").request(sign_method, signature)
    }

    /// Re-signs after editing, so each check is reached on its own.
    fn signed(mut pairs: Vec<(String, String)>, secret: &str) -> RequestParams {
        pairs.retain(|(k, _)| k != "sign");
        let m = pairs
            .iter()
            .find(|(k, _)| k == "sign_method")
            .and_then(|(_, v)| Algorithm::from_wire(v))
            .unwrap_or(Algorithm::Md5);
        let s = signature::expected(&pairs, secret, m);
        pairs.push(("sign".into(), s));
        RequestParams::from_pairs(pairs)
    }

    fn code(params: &RequestParams) -> i64 {
        verify_request(params, &cfg(), vector_now())
            .unwrap_err()
            .code
    }

    fn edit(f: impl FnOnce(&mut Vec<(String, String)>)) -> RequestParams {
        let mut p = consume_params("md5", "");
        f(&mut p);
        signed(p, "helloworld")
    }

    fn set(p: &mut Vec<(String, String)>, k: &str, v: &str) {
        p.retain(|(n, _)| n != k);
        p.push((k.into(), v.into()));
    }

    fn remove(p: &mut Vec<(String, String)>, k: &str) {
        p.retain(|(n, _)| n != k);
    }

    /// The documented consume vectors verify with all three methods, and the signature the
    /// gateway computes is exactly the documented one.
    #[test]
    fn documented_vectors_verify() {
        let set = vector_set("taobao.tmc.messages.consume");
        assert_eq!(set.signatures.len(), 3);
        for (m, s) in &set.signatures {
            let p = RequestParams::from_pairs(set.request(m, s));
            let v = verify_request(&p, &cfg(), vector_now()).unwrap();
            assert_eq!(v.sign_method.wire_name(), m);
            assert!(v.simplify);
            let alg = Algorithm::from_wire(m).unwrap();
            assert_eq!(&signature::expected(p.pairs(), &set.secret, alg), s);
            // Lower-case hex is the same signature.
            let p = RequestParams::from_pairs(set.request(m, &s.to_ascii_lowercase()));
            assert!(verify_request(&p, &cfg(), vector_now()).is_ok());
        }
    }

    /// The documented confirm vectors verify with all three methods.
    #[test]
    fn confirm_vectors_verify() {
        let set = vector_set("taobao.tmc.messages.confirm");
        assert_eq!(set.signatures.len(), 3);
        for (m, s) in &set.signatures {
            let p = RequestParams::from_pairs(set.request(m, s));
            assert!(verify_request(&p, &cfg(), vector_now()).is_ok(), "{m}");
        }
    }

    /// The notes' other vectors (item.seller.get; user.get with Chinese text) give exactly the
    /// documented signatures and pass the signature check: the request gets as far as the
    /// method (22) or, for the vector's odd timestamp, the clock (31), never 25. An md5
    /// signature sent as `hmac` is refused.
    #[test]
    fn remaining_vectors_pass_the_signature_check() {
        let item = vector_set("taobao.item.seller.get");
        assert_eq!(item.signatures.len(), 3);
        for (m, s) in &item.signatures {
            let p = RequestParams::from_pairs(item.request(m, s));
            let alg = Algorithm::from_wire(m).unwrap();
            assert_eq!(&signature::expected(p.pairs(), &item.secret, alg), s);
            assert_eq!(code(&p), 22, "{m}");
        }
        let md5 = &item.signatures.iter().find(|(m, _)| m == "md5").unwrap().1;
        assert_eq!(
            code(&RequestParams::from_pairs(item.request("hmac", md5))),
            25
        );

        let utf8 = vector_set("taobao.user.get (UTF-8 values)");
        let (m, s) = &utf8.signatures[0];
        let p = RequestParams::from_pairs(utf8.request(m, s));
        assert_eq!(
            &signature::expected(p.pairs(), &utf8.secret, Algorithm::Md5),
            s
        );
        let test_app = SimConfig {
            app_key: "test".into(),
            app_secret: utf8.secret.clone(),
            ..SimConfig::default()
        };
        let e = verify_request(&p, &test_app, vector_now()).unwrap_err();
        assert_eq!(e.code, 31, "{e:?}");
    }

    /// Signature comparison ignores hex case and refuses other lengths and any other digit.
    #[test]
    fn signature_comparison() {
        assert!(signature::matches("abcdef", "ABCDEF"));
        assert!(!signature::matches("ABCDE0", "ABCDEF"));
        assert!(!signature::matches("ABCDEF00", "ABCDEF"));
        assert!(!signature::matches("", "ABCDEF"));
    }

    /// Each system check answers its code, in the documented order.
    #[test]
    fn system_checks_answer_their_codes() {
        assert_eq!(code(&edit(|p| remove(p, "method"))), 21);
        assert_eq!(code(&edit(|p| remove(p, "app_key"))), 28);
        assert_eq!(code(&edit(|p| set(p, "app_key", "other"))), 29);
        let mut unsigned = consume_params("md5", "");
        remove(&mut unsigned, "sign");
        assert_eq!(code(&RequestParams::from_pairs(unsigned)), 24);
        assert_eq!(code(&signed(consume_params("md5", ""), "wrong-secret")), 25);
        assert_eq!(code(&edit(|p| set(p, "sign_method", "sha1"))), 25);
        assert_eq!(code(&edit(|p| remove(p, "timestamp"))), 30);
        assert_eq!(
            code(&edit(|p| set(p, "timestamp", "2016-01-01 12:10:01"))),
            31
        );
        assert_eq!(
            code(&edit(|p| set(p, "timestamp", "2016/01/01 12:00:00"))),
            31
        );
        assert_eq!(code(&edit(|p| remove(p, "v"))), 32);
        assert_eq!(code(&edit(|p| set(p, "v", "two"))), 33);
        assert_eq!(code(&edit(|p| set(p, "v", "1.0"))), 34);
        assert_eq!(code(&edit(|p| set(p, "format", "xml"))), 23);
        assert_eq!(code(&edit(|p| remove(p, "format"))), 23);
        assert_eq!(code(&edit(|p| set(p, "method", "taobao.tmc.nope"))), 22);
        assert_eq!(code(&edit(|p| set(p, "quantity", ""))), 41);
        assert_eq!(
            code(&edit(|p| p.push(("group_name".into(), "g2".into())))),
            41
        );
        // Earlier checks win: a missing method with a bad signature is 21, not 25.
        let mut p = consume_params("md5", "BAD");
        remove(&mut p, "method");
        assert_eq!(code(&RequestParams::from_pairs(p)), 21);
    }

    /// sign_method absent means md5.
    #[test]
    fn absent_sign_method_is_md5() {
        let p = edit(|p| remove(p, "sign_method"));
        assert_eq!(
            verify_request(&p, &cfg(), vector_now())
                .unwrap()
                .sign_method,
            Algorithm::Md5
        );
    }

    /// Skew is allowed up to max_skew either way; epoch milliseconds are accepted too.
    #[test]
    fn timestamp_skew_and_forms() {
        let ok = |ts: &str| {
            verify_request(&edit(|p| set(p, "timestamp", ts)), &cfg(), vector_now()).is_ok()
        };
        assert!(ok("2016-01-01 12:10:00"));
        assert!(ok("2016-01-01 11:50:00"));
        assert!(!ok("2016-01-01 11:49:59"));
        assert!(ok("1451620800000"));
        assert!(ok("1451621400000"));
        assert!(!ok("1451621400001"));
        let now = SystemTime::now();
        let p = edit(|p| set(p, "timestamp", &wire_timestamp(now)));
        assert!(verify_request(&p, &cfg(), now).is_ok());
    }

    /// Sessions: required by permit (26), refused when revoked (27).
    #[test]
    fn session_checks() {
        let permit = |session: Option<&str>| {
            edit(|p| {
                set(p, "method", "taobao.tmc.user.permit");
                if let Some(s) = session {
                    set(p, "session", s);
                }
            })
        };
        assert_eq!(code(&permit(None)), 26);
        assert_eq!(code(&permit(Some(INVALID_SESSION))), 27);
        let v = verify_request(&permit(Some("sess-买家")), &cfg(), vector_now()).unwrap();
        assert_eq!(v.session.as_deref(), Some("sess-买家"));
    }

    /// Query and form body merge; `+`, escapes and UTF-8 decode; bad UTF-8 is 47.
    #[test]
    fn parses_query_and_body() {
        let p = RequestParams::parse(
            Some("method=a.b&sign=X&nick=%E5%95%86+1"),
            Some(b"topics=a%2Cb&x=1%zz&flag"),
        )
        .unwrap();
        assert_eq!(p.get("method"), Some("a.b"));
        assert_eq!(p.get("nick"), Some("商 1"));
        assert_eq!(p.get("topics"), Some("a,b"));
        assert_eq!(p.get("x"), Some("1%zz"));
        assert_eq!(p.get("flag"), None);
        assert_eq!(p.pairs().len(), 6);
        let e = RequestParams::parse(Some("nick=%FF%FE"), None).unwrap_err();
        assert_eq!(e.code, 47);
        assert!(!format!("{p:?}").contains("商"));
    }

    /// The error body carries code, msg, sub-code and request id.
    #[test]
    fn error_body_shape() {
        let body = ApiError::invalid("quantity", "too big").body("rid");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error_response"]["code"], 41);
        assert_eq!(v["error_response"]["msg"], "Invalid arguments:quantity");
        assert_eq!(
            v["error_response"]["sub_code"],
            "isv.invalid-parameter:quantity"
        );
        assert_eq!(v["error_response"]["request_id"], "rid");
    }
}
