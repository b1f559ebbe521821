//! TOP request signing: a pure function of the parameters, the secret and the method.

use std::fmt::Write as _;
use std::str::FromStr;

use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;

use super::Secret;

/// The three signature algorithms the gateway accepts (`sign_method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SignMethod {
    /// `MD5(secret + s + secret)`.
    Md5,
    /// `HMAC-MD5(secret, s)`.
    Hmac,
    /// `HMAC-SHA256(secret, s)`; what current SDKs default to.
    HmacSha256,
}

impl SignMethod {
    pub const ALL: [SignMethod; 3] = [SignMethod::Md5, SignMethod::Hmac, SignMethod::HmacSha256];

    /// The wire value of `sign_method`.
    pub fn as_str(self) -> &'static str {
        match self {
            SignMethod::Md5 => "md5",
            SignMethod::Hmac => "hmac",
            SignMethod::HmacSha256 => "hmac-sha256",
        }
    }
}

impl std::fmt::Display for SignMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SignMethod {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "md5" => Ok(SignMethod::Md5),
            "hmac" => Ok(SignMethod::Hmac),
            "hmac-sha256" => Ok(SignMethod::HmacSha256),
            other => Err(format!(
                "unknown sign method {other:?}: expected md5, hmac or hmac-sha256"
            )),
        }
    }
}

/// The string that is signed: every parameter except `sign`, sorted by name in byte order,
/// each written as `name` + `value` with no separators.
pub fn string_to_sign<'a, I>(params: I) -> String
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let mut sorted: Vec<(&str, &str)> = params.into_iter().filter(|(k, _)| *k != "sign").collect();
    sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut s = String::with_capacity(sorted.iter().map(|(k, v)| k.len() + v.len()).sum());
    for (k, v) in sorted {
        s.push_str(k);
        s.push_str(v);
    }
    s
}

/// Signs a parameter set; returns upper-case hex.
pub fn sign<'a, I>(params: I, secret: &Secret, method: SignMethod) -> String
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let s = string_to_sign(params);
    let key = secret.expose().as_bytes();
    let digest: Vec<u8> = match method {
        SignMethod::Md5 => {
            let mut h = Md5::new();
            h.update(key);
            h.update(s.as_bytes());
            h.update(key);
            h.finalize().to_vec()
        }
        SignMethod::Hmac => {
            let mut mac =
                <Hmac<Md5> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
            mac.update(s.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
        SignMethod::HmacSha256 => {
            let mut mac =
                <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
            mac.update(s.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
    };
    upper_hex(&digest)
}

/// Constant-time comparison of a received signature with the expected one (case-insensitive
/// hex), for the simulator's gateway side.
pub fn signature_matches(received: &str, expected: &str) -> bool {
    let a = received.as_bytes();
    let b = expected.as_bytes();
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| {
        acc | (x.to_ascii_uppercase() ^ y.to_ascii_uppercase())
    }) == 0
}

fn upper_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02X}");
    }
    out
}

/// The signing test vectors of the protocol notes, shared by the client's and the simulator's
/// tests: (sign_method, expected sign) per parameter set.
#[cfg(test)]
pub(crate) mod vectors {
    pub type Params = Vec<(&'static str, &'static str)>;

    pub const ITEM_GET: [(&str, &str); 3] = [
        ("md5", "66987CB115214E59E6EC978214934FB8"),
        ("hmac", "D56D7858309C31B6251083A874D48273"),
        (
            "hmac-sha256",
            "04DB15AD0774D5CFCE2C837DE43E3FCEA9011ED74F3038FB6AB5F3C4CEA119E8",
        ),
    ];
    pub const CONSUME: [(&str, &str); 3] = [
        ("md5", "20D1D8AF228C3ED7FB3F147B33E1F12C"),
        ("hmac", "BE9E78B05BCB49ABB4DB260C97FB1F37"),
        (
            "hmac-sha256",
            "3990CE9413DE3BEC9D31F029C1F8B700B63BA35F42027A953A063EE447429AD0",
        ),
    ];
    pub const CONFIRM: [(&str, &str); 3] = [
        ("md5", "F346836BAB35010740DD7462525A522F"),
        ("hmac", "7FD9685B741DA07D0841CD9619211B47"),
        (
            "hmac-sha256",
            "4B6E6DDB6D1603C12101617BF7EB1C0311756F151B2C02767FCD17B3C83843D8",
        ),
    ];
    /// md5 with secret `test`: proves values are signed as UTF-8.
    pub const USER_GET_UTF8_MD5: &str = "990FD28323F67A1EEC29336EDF373C0E";

