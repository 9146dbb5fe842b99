//! The typed values of the configuration file and of the flags: each parses
//! from the text an operator writes (`FromStr`, which clap uses too) and
//! prints back the same form (`Display`), and serde goes through the two, so
//! what `toa config` prints reads back as the same value.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};
use toa_common::inject::packets;

use crate::{Error, Result};

/// Serde through `Display` and `FromStr`: the value is a string in the file,
/// and a value that does not parse is refused with the parser's message
/// (the file's loader adds the key and the line).
macro_rules! serde_via_str {
    ($($t:ty),* $(,)?) => {$(
        impl ::serde::Serialize for $t {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> ::std::result::Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $t {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> ::std::result::Result<Self, D::Error> {
                let text = <String as ::serde::Deserialize>::deserialize(d)?;
                text.parse().map_err(<D::Error as ::serde::de::Error>::custom)
            }
        }
    )*};
}
pub(crate) use serde_via_str;

serde_via_str!(Prefix, Packets, MetricsListen);

/// Parses `ADDR:PORT` (IPv6 as `[2001:db8::1]:80`); `what` names the value in the error.
pub fn parse_addr(what: &str, s: &str) -> Result<SocketAddr> {
    s.trim()
        .parse()
        .map_err(|_| Error::Invalid(format!("{what} `{s}` is not ADDR:PORT (e.g. 192.0.2.1:80 or [2001:db8::1]:80)")))
}

/// An address prefix in CIDR notation (a bare address is a host prefix).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    /// The network address (host bits cleared).
    pub addr: IpAddr,
    /// Prefix length in bits.
    pub len: u8,
}

impl FromStr for Prefix {
    type Err = Error;

    fn from_str(s: &str) -> Result<Prefix> {
        let bad = || Error::Invalid(format!("`{s}` is not a CIDR prefix (e.g. 198.51.100.0/24 or 2001:db8::/32)"));
        let (addr, len) = match s.trim().split_once('/') {
            Some((a, l)) => (a.parse::<IpAddr>().map_err(|_| bad())?, Some(l.parse::<u8>().map_err(|_| bad())?)),
            None => (s.trim().parse::<IpAddr>().map_err(|_| bad())?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = len.unwrap_or(max);
        if len > max {
            return Err(bad());
        }
        Ok(Prefix { addr: mask(addr, len), len })
    }
}

/// `addr` with the bits after the first `len` cleared.
fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
            IpAddr::V4((u32::from(a) & mask).into())
        }
        IpAddr::V6(a) => {
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
            IpAddr::V6((u128::from(a) & mask).into())
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Prefix {
    /// The LPM trie key and prefix length in settings slot `slot` (IPv4
    /// mapped into ::ffff:0:0/96).
    pub fn trie_key(&self, slot: u32) -> (toa_common::trust::TrustKey, u32) {
        match self.addr {
            IpAddr::V4(a) => toa_common::trust::v4_prefix(slot, a.octets(), self.len),
            IpAddr::V6(a) => toa_common::trust::v6_prefix(slot, a.octets(), self.len),
        }
    }

    /// Whether `ip` is inside the prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.len) == self.addr
    }
}

/// A length of time, written as a number and a unit: `500ms`, `5s`, `2m`,
/// `1h` (also `ns`, `us`, `min`, fractions such as `1.5s`, and a bare number
/// of seconds, as a string or an integer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    /// `n` seconds.
    pub const fn from_secs(n: u64) -> Duration {
        Duration(std::time::Duration::from_secs(n))
    }

    /// `n` milliseconds.
    pub const fn from_millis(n: u64) -> Duration {
        Duration(std::time::Duration::from_millis(n))
    }

    /// The standard library's duration.
    pub const fn get(self) -> std::time::Duration {
        self.0
    }

