//! Webhooks as the Standard Webhooks specification (standardwebhooks.com) has them: what an
//! endpoint subscribes to, how a delivery is signed, and which destinations a delivery may
//! never reach.
//!
//! - [`Secret`]: `whsec_` + base64 of 32 random bytes; the HMAC key is the decoded bytes.
//! - [`signature_header`]: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, one per
//!   signing secret, separated by spaces (two while a rotated-out secret still signs).
//! - [`refused_address`]: the address rule every connection is checked against (loopback,
//!   private, link-local, metadata, IPv4-mapped IPv6, …), and [`check_url`] for the parts
//!   of a URL that can be judged without connecting.
//!
//! The rows live in [`crate::db::webhooks`]; the worker sends the deliveries.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The events an endpoint may subscribe to (besides `*`, every one of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum EventType {
    #[serde(rename = "document.ready")]
    DocumentReady,
    #[serde(rename = "document.failed")]
    DocumentFailed,
    #[serde(rename = "batch.completed")]
    BatchCompleted,
    /// Sent on demand (`POST /webhooks/{id}/test`), whatever the endpoint subscribes to.
    #[serde(rename = "webhook.test")]
    Test,
}

impl EventType {
    /// The events a subscription may name.
    pub const SUBSCRIBABLE: &[EventType] = &[
        EventType::DocumentReady,
        EventType::DocumentFailed,
        EventType::BatchCompleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::DocumentReady => "document.ready",
            EventType::DocumentFailed => "document.failed",
            EventType::BatchCompleted => "batch.completed",
            EventType::Test => "webhook.test",
        }
    }

    /// A subscribable event by name.
    pub fn parse(name: &str) -> Option<EventType> {
        Self::SUBSCRIBABLE
            .iter()
            .copied()
            .find(|e| e.as_str() == name)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `events` holds for an endpoint that takes every event.
pub const ALL_EVENTS: &str = "*";

/// Whether an endpoint subscribed to `events` (as stored: a JSON array of names) wants
/// `event`. `webhook.test` is always wanted.
pub fn subscribes(events: &[String], event: EventType) -> bool {
    event == EventType::Test
        || events
            .iter()
            .any(|e| e == ALL_EVENTS || e == event.as_str())
}

/// The prefix of a secret as shown to its owner.
const SECRET_PREFIX: &str = "whsec_";

/// An endpoint's signing secret: `whsec_` followed by the base64 of the key bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl Secret {
    /// A new secret of 32 random bytes.
    pub fn generate() -> Secret {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        Secret(format!("{SECRET_PREFIX}{}", STANDARD.encode(key)))
    }

    /// A stored secret. `None` when it is not `whsec_` + base64.
    pub fn parse(text: &str) -> Option<Secret> {
        let key = text.strip_prefix(SECRET_PREFIX)?;
        STANDARD.decode(key).ok().filter(|k| !k.is_empty())?;
        Some(Secret(text.to_owned()))
    }

    /// The text shown to the owner and stored.
    pub fn expose(&self) -> &str {
        &self.0
    }

    fn key(&self) -> Vec<u8> {
        STANDARD
            .decode(&self.0[SECRET_PREFIX.len()..])
            .expect("a Secret holds base64")
    }

    /// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key()).expect("HMAC takes any key");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// The `webhook-signature` header: one signature per secret, separated by spaces.
pub fn signature_header(secrets: &[&Secret], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|s| s.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Why a destination is refused, in words for the API's 422 and a delivery's `last_error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    #[error("the URL is not valid")]
    Invalid,
    #[error("the URL must use https")]
    NotHttps,
    #[error("the URL must use http or https")]
    Scheme,
    #[error("the URL must not carry a user name or password")]
    Credentials,
    #[error("the URL's host {host} is a {kind} address, where webhooks are not sent")]
    Address { host: String, kind: &'static str },
    #[error(
        "the URL's host {host} resolves only to addresses where webhooks are not sent ({addresses})"
    )]
    Resolved { host: String, addresses: String },
    #[error("the URL's host {host} does not resolve")]
    Unresolved { host: String },
}

/// The URL's host: a domain name or an address (IPv6 without its brackets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Name(String),
    Ip(IpAddr),
}

/// A destination as the HTTP client will see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The URL parsed as the client parses it (the WHATWG URL standard): send this one.
    pub url: url::Url,
    pub host: Host,
}

/// What can be said of a destination without connecting: an absolute `https` URL (or
/// `http` with `allow_private`) without credentials, whose host, when an address, is one
/// webhooks may reach. The URL is parsed as the HTTP client parses it, so every spelling
/// of an address (`2130706433`, `0x7f.1`, `127.0.0.1.`, `127.0.0.1%2e`) is read as the
/// address it is. A host that is a name is to be resolved and each address checked with
/// [`refused_address`] when connecting.
pub fn check_url(url: &str, allow_private: bool) -> Result<Destination, DestinationError> {
    let parsed = url::Url::parse(url).map_err(|_| DestinationError::Invalid)?;
    match parsed.scheme() {
        "https" => {}
        "http" if allow_private => {}
        "http" => return Err(DestinationError::NotHttps),
        _ => return Err(DestinationError::Scheme),
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(DestinationError::Credentials);
    }
    let ip = match parsed.host() {
        None => return Err(DestinationError::Invalid),
        Some(url::Host::Domain(name)) => {
            let host = Host::Name(name.to_ascii_lowercase());
            return Ok(Destination { url: parsed, host });
        }
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
    };
    if !allow_private && let Some(kind) = refused_address(ip) {
        return Err(DestinationError::Address {
            host: ip.to_string(),
            kind,
        });
    }
    Ok(Destination {
        url: parsed,
        host: Host::Ip(ip),
    })
}

/// Why webhooks never go to `ip`, or `None` when they may: the kind of address, for the
/// error. Covers loopback, private (RFC 1918, unique local), shared (CGNAT), link-local
/// (and the cloud metadata address in it), unspecified, broadcast, multicast, reserved and
/// documentation ranges, and IPv6 forms carrying an IPv4 address (mapped, compatible,
/// NAT64, 6to4), which could lead back to any of those.
pub fn refused_address(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => refused_v6(v6),
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    let kind = match (a, b, c) {
        _ if ip == Ipv4Addr::new(169, 254, 169, 254) => "cloud metadata",
        (127, _, _) => "loopback",
        (10, _, _) | (172, 16..=31, _) | (192, 168, _) => "private",
        (100, 64..=127, _) => "shared (carrier-grade NAT)",
        (169, 254, _) => "link-local",
        (0, _, _) => "unspecified",
        (192, 0, 0) | (192, 0, 2) | (198, 51, 100) | (203, 0, 113) | (198, 18..=19, _) => {
            "reserved"
        }
        (224..=239, _, _) => "multicast",
        (240..=255, _, _) => "reserved",
        _ => return None,
    };
    Some(kind)
}

fn refused_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    let kind = match s {
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_loopback() => "loopback",
        // ::ffff:a.b.c.d: refused whatever it maps to (the issue's rule, and what a
        // dual-stack socket would turn into an IPv4 connection).
        [0, 0, 0, 0, 0, 0xffff, _, _] => "IPv4-mapped IPv6",
        // ::a.b.c.d (deprecated IPv4-compatible) and 64:ff9b::a.b.c.d (NAT64).
        [0, 0, 0, 0, 0, 0, _, _] | [0x64, 0xff9b, 0, 0, 0, 0, _, _] => "IPv4-embedding IPv6",
        // 6to4: 2002:AABB:CCDD::/48 carries a.b.c.d.
        [0x2002, hi, lo, ..] => {
            let v4 = Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
            refused_v4(v4)?
        }
        [first, ..] if first & 0xfe00 == 0xfc00 => "private (unique local)",
        [first, ..] if first & 0xffc0 == 0xfe80 => "link-local",
        [first, ..] if first & 0xffc0 == 0xfec0 => "site-local",
        [first, ..] if first & 0xff00 == 0xff00 => "multicast",
        [0x2001, 0x0db8, ..] => "reserved",
        [0x2001, 0, ..] => "Teredo",
        _ => return None,
    };
    Some(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks specification's example: secret, message id, timestamp and
    /// body, and the signature its reference libraries compute for them.
    #[test]
    fn signs_the_specification_example() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn two_secrets_give_two_signatures_separated_by_a_space() {
        let (a, b) = (Secret::generate(), Secret::generate());
        let header = signature_header(&[&a, &b], "id", 1, b"{}");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts, [a.sign("id", 1, b"{}"), b.sign("id", 1, b"{}")]);
        assert_ne!(parts[0], parts[1]);
    }

    #[test]
    fn generated_secrets_are_32_random_bytes_behind_the_prefix() {
        let secret = Secret::generate();
        assert!(secret.expose().starts_with("whsec_"));
        assert_eq!(secret.key().len(), 32);
        assert_ne!(secret, Secret::generate());
        assert_eq!(Secret::parse(secret.expose()), Some(secret));
        assert_eq!(Secret::parse("whsec_!!"), None);
        assert_eq!(Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), None);
    }

    #[test]
    fn refuses_every_private_kind_of_address() {
        for refused in [
            "127.0.0.1",
            "127.255.0.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.3.4",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:8.8.8.8",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "2002:c0a8:101::1",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "ff02::1",
        ] {
            let ip: IpAddr = refused.parse().unwrap();
            assert!(refused_address(ip).is_some(), "{refused} must be refused");
        }
        for allowed in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "2002:0808:0808::1",
        ] {
            let ip: IpAddr = allowed.parse().unwrap();
            assert_eq!(refused_address(ip), None, "{allowed} must be allowed");
        }
        assert_eq!(
            refused_address("169.254.169.254".parse().unwrap()),
            Some("cloud metadata")
        );
    }

    #[test]
    fn urls_are_judged_before_any_connection() {
        assert_eq!(
            check_url("https://hooks.example.com/in", false).map(|d| d.host),
            Ok(Host::Name("hooks.example.com".into()))
        );
        let error = |url| check_url(url, false).err();
        assert_eq!(
            error("http://hooks.example.com/in"),
            Some(DestinationError::NotHttps)
        );
        assert_eq!(
            check_url("ftp://hooks.example.com/in", true).err(),
            Some(DestinationError::Scheme)
        );
        assert_eq!(
            check_url("hooks.example.com/in", true).err(),
            Some(DestinationError::Invalid)
        );
        assert_eq!(
            error("https://user:pw@hooks.example.com/"),
            Some(DestinationError::Credentials)
        );
        // Every spelling of a loopback address is one.
        for url in [
            "https://2130706433/",
            "https://0x7f.1/",
            "https://0177.0.0.1/",
            "https://127.0.0.1./",
            "https://127.0.0.1%2e/",
            "https://127.1/",
            "https://[0:0:0:0:0:0:0:1]/",
            "https://0/",
        ] {
            assert!(
                matches!(error(url), Some(DestinationError::Address { .. })),
                "{url}: {:?}",
                check_url(url, false)
            );
        }
        assert!(matches!(
            check_url("https://127.0.0.1:8443/in", false),
            Err(DestinationError::Address {
                kind: "loopback",
                ..
            })
        ));
        assert!(matches!(
            check_url("https://[::ffff:10.0.0.1]/in", false),
            Err(DestinationError::Address { .. })
        ));
        assert_eq!(
            check_url("http://127.0.0.1:8080/in", true).map(|d| d.host),
            Ok(Host::Ip("127.0.0.1".parse().unwrap()))
        );
    }

    #[test]
    fn subscriptions_match_names_and_the_wildcard() {
        let some = vec!["document.ready".to_owned()];
        assert!(subscribes(&some, EventType::DocumentReady));
        assert!(!subscribes(&some, EventType::BatchCompleted));
        assert!(subscribes(&some, EventType::Test));
        assert!(subscribes(&["*".to_owned()], EventType::DocumentFailed));
        assert_eq!(
            EventType::parse("batch.completed"),
            Some(EventType::BatchCompleted)
        );
        assert_eq!(EventType::parse("webhook.test"), None);
    }
}
