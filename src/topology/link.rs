//! Link parameters: how an underlay link behaves (delay, jitter, loss, duplication, rate), in
//! the units CORE users know, and their place in a device's entry (`"links"`).
//!
//! One description serves the three back ends: `overlayd core-scenario` writes it as CORE's own
//! link options, the netns emulator's shaper applies it, and the simulator builds its links from
//! it. A device's `"links"` object is keyed by a *peer device name* (the point-to-point link the
//! two share) or by a *subnet* in CIDR form (the device's own attachment to that subnet: the
//! whole link when the subnet is point-to-point, the device's link to the switch on a LAN, as in
//! CORE). Values are objects with any of:
//!
//! | field       | meaning                                   | form                                  |
//! |-------------|-------------------------------------------|---------------------------------------|
//! | `delay`     | one-way delay, each direction             | `"20ms"`, `"500us"`, `"1.5s"`         |
//! | `jitter`    | extra delay drawn in `0..jitter` a packet | same as delay                         |
//! | `loss`      | packets dropped at random, each direction | `"2%"` or a number of percent (`2`)   |
//! | `duplicate` | packets sent twice at random              | as loss                               |
//! | `rate`      | bandwidth, each direction                 | `"10Mbit"`, `"512kbit"`, or bits/s    |
//!
//! Durations need a unit because CORE's dialogs count microseconds and people think in
//! milliseconds; a bare number would be read wrong by one of them. Rates in `...bps` are refused
//! for the same reason (tc reads `mbps` as megabytes).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::device::describe;
use super::Topology;

/// Longest accepted delay or jitter: beyond this no overlay timer makes sense.
pub const MAX_DELAY: Duration = Duration::from_secs(10);
/// Slowest accepted rate, bits per second: below it one full frame takes over a second.
pub const MIN_RATE: u64 = 10_000;
/// Fastest accepted rate, bits per second.
pub const MAX_RATE: u64 = 100_000_000_000;

/// How one link behaves, the same in both directions.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct LinkParams {
    /// One-way delay.
    pub delay: Duration,
    /// Extra delay drawn uniformly in `0..jitter` per packet; packets are never reordered.
    pub jitter: Duration,
    /// Probability (0..=1) that a packet is lost. The simulator, which moves whole messages
    /// over TCP, reads it as the probability that a message needs a retransmission.
    pub loss: f64,
    /// Probability (0..=1) that a packet is delivered twice.
    pub duplicate: f64,
    /// Bits per second; `None` is unlimited.
    pub rate: Option<u64>,
}

// The probabilities come from parsed, range-checked text or from code, never NaN, so equality
// is reflexive (the emulator's plans compare whole structures).
impl Eq for LinkParams {}

impl LinkParams {
    /// A link with only a delay of `delay_ms`.
    pub fn ms(delay_ms: u64) -> Self {
        LinkParams {
            delay: Duration::from_millis(delay_ms),
            ..LinkParams::default()
        }
    }

    pub fn jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    pub fn loss(mut self, loss: f64) -> Self {
        self.loss = loss;
        self
    }

    /// True when the link does nothing to packets.
    pub fn is_ideal(&self) -> bool {
        *self == LinkParams::default()
    }

    /// The link seen across `self` then `next`: delays and jitters add, losses and
    /// duplications compound, the slower rate holds.
    pub fn then(&self, next: &LinkParams) -> LinkParams {
        LinkParams {
            delay: self.delay + next.delay,
            jitter: self.jitter + next.jitter,
            loss: 1.0 - (1.0 - self.loss) * (1.0 - next.loss),
            duplicate: 1.0 - (1.0 - self.duplicate) * (1.0 - next.duplicate),
            rate: match (self.rate, next.rate) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        }
    }

