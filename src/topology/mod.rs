//! Topology model: the bootstrapper's JSON file, parsed and checked.
//!
//! This module owns the file format (a JSON object keyed by device name, compatible with the
//! original report) and the [`Topology`] it describes. Its parts: `device` is one device's
//! entry (addresses, role, name rules) and its validation, which devices also apply to what the
//! bootstrapper sends them ([`Device::from_json`]); `parse` turns a file into a [`Topology`]
//! with `FILE:LINE:COL` errors; `scan` finds where each key and value starts in the text, so
//! schema errors can point at them; `check` holds the consistency checks behind
//! `overlayd check-topology`; `link` holds the underlay's subnets and the parameters of its links
//! (a device's `"links"`: delay, jitter, loss, duplication, rate). Everything public is re-exported here. Parsing and checking work
//! on text and values; only [`load`], [`check_file`] and [`run_check`] read files.
//!
//! Roles: a device's role is its `"role"` field when present. Otherwise `"edge": true` makes it an
//! edge node, and else the role is inferred from the name, as in the report: a name starting with
//! `S` (e.g. `S1`, `server1`, case-insensitive) is a server, one starting with `C` (`C1`,
//! `client1`) a client, and anything else an overlay node. [`check()`] warns when that inference
//! looks accidental (for example `core1` would be a client).

use std::collections::BTreeMap;
use std::net::IpAddr;

mod check;
mod device;
mod link;
mod parse;
mod scan;
#[cfg(test)]
mod testing;

pub(crate) use check::name_list;
pub use check::{check, check_file, run_check, Finding, Severity};
pub use device::{
    infer_role_from_name, validate_name, AddrError, Device, DeviceError, DeviceRole, NeighbourAddr,
    ParseRoleError, PathSeg, MAX_NAME_LEN,
};
pub use link::{
    parse_duration_str, parse_percent_str, parse_rate_str, resolve_links, subnet_members, LinkAt,
    LinkKey, LinkParams, Net, V4_PREFIX, V6_PREFIX,
};
pub use parse::{load, parse, parse_bytes, TopologyError};

/// All devices of a topology file, by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Topology {
    devices: BTreeMap<String, Device>,
}

impl Topology {
    pub fn get(&self, name: &str) -> Option<&Device> {
        self.devices.get(name)
    }

    /// Devices in name order.
    pub fn devices(&self) -> impl Iterator<Item = &Device> {
        self.devices.values()
    }

    /// Device names in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.devices.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// The devices that list `ip` in their `"addresses"`.
    pub fn owners_of(&self, ip: IpAddr) -> impl Iterator<Item = &Device> {
        self.devices
            .values()
            .filter(move |d| d.addresses.contains(&ip))
    }
}