    /// Whether it is zero.
    pub const fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl FromStr for Duration {
    type Err = Error;

    fn from_str(s: &str) -> Result<Duration> {
        let t = s.trim();
        let bad = || Error::Invalid(format!("`{s}` is not a duration (e.g. 500ms, 5s, 2m, 1h)"));
        let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let unit_ns: u128 = match unit.trim() {
            "ns" => 1,
            "us" => 1_000,
            "ms" => 1_000_000,
            "" | "s" => 1_000_000_000,
            "m" | "min" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(bad()),
        };
        // Whole and fractional digits, in integers: `1.5s` is exactly 1500 ms.
        let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
        let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit()) && d.len() <= 18;
        if (whole.is_empty() && frac.is_empty()) || !digits(whole) || !digits(frac) {
            return Err(bad());
        }
        let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| bad())? };
        let scale = 10u128.pow(frac.len() as u32);
        let frac: u128 = if frac.is_empty() { 0 } else { frac.parse().map_err(|_| bad())? };
        let ns = whole * unit_ns + frac * unit_ns / scale;
        // At most about 30 years: anything longer is a typo.
        if ns > 1_000_000_000 * 1_000_000_000 {
            return Err(bad());
        }
        Ok(Duration(std::time::Duration::from_nanos(ns as u64)))
    }
}

impl fmt::Display for Duration {
    /// The largest unit that divides it exactly, so that parsing the text
    /// gives back the same duration.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.0.as_nanos();
        const UNITS: [(u128, &str); 6] = [
            (3_600_000_000_000, "h"),
            (60_000_000_000, "m"),
            (1_000_000_000, "s"),
            (1_000_000, "ms"),
            (1_000, "us"),
            (1, "ns"),
        ];
        if ns == 0 {
            return f.write_str("0s");
        }
        let (size, unit) = UNITS.iter().find(|(size, _)| ns.is_multiple_of(*size)).copied().unwrap_or((1, "ns"));
        write!(f, "{}{unit}", ns / size)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Duration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"500ms\", \"5s\", \"2m\" or a number of seconds")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Duration, E> {
                v.parse().map_err(E::custom)
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<Duration, E> {
                v.to_string().parse().map_err(E::custom)
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Duration, E> {
                v.to_string().parse().map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// The packets that carry an option the writer inserts, written as a list
/// such as `ack,data` (any of `syn`, `ack`, `data`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packets(u8);

impl Packets {
    /// The handshake's final ACK and the data until the server acknowledges it.
    pub const DEFAULT: Packets = Packets(packets::ACK | packets::DATA);

    /// The bits of [`packets`].
    pub const fn bits(self) -> u8 {
        self.0
    }
}

impl Default for Packets {
    fn default() -> Self {
        Packets::DEFAULT
    }
}

const PACKET_NAMES: [(u8, &str); 3] = [(packets::SYN, "syn"), (packets::ACK, "ack"), (packets::DATA, "data")];

impl FromStr for Packets {
    type Err = Error;

    fn from_str(list: &str) -> Result<Packets> {
        let mut bits = 0;
        for word in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            bits |= PACKET_NAMES
                .iter()
                .find(|(_, name)| *name == word)
                .map(|(bit, _)| *bit)
                .ok_or_else(|| Error::Invalid(format!("unknown packet `{word}` (expected syn, ack, data)")))?;
        }
        if bits == 0 {
            return Err(Error::Invalid("no packets to write the option into (expected syn, ack, data)".into()));
        }
        Ok(Packets(bits))
    }
}

impl fmt::Display for Packets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = PACKET_NAMES.iter().filter(|(bit, _)| self.0 & bit != 0).map(|(_, n)| *n).collect();
        f.write_str(&names.join(","))
    }
}

/// The metrics listener: `ADDR:PORT`, or `""` for none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsListen(pub Option<SocketAddr>);

impl MetricsListen {
    /// Where it listens unless told otherwise: loopback only.
    pub const DEFAULT: MetricsListen =
        MetricsListen(Some(SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9410)));
}

impl FromStr for MetricsListen {
    type Err = Error;

    fn from_str(s: &str) -> Result<MetricsListen> {
        if s.is_empty() {
            return Ok(MetricsListen(None));
        }
        s.parse().map(|a| MetricsListen(Some(a))).map_err(|_| {
            Error::Invalid(format!("metrics_listen: `{s}` is not ADDR:PORT (e.g. 127.0.0.1:9410; \"\" disables it)"))
        })
    }
}

impl fmt::Display for MetricsListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(a) => write!(f, "{a}"),
            None => Ok(()),
        }
    }
}

/// Serde of a list of option formats written as `KIND/LEN`.
pub(crate) mod formats {
    use serde::{Deserialize, Deserializer, Serializer, de, ser::SerializeSeq as _};
    use toa_common::Format;