    /// Reads one `"links"` value (an object of the fields above). Errors carry the field name.
    pub fn from_json(value: &Value) -> Result<LinkParams, (Option<&'static str>, String)> {
        let Value::Object(obj) = value else {
            return Err((
                None,
                format!(
                    "link parameters must be an object like {{\"delay\": \"20ms\", \"loss\": \"1%\"}}, found {}",
                    describe(value)
                ),
            ));
        };
        let mut p = LinkParams::default();
        for (k, v) in obj {
            let field: &'static str = match k.as_str() {
                "delay" => "delay",
                "jitter" => "jitter",
                "loss" => "loss",
                "duplicate" => "duplicate",
                "rate" => "rate",
                other => {
                    let hint = match other.to_lowercase().as_str() {
                        "latency" => " (did you mean \"delay\"?)",
                        "bandwidth" | "bw" => " (did you mean \"rate\"?)",
                        "dup" | "duplication" => " (did you mean \"duplicate\"?)",
                        "ber" | "per" | "drop" => " (did you mean \"loss\"?)",
                        _ => "",
                    };
                    return Err((
                        None,
                        format!(
                            "unknown link parameter \"{}\"{hint}; known: delay, jitter, loss, duplicate, rate",
                            other.escape_debug()
                        ),
                    ));
                }
            };
            let bad = |reason: String| (Some(field), reason);
            match field {
                "delay" => p.delay = parse_duration(v).map_err(bad)?,
                "jitter" => p.jitter = parse_duration(v).map_err(bad)?,
                "loss" => p.loss = parse_percent(v).map_err(bad)?,
                "duplicate" => p.duplicate = parse_percent(v).map_err(bad)?,
                _ => p.rate = Some(parse_rate(v).map_err(bad)?),
            }
        }
        Ok(p)
    }
}

/// The form people write: `delay 20ms jitter 2ms loss 1% duplicate 0.5% rate 10Mbit`, only the
/// fields that are set (`ideal` for none).
impl fmt::Display for LinkParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.delay.is_zero() {
            parts.push(format!("delay {}", show_duration(self.delay)));
        }
        if !self.jitter.is_zero() {
            parts.push(format!("jitter {}", show_duration(self.jitter)));
        }
        if self.loss > 0.0 {
            parts.push(format!("loss {}%", show_percent(self.loss)));
        }
        if self.duplicate > 0.0 {
            parts.push(format!("duplicate {}%", show_percent(self.duplicate)));
        }
        if let Some(r) = self.rate {
            parts.push(format!("rate {}", show_rate(r)));
        }
        if parts.is_empty() {
            return f.write_str("ideal");
        }
        f.write_str(&parts.join(" "))
    }
}

fn show_duration(d: Duration) -> String {
    let us = d.as_micros();
    if us % 1000 == 0 {
        format!("{}ms", us / 1000)
    } else {
        format!("{us}us")
    }
}

