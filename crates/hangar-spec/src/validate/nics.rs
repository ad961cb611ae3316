//! `[[nic]]` and its port forwards (`[tcp:|udp:]HOST:GUEST`, each host port used once).

use std::collections::{BTreeMap, BTreeSet};

use hangar_core::error::ErrorCode;
use hangar_core::network::DEFAULT_NETWORK;
use hangar_core::spec::*;

use super::constants::{limits, NIC_FIELDS};
use super::{Obj, Walker};
use crate::diag::Diagnostic;
use crate::node::Node;

impl Walker<'_> {
    pub(super) fn nics(&mut self, top: &Obj<'_>) -> Option<Vec<NicSpec>> {
        let items = self.array_of_tables(top, "nic", NIC_FIELDS, limits::NICS)?;
        let before = self.errors.len();
        let mut seen = BTreeSet::new();
        let mut ports: BTreeMap<(Protocol, u16), String> = BTreeMap::new();
        let mut out = Vec::new();
        for o in &items {
            let name = self.device_name(o, &mut seen, "nic");
            let modes = [
                ("user", NicMode::User),
                ("tap", NicMode::Tap),
                ("bridge", NicMode::Bridge),
                ("none", NicMode::None),
            ];
            let mode = if o.map.contains_key("mode") {
                self.choice(o, "mode", &modes)
            } else {
                Some(NicMode::User)
            };
            let forward = self.forwards(o, mode, &mut ports);
            let network = self.nic_network(o, mode);
            if let (Some(name), Some(mode), Some(forward), Some(network)) =
                (name, mode, forward, network)
            {
                out.push(NicSpec { name, mode, forward, network });
            }
        }
        (self.errors.len() == before).then_some(out)
    }

    /// `network`: with `mode = "bridge"`, `default` when absent (a tenant's VM, a pool
    /// instance among them, so joins its tenant's default network); refused with any other
    /// mode. `Some(None)` is "valid and absent".
    fn nic_network(
        &mut self, o: &Obj<'_>, mode: Option<NicMode>,
    ) -> Option<Option<hangar_core::ids::NetworkName>> {
        let bridge = mode == Some(NicMode::Bridge);
        if !o.map.contains_key("network") {
            return Some(bridge.then(|| {
                hangar_core::ids::NetworkName::new(DEFAULT_NETWORK).expect("a valid name")
            }));
        }
        let raw = self.string(o, "network")?;
        if !bridge {
            self.push(
                Diagnostic::new(
                    ErrorCode::SpecInvalidValue,
                    o.at("network"),
                    "`network` is for bridge NICs",
                )
                .hint("set mode = \"bridge\" on this NIC, or remove `network`"),
            );
            return None;
        }
        match hangar_core::ids::NetworkName::new(raw) {
            Ok(name) => Some(Some(name)),
            Err(e) => {
                self.name_error(o.at("network"), e);
                None
            }
        }
    }

    pub(super) fn forwards(
        &mut self, o: &Obj<'_>, mode: Option<NicMode>,
        ports: &mut BTreeMap<(Protocol, u16), String>,
    ) -> Option<Vec<PortForward>> {
        let Some(node) = o.map.get("forward") else {
            return Some(Vec::new());
        };
        let Node::Arr(items) = node else {
            self.type_error(o.at("forward"), "an array of strings", node);
            return None;
        };
        if !items.is_empty() && mode.is_some_and(|m| !matches!(m, NicMode::User | NicMode::Bridge))
        {
            self.push(
                Diagnostic::new(
                    ErrorCode::SpecForward,
                    o.at("forward"),
                    "port forwards need a user or bridge NIC",
                )
                .hint("set mode = \"user\" or \"bridge\" on this NIC, or remove `forward`"),
            );
            return None;
        }
        let before = self.errors.len();
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let path = format!("{}[{i}]", o.at("forward"));
            let Node::Str(rule) = item else {
                self.type_error(path, "a string like \"8080:80\"", item);
                continue;
            };
            match parse_forward(rule) {
                Ok(fwd) => {
                    if let Some(first) = ports.insert((fwd.proto, fwd.host), path.clone()) {
                        self.push(
                            Diagnostic::new(
                                ErrorCode::SpecDuplicatePort,
                                path,
                                format!("host port {}/{} is already forwarded by {first}", fwd.host, fwd.proto.as_str()),
                            )
                            .hint("use a different host port"),
                        );
                    } else {
                        out.push(fwd);
                    }
                }
                Err(ForwardProblem::Syntax) => self.push(
                    Diagnostic::new(ErrorCode::SpecForward, path, format!("{rule:?} is not a forward rule"))
                        .hint("write \"HOST_PORT:GUEST_PORT\", optionally prefixed with tcp: or udp:, e.g. \"tcp:8080:80\""),
                ),
                Err(ForwardProblem::Port(p)) => self.push(
                    Diagnostic::new(ErrorCode::SpecOutOfRange, path, format!("port {p} is outside 1..=65535"))
                        .hint("ports are 1 to 65535"),
                ),
            }
        }
        (self.errors.len() == before).then_some(out)
    }
}

enum ForwardProblem {
    Syntax,
    Port(u64),
}

/// Parses `[tcp:|udp:]HOST:GUEST`. The protocol defaults to tcp, so `"8080:80"` and
/// `"tcp:8080:80"` are the same rule.
fn parse_forward(rule: &str) -> Result<PortForward, ForwardProblem> {
    let mut parts: Vec<&str> = rule.trim().split(':').collect();
    let proto = match parts.first().map(|p| p.to_ascii_lowercase()).as_deref() {
        Some("tcp") => {
            parts.remove(0);
            Protocol::Tcp
        }
        Some("udp") => {
            parts.remove(0);
            Protocol::Udp
        }
        _ => Protocol::Tcp,
    };
    let (all_addresses, host, guest) = match parts.as_slice() {
        [host, guest] => (false, *host, *guest),
        ["127.0.0.1", host, guest] => (false, *host, *guest),
        ["0.0.0.0", host, guest] => (true, *host, *guest),
        _ => return Err(ForwardProblem::Syntax),
    };
    let port = |s: &str| -> Result<u16, ForwardProblem> {
        if s.is_empty() || !s.chars().all(|c| c.is_ascii_digit()) || s.len() > 6 {
            return Err(ForwardProblem::Syntax);
        }
        let n: u64 = s.parse().map_err(|_| ForwardProblem::Syntax)?;
        u16::try_from(n).ok().filter(|p| *p > 0).ok_or(ForwardProblem::Port(n))
    };
    Ok(PortForward { proto, host: port(host)?, guest: port(guest)?, all_addresses })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_rules() {
        let f = |s| parse_forward(s).ok();
        assert_eq!(f("8080:80"), f("tcp:8080:80"));
        assert_eq!(f("UDP:53:53").unwrap().proto, Protocol::Udp);
        assert!(f("sctp:1:2").is_none());
        assert!(f("80").is_none());
        assert!(f("a:b").is_none());
        assert!(matches!(parse_forward("0:80"), Err(ForwardProblem::Port(0))));
        assert!(matches!(parse_forward("70000:80"), Err(ForwardProblem::Port(70000))));
        assert!(f("0.0.0.0:8080:80").unwrap().all_addresses);
        assert!(f("udp:0.0.0.0:53:53").unwrap().all_addresses);
        assert_eq!(f("127.0.0.1:8080:80"), f("8080:80"));
        assert!(f("10.0.0.1:8080:80").is_none(), "only loopback or every address");
    }
}