    pub fn serialize<S: Serializer>(formats: &[Format], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(formats.len()))?;
        for f in formats {
            seq.serialize_element(&f.to_string())?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Format>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| Format::parse(s).map_err(|e| de::Error::custom(format!("`{s}`: {e}"))))
            .collect()
    }
}

/// Deserializes the trusted prefixes: at most as many as the programs hold.
pub(crate) fn trusted<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<Prefix>, D::Error> {
    let prefixes = Vec::<Prefix>::deserialize(d)?;
    let max = toa_common::trust::MAX_TRUSTED as usize;
    if prefixes.len() > max {
        let e = Error::TooMany { key: "trusted", what: "prefixes", count: prefixes.len(), max };
        return Err(de::Error::custom(e));
    }
    Ok(prefixes)
}

/// Deserializes local ports: 1 to 65535.
pub(crate) fn ports<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<u16>, D::Error> {
    let ports = Vec::<u16>::deserialize(d)?;
    if ports.contains(&0) {
        return Err(de::Error::custom("0 is not a port (1 to 65535)"));
    }
    Ok(ports)
}

/// Deserializes `ADDR:PORT` with the message [`parse_addr`] gives.
pub(crate) fn addr<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    parse_addr("address", &text).map_err(de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        let p: Prefix = "198.51.100.77/24".parse().expect("valid");
        assert_eq!(p.to_string(), "198.51.100.0/24");
        assert!(p.contains("198.51.100.1".parse().expect("ip")));
        assert!(!p.contains("198.51.101.1".parse().expect("ip")));
        let p: Prefix = "2001:db8:2::/48".parse().expect("valid");
        assert_eq!(p.trie_key(0).1, 8 + 48);
        assert!(!p.contains("198.51.100.1".parse().expect("ip")), "another family");
        let host: Prefix = "192.0.2.1".parse().expect("valid");
        assert_eq!(host.len, 32);
        assert_eq!(host.trie_key(1).1, 8 + 128);
        assert_eq!(host.trie_key(1).0[0], 1, "the slot leads the key");
        assert!("nonsense".parse::<Prefix>().is_err());
        assert!("::/129".parse::<Prefix>().is_err());
        let all: Prefix = "0.0.0.0/0".parse().expect("valid");
        assert!(all.contains("203.0.113.9".parse().expect("ip")));
    }

    #[test]
    fn durations_parse_and_print_back() {
        for (text, expect, printed) in [
            ("250ms", Duration::from_millis(250), "250ms"),
            ("5s", Duration::from_secs(5), "5s"),
            ("2", Duration::from_secs(2), "2s"),
            ("1.5s", Duration::from_millis(1500), "1500ms"),
            ("2m", Duration::from_secs(120), "2m"),
            ("90s", Duration::from_secs(90), "90s"),
            ("1h", Duration::from_secs(3600), "1h"),
            ("0", Duration::default(), "0s"),
            ("250us", Duration(std::time::Duration::from_micros(250)), "250us"),
        ] {
            let d: Duration = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(d, expect, "{text}");
            assert_eq!(d.to_string(), printed, "{text}");
            assert_eq!(printed.parse::<Duration>().expect("printed form parses"), d, "{text}");
        }
        for bad in ["soon", "5 parsecs", "-1s", "", "1e99h"] {
            assert!(bad.parse::<Duration>().is_err(), "{bad}");
        }
    }

    #[test]
    fn packet_lists() {
        assert_eq!("ack,data".parse::<Packets>().expect("valid"), Packets::DEFAULT);
        assert_eq!("syn, ack ,data".parse::<Packets>().expect("valid").bits(), 7);
        assert_eq!("data,syn".parse::<Packets>().expect("valid").to_string(), "syn,data");
        assert!("ack,fin".parse::<Packets>().is_err());
        assert!("".parse::<Packets>().is_err());
    }

    #[test]
    fn metrics_listener() {
        assert_eq!("".parse::<MetricsListen>().expect("off"), MetricsListen(None));
        assert_eq!(MetricsListen::DEFAULT.to_string(), "127.0.0.1:9410");
        assert_eq!("127.0.0.1:9410".parse::<MetricsListen>().expect("valid"), MetricsListen::DEFAULT);
        assert!("localhost".parse::<MetricsListen>().is_err());
    }
}