fn show_percent(p: f64) -> String {
    let s = format!("{:.3}", p * 100.0);
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn show_rate(bits: u64) -> String {
    for (unit, scale) in [
        ("Gbit", 1_000_000_000),
        ("Mbit", 1_000_000),
        ("kbit", 1_000),
    ] {
        if bits % scale == 0 {
            return format!("{}{unit}", bits / scale);
        }
    }
    format!("{bits}bit")
}

/// Splits `"12.5ms"` into (12.5, "ms").
fn number_and_unit(s: &str) -> Option<(f64, &str)> {
    let s = s.trim();
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let n: f64 = s[..end].parse().ok()?;
    n.is_finite().then_some((n, s[end..].trim()))
}

/// A duration with a unit: `us`, `ms` or `s` (`"0"` alone is accepted too).
pub fn parse_duration_str(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "'{}' is not a duration: write a number with a unit, e.g. \"20ms\", \"500us\", \"1.5s\"",
            s.escape_debug()
        )
    };
    let (n, unit) = number_and_unit(s).ok_or_else(bad)?;
    let secs = match unit.to_lowercase().as_str() {
        "us" | "µs" | "usec" => n / 1e6,
        "ms" | "msec" => n / 1e3,
        "s" | "sec" => n,
        "" if n == 0.0 => 0.0,
        _ => return Err(bad()),
    };
    // Compared before the conversion, which panics on values beyond u64 seconds.
    if secs > MAX_DELAY.as_secs_f64() {
        return Err(format!(
            "'{}' is longer than the {} s allowed",
            s.escape_debug(),
            MAX_DELAY.as_secs()
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_duration(v: &Value) -> Result<Duration, String> {
    match v {
        Value::String(s) => parse_duration_str(s),
        Value::Number(n) if n.as_f64() == Some(0.0) => Ok(Duration::ZERO),
        Value::Number(n) => Err(format!(
            "{n} has no unit: write \"{n}ms\" or \"{n}us\" (CORE's dialogs count microseconds)"
        )),
        other => Err(format!(
            "expected a duration like \"20ms\", found {}",
            describe(other)
        )),
    }
}

/// A percentage, `"2%"` (or `"2"`), as a probability.
pub fn parse_percent_str(s: &str) -> Result<f64, String> {
    let bad = || {
        format!(
            "'{}' is not a percentage: write e.g. \"2%\" or \"0.5%\"",
            s.escape_debug()
        )
    };
    let (n, unit) = number_and_unit(s).ok_or_else(bad)?;
    if !(unit.is_empty() || unit == "%") {
        return Err(bad());
    }
    percent(n).map_err(|_| format!("'{}' is not between 0% and 100%", s.escape_debug()))
}

fn percent(n: f64) -> Result<f64, ()> {
    if (0.0..=100.0).contains(&n) {
        Ok(n / 100.0)
    } else {
        Err(())
    }
}

fn parse_percent(v: &Value) -> Result<f64, String> {
    match v {
        Value::String(s) => parse_percent_str(s),
        Value::Number(n) => n
            .as_f64()
            .ok_or(())
            .and_then(percent)
            .map_err(|_| format!("{n} is not a percentage between 0 and 100")),
        other => Err(format!(
            "expected a percentage like \"2%\", found {}",
            describe(other)
        )),
    }
}

/// A rate: `"10Mbit"`, `"512kbit"`, `"1Gbit"`, `"64000bit"` (case does not matter).
pub fn parse_rate_str(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "'{}' is not a rate: write e.g. \"10Mbit\", \"512kbit\" or a number of bits per second",
            s.escape_debug()
        )
    };
    let (n, unit) = number_and_unit(s).ok_or_else(bad)?;
    let lower = unit.to_lowercase();
    let scale = match lower.as_str() {
        "" | "bit" | "bit/s" => 1.0,
        "kbit" | "kbit/s" => 1e3,
        "mbit" | "mbit/s" => 1e6,
        "gbit" | "gbit/s" => 1e9,
        u if u.ends_with("bps") => {
            return Err(format!(
                "'{}' is ambiguous (bits or bytes?): write \"{n}{}bit\" for bits per second",
                s.escape_debug(),
                unit.get(..unit.len() - 3).unwrap_or("")
            ))
        }
        _ => return Err(bad()),
    };
    check_rate(n * scale).map_err(|r| format!("'{}': {r}", s.escape_debug()))
}

fn check_rate(bits: f64) -> Result<u64, String> {
    if bits < MIN_RATE as f64 {
        return Err(format!("a rate must be at least {}", show_rate(MIN_RATE)));
    }
    if bits > MAX_RATE as f64 {
        return Err(format!("a rate must be at most {}", show_rate(MAX_RATE)));
    }
    Ok(bits.round() as u64)
}

fn parse_rate(v: &Value) -> Result<u64, String> {
    match v {
        Value::String(s) => parse_rate_str(s),
        Value::Number(n) => check_rate(n.as_f64().unwrap_or(-1.0)),
        other => Err(format!(
            "expected a rate like \"10Mbit\", found {}",
            describe(other)
        )),
    }
}

/// Prefix length used for IPv4 subnets.
pub const V4_PREFIX: u8 = 24;
/// Prefix length used for IPv6 subnets.
pub const V6_PREFIX: u8 = 64;

/// A subnet: network address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Net {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Net {
    /// The subnet `ip` belongs to under the default prefix lengths.
    pub fn of(ip: IpAddr) -> Net {
        match ip {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4) & (u32::MAX << (32 - V4_PREFIX));
                Net {
                    addr: IpAddr::V4(bits.into()),
                    prefix: V4_PREFIX,
                }
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6) & (u128::MAX << (128 - V6_PREFIX));
                Net {
                    addr: IpAddr::V6(bits.into()),
                    prefix: V6_PREFIX,
                }
            }
        }
    }

    pub fn is_v4(&self) -> bool {
        self.addr.is_ipv4()
    }
}

