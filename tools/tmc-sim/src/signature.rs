//! The gateway's own signature check, written from the protocol notes and sharing no code with
//! any client: a client whose signing is wrong cannot pass here by being wrong the same way.
//!
//! The signed text is every parameter but `sign`, sorted by name in byte order, each as name
//! then value with nothing between; `md5` digests `secret + text + secret`, `hmac` and
//! `hmac-sha256` key the text with the secret. The answer is upper-case hex.

use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;

/// A `sign_method` the gateway accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Md5,
    Hmac,
    HmacSha256,
}

impl Algorithm {
    /// The algorithm a `sign_method` value names (absent means md5 on the platform).
    pub fn from_wire(value: &str) -> Option<Self> {
        Some(match value {
            "md5" => Self::Md5,
            "hmac" => Self::Hmac,
            "hmac-sha256" => Self::HmacSha256,
            _ => return None,
        })
    }

    pub fn wire_name(self) -> &'static str {
        match self {
            Self::Md5 => "md5",
            Self::Hmac => "hmac",
            Self::HmacSha256 => "hmac-sha256",
        }
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.wire_name())
    }
}

/// The signature the gateway expects for these parameters (any `sign` among them is ignored).
pub fn expected(pairs: &[(String, String)], secret: &str, algorithm: Algorithm) -> String {
    let mut named: Vec<&(String, String)> = pairs.iter().filter(|(k, _)| k != "sign").collect();
    named.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let text: Vec<u8> = named
        .iter()
        .flat_map(|(k, v)| k.bytes().chain(v.bytes()))
        .collect();
    let key = secret.as_bytes();
    let digest: Vec<u8> = match algorithm {
        Algorithm::Md5 => Md5::new()
            .chain_update(key)
            .chain_update(&text)
            .chain_update(key)
            .finalize()
            .to_vec(),
        Algorithm::Hmac => keyed::<Hmac<Md5>>(key, &text),
        Algorithm::HmacSha256 => keyed::<Hmac<Sha256>>(key, &text),
    };
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    digest
        .iter()
        .flat_map(|b| [HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]])
        .map(char::from)
        .collect()
}

fn keyed<M: Mac + KeyInit>(key: &[u8], text: &[u8]) -> Vec<u8> {
    let mut mac = <M as KeyInit>::new_from_slice(key).expect("an HMAC takes a key of any length");
    mac.update(text);
    mac.finalize().into_bytes().to_vec()
}

/// Whether a received signature is the expected one, hex case ignored, in time that does not
/// depend on where they differ.
pub fn matches(received: &str, expected: &str) -> bool {
    received.len() == expected.len()
        && received
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |diff, (r, e)| {
                diff | (r.to_ascii_uppercase() ^ e.to_ascii_uppercase())
            })
            == 0
}