    /// Secret `helloworld`.
    pub fn item_get(method: &'static str) -> Params {
        vec![
            ("method", "taobao.item.seller.get"),
            ("app_key", "12345678"),
            ("session", "test"),
            ("timestamp", "2016-01-01 12:00:00"),
            ("format", "json"),
            ("v", "2.0"),
            ("sign_method", method),
            ("fields", "num_iid,title,nick,price,num"),
            ("num_iid", "11223344"),
        ]
    }

    /// Secret `helloworld`.
    pub fn consume(method: &'static str) -> Params {
        vec![
            ("app_key", "12345678"),
            ("format", "json"),
            ("group_name", "default"),
            ("method", "taobao.tmc.messages.consume"),
            ("quantity", "100"),
            ("simplify", "true"),
            ("timestamp", "2016-01-01 12:00:00"),
            ("v", "2.0"),
            ("sign_method", method),
        ]
    }

    /// Secret `helloworld`.
    pub fn confirm(method: &'static str) -> Params {
        vec![
            ("app_key", "12345678"),
            ("format", "json"),
            ("group_name", "default"),
            ("method", "taobao.tmc.messages.confirm"),
            ("s_message_ids", "7104300007405429232,1172200053212681005"),
            ("timestamp", "2016-01-01 12:00:00"),
            ("v", "2.0"),
            ("sign_method", method),
        ]
    }

    /// Secret `test`, app key `test`; the odd space in the timestamp is part of the vector.
    pub fn user_get_utf8() -> Params {
        vec![
            ("method", "taobao.user.get"),
            ("timestamp", "2011-07-01 13: 52:03"),
            ("format", "xml"),
            ("app_key", "test"),
            ("v", "2.0"),
            ("fields", "nick,location.state,location.city"),
            ("nick", "商家测试帐号17"),
            ("sign_method", "md5"),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::vectors::*;
    use super::*;

    fn hello() -> Secret {
        Secret::new("helloworld")
    }

    fn check(set: &str, params: fn(&'static str) -> Params, table: [(&'static str, &str); 3]) {
        for (m, expected) in table {
            let method: SignMethod = m.parse().unwrap();
            assert_eq!(sign(params(m), &hello(), method), expected, "{set} {m}");
        }
    }

    /// The item.seller.get vectors (md5 documented; hmac and hmac-sha256 computed).
    #[test]
    fn item_get_vectors() {
        check("item.seller.get", item_get, ITEM_GET);
    }

    /// The documented vector with a Chinese nick proves values are signed as UTF-8.
    #[test]
    fn md5_utf8_user_get_vector() {
        assert_eq!(
            sign(user_get_utf8(), &Secret::new("test"), SignMethod::Md5),
            USER_GET_UTF8_MD5
        );
    }

    /// The consume vectors for all three methods.
    #[test]
    fn consume_vectors() {
        check("consume", consume, CONSUME);
    }

    /// The confirm vectors for all three methods.
    #[test]
    fn confirm_vectors() {
        check("confirm", confirm, CONFIRM);
    }

    /// The md5 formula applied to a parameter set that says `hmac` does not give the hmac signature.
    #[test]
    fn md5_formula_on_hmac_params_does_not_match() {
        let got = sign(item_get("hmac"), &hello(), SignMethod::Md5);
        assert_ne!(got, ITEM_GET[1].1);
        assert_ne!(got, ITEM_GET[0].1);
    }

    /// A `sign` parameter already present is not itself signed.
    #[test]
    fn sign_parameter_is_excluded() {
        let mut p = consume("md5");
        p.push(("sign", "WHATEVER"));
        assert_eq!(
            sign(p, &hello(), SignMethod::Md5),
            "20D1D8AF228C3ED7FB3F147B33E1F12C"
        );
    }

    /// Byte order puts upper-case names before lower-case ones.
    #[test]
    fn sorting_is_by_bytes() {
        assert_eq!(
            string_to_sign([("b", "2"), ("a", "1"), ("Z", "3")]),
            "Z3a1b2"
        );
    }

    /// Signature comparison ignores hex case and rejects other lengths.
    #[test]
    fn signature_comparison() {
        assert!(signature_matches("abcdef", "ABCDEF"));
        assert!(!signature_matches("ABCDE0", "ABCDEF"));
        assert!(!signature_matches("ABCDEF00", "ABCDEF"));
    }

    /// Method names round-trip and unknown ones are refused with the value named.
    #[test]
    fn method_names() {
        for m in SignMethod::ALL {
            assert_eq!(m.as_str().parse::<SignMethod>().unwrap(), m);
        }
        let err = "sha1".parse::<SignMethod>().unwrap_err();
        assert!(err.contains("\"sha1\""), "{err}");
    }
}