impl std::fmt::Display for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prefix == 0 {
            return f.write_str("default");
        }
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl std::str::FromStr for Net {
    type Err = String;

    /// `10.0.20.0/24` or `2001:db8:1::/64`: a subnet in the prefix lengths topologies use.
    fn from_str(s: &str) -> Result<Net, String> {
        let (ip, len) = s
            .split_once('/')
            .ok_or_else(|| format!("'{}' is not a subnet like 10.0.20.0/24", s.escape_debug()))?;
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| format!("'{}' is not a subnet like 10.0.20.0/24", s.escape_debug()))?;
        let net = Net::of(ip);
        if len.parse::<u8>().ok() != Some(net.prefix) {
            return Err(format!(
                "'{}': subnets are /{} here (every address belongs to its /{V4_PREFIX} or /{V6_PREFIX})",
                s.escape_debug(),
                net.prefix
            ));
        }
        if net.addr != ip {
            return Err(format!(
                "'{}' has host bits set: the subnet is {net}",
                s.escape_debug()
            ));
        }
        Ok(net)
    }
}

/// What a key of a device's `"links"` names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum LinkKey {
    /// The point-to-point link shared with this device.
    Peer(String),
    /// The device's own attachment to this subnet.
    Subnet(Net),
}

impl LinkKey {
    /// A key with a `/` is a subnet; anything else names a device.
    pub fn parse(key: &str) -> Result<LinkKey, String> {
        if key.contains('/') {
            key.parse().map(LinkKey::Subnet)
        } else {
            Ok(LinkKey::Peer(key.to_string()))
        }
    }
}

impl fmt::Display for LinkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkKey::Peer(name) => f.write_str(name),
            LinkKey::Subnet(net) => write!(f, "{net}"),
        }
    }
}

/// Where a link's parameters apply: a whole point-to-point subnet (`device: None`), or one
/// device's attachment to a LAN (its link to the switch).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LinkAt {
    pub net: Net,
    pub device: Option<String>,
}

/// Every subnet of a topology with the devices that have an address in it, in name order.
pub fn subnet_members(t: &Topology) -> BTreeMap<Net, Vec<String>> {
    let mut out: BTreeMap<Net, Vec<String>> = BTreeMap::new();
    for d in t.devices() {
        for &ip in &d.addresses {
            let members = out.entry(Net::of(ip)).or_default();
            if !members.contains(&d.name) {
                members.push(d.name.clone());
            }
        }
    }
    out
}

/// The link parameters of a topology, by where they apply, and a list of (device, problem) for
/// keys that name no link of the device or that contradict the other side.
pub fn resolve_links(t: &Topology) -> (BTreeMap<LinkAt, LinkParams>, Vec<(String, String)>) {
    let members = subnet_members(t);
    let mut out: BTreeMap<LinkAt, (String, LinkParams)> = BTreeMap::new();
    let mut problems = Vec::new();
    for d in t.devices() {
        if !d.links.is_empty() && d.addresses.is_empty() {
            problems.push((
                d.name.clone(),
                "\"links\" needs the device's own \"addresses\" (links are found by subnet)"
                    .to_string(),
            ));
            continue;
        }
        let own: BTreeSet<Net> = d.addresses.iter().map(|&ip| Net::of(ip)).collect();
        for (key, params) in &d.links {
            let at = match key {
                LinkKey::Subnet(net) => {
                    if !own.contains(net) {
                        problems.push((
                            d.name.clone(),
                            format!(
                                "links: {net} is not a subnet of {} (it has no address in it)",
                                d.name
                            ),
                        ));
                        continue;
                    }
                    let lan = members.get(net).is_some_and(|m| m.len() > 2);
                    LinkAt {
                        net: *net,
                        device: lan.then(|| d.name.clone()),
                    }
                }
                LinkKey::Peer(peer) => {
                    if t.get(peer).is_none() {
                        problems.push((
                            d.name.clone(),
                            format!("links: no device is named '{}'", peer.escape_debug()),
                        ));
                        continue;
                    }
                    let shared: Vec<Net> = own
                        .iter()
                        .filter(|n| members.get(n).is_some_and(|m| m.contains(peer)))
                        .copied()
                        .collect();
                    match shared.as_slice() {
                        [] => {
                            problems.push((
                                d.name.clone(),
                                format!(
                                    "links: {} and {peer} share no subnet; parameters go on a direct link (through routers, give each link its own)",
                                    d.name
                                ),
                            ));
                            continue;
                        }
                        [net] if members[net].len() > 2 => {
                            problems.push((
                                d.name.clone(),
                                format!(
                                    "links: {peer} is on the LAN {net} with {}; a LAN has one link per device: key it by the subnet, \"{net}\"",
                                    d.name
                                ),
                            ));
                            continue;
                        }
                        [net] => LinkAt {
                            net: *net,
                            device: None,
                        },
                        many => {
                            problems.push((
                                d.name.clone(),
                                format!(
                                    "links: {} and {peer} share {} subnets; key each by its subnet",
                                    d.name,
                                    many.len()
                                ),
                            ));
                            continue;
                        }
                    }
                }
            };
            match out.get(&at) {
                Some((first, earlier)) if earlier != params => problems.push((
                    d.name.clone(),
                    format!(
                        "links: the link {} is given twice with different parameters ({first}: {earlier}; {}: {params})",
                        at.net, d.name
                    ),
                )),
                Some(_) => {}
                None => {
                    out.insert(at, (d.name.clone(), *params));
                }
            }
        }
    }
    let links = out.into_iter().map(|(at, (_, p))| (at, p)).collect();
    (links, problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(v: Value) -> LinkParams {
        LinkParams::from_json(&v).unwrap()
    }

    fn error(v: Value) -> String {
        let (field, reason) = LinkParams::from_json(&v).unwrap_err();
        format!("{}: {reason}", field.unwrap_or("-"))
    }

    #[test]
    fn reads_every_field_in_the_units_people_write() {
        let p = params(json!({"delay": "20ms", "jitter": "500us", "loss": "2%",
                               "duplicate": 0.5, "rate": "10Mbit"}));
        assert_eq!(p.delay, Duration::from_millis(20));
        assert_eq!(p.jitter, Duration::from_micros(500));
        assert!((p.loss - 0.02).abs() < 1e-12);
        assert!((p.duplicate - 0.005).abs() < 1e-12);
        assert_eq!(p.rate, Some(10_000_000));
        assert_eq!(
            p.to_string(),
            "delay 20ms jitter 500us loss 2% duplicate 0.5% rate 10Mbit"
        );
        assert_eq!(
            params(json!({"delay": "1.5s"})).delay,
            Duration::from_millis(1500)
        );
        assert_eq!(params(json!({"rate": 64000})).rate, Some(64_000));
        assert_eq!(params(json!({"rate": "1.5gbit"})).rate, Some(1_500_000_000));
        assert!(params(json!({})).is_ideal());
        assert_eq!(params(json!({})).to_string(), "ideal");
        assert_eq!(params(json!({"delay": 0})).delay, Duration::ZERO);
    }

    #[test]
    fn refuses_what_would_be_read_wrong_with_a_clear_reason() {
        assert!(
            error(json!({"delay": 20})).contains("no unit"),
            "{}",
            error(json!({"delay": 20}))
        );
        assert!(error(json!({"delay": "20 parsecs"}))
            .starts_with("delay: '20 parsecs' is not a duration"));
        assert!(error(json!({"delay": "11s"})).contains("longer than the 10 s"));
        assert!(error(json!({"loss": "120%"})).contains("between 0% and 100%"));
        assert!(error(json!({"loss": -1})).contains("between 0 and 100"));
        assert!(error(json!({"loss": true})).contains("found a boolean"));
        let e = error(json!({"rate": "10Mbps"}));
        assert!(e.contains("ambiguous") && e.contains("\"10Mbit\""), "{e}");
        assert!(error(json!({"rate": "5bit"})).contains("at least 10kbit"));
        let e = error(json!({"latency": "5ms"}));
        assert!(e.contains("did you mean \"delay\""), "{e}");
        assert!(error(json!({"bandwidth": 1})).contains("did you mean \"rate\""));
        assert!(error(json!("20ms")).contains("must be an object"));
    }

    #[test]
    fn a_path_compounds_its_links() {
        let a = LinkParams::ms(5).loss(0.1);
        let b = LinkParams {
            rate: Some(1_000_000),
            ..LinkParams::ms(20).loss(0.1)
        };
        let ab = a.then(&b);
        assert_eq!(ab.delay, Duration::from_millis(25));
        assert!((ab.loss - 0.19).abs() < 1e-12);
        assert_eq!(ab.rate, Some(1_000_000));
        assert_eq!(
            LinkParams::default().then(&LinkParams::default()),
            LinkParams::default()
        );
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics(s in "\\PC{0,24}") {
            let _ = parse_duration_str(&s);
            let _ = parse_percent_str(&s);
            let _ = parse_rate_str(&s);
        }
    }
}
