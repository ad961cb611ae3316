//! nf_tables over netlink: just enough to program Hangar's own tables (NAT, isolation,
//! anti-spoofing) in one atomic batch, and to list what tables and rules exist.
//!
//! A ruleset is written as tables of chains of rules; a rule is a list of [`Expr`]s, which map
//! one to one onto the kernel's expressions (`meta`, `payload`, `cmp`, `bitwise`, `ct`,
//! `immediate`, `masq`), as `nft --debug=netlink` prints them. [`replace_table`] swaps a whole
//! table in one transaction: readers see the old rules or the new ones, never a mix.

use std::io;

use crate::*;

/// `NETLINK_NETFILTER`.
const NETLINK_NETFILTER: u32 = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NLM_F_APPEND: u16 = 0x800;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;

/// The register expressions load into and compare from (`NFT_REG_1`, 16 bytes).
const REG: u32 = 1;
/// The verdict register.
const REG_VERDICT: u32 = 0;

/// Address families (`NFPROTO_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    /// `ip`: IPv4, routed traffic.
    Ipv4 = 2,
    /// `bridge`: frames crossing a Linux bridge.
    Bridge = 7,
}

impl Family {
    fn from_raw(raw: u8) -> Option<Family> {
        match raw {
            2 => Some(Family::Ipv4),
            7 => Some(Family::Bridge),
            _ => None,
        }
    }
}

/// Where a base chain hooks in (`NF_INET_*`, which the bridge family shares by number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// Before routing (bridge family: as a frame enters a bridge port).
    Prerouting = 0,
    /// Addressed to this host.
    Input = 1,
    /// Routed through this host.
    Forward = 2,
    /// Made by this host.
    Output = 3,
    /// After routing, leaving.
    Postrouting = 4,
}

/// A base chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Its name.
    pub name: String,
    /// `filter` or `nat`.
    pub kind: &'static str,
    /// Its hook.
    pub hook: Hook,
    /// Its priority (lower runs first).
    pub priority: i32,
    /// Its rules, in order.
    pub rules: Vec<Vec<Expr>>,
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    /// Equal.
    Eq = 0,
    /// Not equal.
    Neq = 1,
}

/// Which header a payload offset counts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    /// The link layer (Ethernet) header.
    Link = 0,
    /// The network (IP, ARP) header.
    Network = 1,
    /// The transport (TCP, UDP) header.
    Transport = 2,
}

/// Metadata keys (`NFT_META_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meta {
    /// Input interface name (16 bytes, NUL-padded).
    IifName = 6,
    /// Output interface name.
    OifName = 7,
    /// Layer-4 protocol number (1 byte).
    L4Proto = 16,
}

/// Verdicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Drop the packet.
    Drop = 0,
    /// Accept it (this chain).
    Accept = 1,
}

/// One expression of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// Load metadata into the register.
    Meta(Meta),
    /// Load `len` bytes at `offset` from a header into the register.
    Payload(Base, u32, u32),
    /// `register & mask` (the mask's length is the operand's).
    And(Vec<u8>),
    /// Load the conntrack state bits (host-endian u32) into the register.
    CtState,
    /// Compare the register's first `value.len()` bytes; the rule stops here when false.
    Cmp(Cmp, Vec<u8>),
    /// Stop with a verdict.
    Verdict(Verdict),
    /// Source NAT to the outgoing interface's address.
    Masquerade,
    /// Put `value` in register `reg` (1 or 2).
    Load(u32, Vec<u8>),
    /// Destination NAT to the IPv4 address in register 1 and the port in register 2.
    Dnat,
    /// Load the routing type of the destination address (host-endian u32; 2 is local).
    FibDaddrType,
    /// Load the conntrack status bits (host-endian u32; 0x20: destination NAT applied).
    CtStatus,
}

/// The routing type of a local address (`RTN_LOCAL`), as [`Expr::FibDaddrType`] loads it.
pub const RTN_LOCAL: u32 = 2;
/// The conntrack status bit of a destination-NATed connection (`IPS_DST_NAT`).
pub const IPS_DST_NAT: u32 = 0x20;

/// An interface name as `meta iifname` loads it: 16 bytes, NUL-padded.
pub fn ifname(name: &str) -> Vec<u8> {
    let mut v = name.as_bytes().to_vec();
    v.resize(16, 0);
    v
}

fn be32(out: &mut Vec<u8>, kind: u16, value: u32) {
    attr(out, kind, &value.to_be_bytes());
}

fn data(out: &mut Vec<u8>, kind: u16, bytes: &[u8]) {
    nested(out, kind, |d| attr(d, NFTA_DATA_VALUE, bytes));
}

fn expr(out: &mut Vec<u8>, e: &Expr) {
    nested(out, NFTA_LIST_ELEM, |elem| {
        let name: &[u8] = match e {
            Expr::Meta(_) => b"meta\0",
            Expr::Payload(..) => b"payload\0",
            Expr::And(_) => b"bitwise\0",
            Expr::CtState => b"ct\0",
            Expr::Cmp(..) => b"cmp\0",
            Expr::Verdict(_) => b"immediate\0",
            Expr::Masquerade => b"masq\0",
            Expr::Load(..) => b"immediate\0",
            Expr::Dnat => b"nat\0",
            Expr::FibDaddrType => b"fib\0",
            Expr::CtStatus => b"ct\0",
        };
        attr(elem, NFTA_EXPR_NAME, name);
        nested(elem, NFTA_EXPR_DATA, |d| match e {
            // meta: DREG 1, KEY 2.
            Expr::Meta(key) => {
                be32(d, 1, REG);
                be32(d, 2, *key as u32);
            }
            // payload: DREG 1, BASE 2, OFFSET 3, LEN 4.
            Expr::Payload(base, offset, len) => {
                be32(d, 1, REG);
                be32(d, 2, *base as u32);
                be32(d, 3, *offset);
                be32(d, 4, *len);
            }
            // bitwise: SREG 1, DREG 2, LEN 3, MASK 4, XOR 5.
            Expr::And(mask) => {
                be32(d, 1, REG);
                be32(d, 2, REG);
                be32(d, 3, mask.len() as u32);
                data(d, 4, mask);
                data(d, 5, &vec![0; mask.len()]);
            }
            // ct: DREG 1, KEY 2 (NFT_CT_STATE = 0).
            Expr::CtState => {
                be32(d, 1, REG);
                be32(d, 2, 0);
            }
            // cmp: SREG 1, OP 2, DATA 3.
            Expr::Cmp(op, value) => {
                be32(d, 1, REG);
                be32(d, 2, *op as u32);
                data(d, 3, value);
            }
            // immediate: DREG 1, DATA 2 (a verdict).
            Expr::Verdict(v) => {
                be32(d, 1, REG_VERDICT);
                nested(d, 2, |data| {
                    nested(data, NFTA_DATA_VERDICT, |verdict| {
                        be32(verdict, NFTA_VERDICT_CODE, *v as u32)
                    })
                });
            }
            Expr::Masquerade => {}
            // immediate: DREG 1, DATA 2 (a value).
            Expr::Load(reg, value) => {
                be32(d, 1, *reg);
                data(d, 2, value);
            }
            // nat: TYPE 1 (dnat = 1), FAMILY 2 (ipv4), REG_ADDR_MIN 3, REG_PROTO_MIN 5.
            Expr::Dnat => {
                be32(d, 1, 1);
                be32(d, 2, Family::Ipv4 as u32);
                be32(d, 3, 1);
                be32(d, 5, 2);
            }
            // fib: DREG 1, RESULT 2 (address type = 3), FLAGS 3 (by destination address = 2).
            Expr::FibDaddrType => {
                be32(d, 1, REG);
                be32(d, 2, 3);
                be32(d, 3, 2);
            }
            // ct: DREG 1, KEY 2 (NFT_CT_STATUS = 2).
            Expr::CtStatus => {
                be32(d, 1, REG);
                be32(d, 2, 2);
            }
        });
    });
}

/// `struct nfgenmsg`: family, version 0, resource id (big-endian).
fn nfgenmsg(family: u8, res_id: u16) -> Vec<u8> {
    let mut v = vec![family, 0];
    v.extend_from_slice(&res_id.to_be_bytes());
    v
}

fn msg_type(kind: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | kind
}

/// Replaces table `name` of `family` with exactly `chains` (or removes it when `chains` is
/// `None`), in one transaction.
pub fn replace_table(family: Family, name: &str, chains: Option<&[Chain]>) -> io::Result<()> {
    let f = family as u8;
    let table = |kind: u16| {
        let mut body = nfgenmsg(f, 0);
        attr(&mut body, NFTA_TABLE_NAME, &cstr(name));
        (msg_type(kind), body)
    };
    let mut messages = Vec::new();
    // "Create if missing, then delete" makes the delete succeed whether or not it existed.
    let (k, b) = table(NFT_MSG_NEWTABLE);
    messages.push((k, NLM_F_CREATE, b));
    let (k, b) = table(NFT_MSG_DELTABLE);
    messages.push((k, 0, b));
    if let Some(chains) = chains {
        let (k, b) = table(NFT_MSG_NEWTABLE);
        messages.push((k, NLM_F_CREATE, b));
        for chain in chains {
            let mut body = nfgenmsg(f, 0);
            attr(&mut body, NFTA_CHAIN_TABLE, &cstr(name));
            attr(&mut body, NFTA_CHAIN_NAME, &cstr(&chain.name));
            nested(&mut body, NFTA_CHAIN_HOOK, |h| {
                be32(h, NFTA_HOOK_HOOKNUM, chain.hook as u32);
                be32(h, NFTA_HOOK_PRIORITY, chain.priority as u32);
            });
            be32(&mut body, NFTA_CHAIN_POLICY, Verdict::Accept as u32);
            attr(&mut body, NFTA_CHAIN_TYPE, &cstr(chain.kind));
            messages.push((msg_type(NFT_MSG_NEWCHAIN), NLM_F_CREATE, body));
            for rule in &chain.rules {
                let mut body = nfgenmsg(f, 0);
                attr(&mut body, NFTA_RULE_TABLE, &cstr(name));
                attr(&mut body, NFTA_RULE_CHAIN, &cstr(&chain.name));
                nested(&mut body, NFTA_RULE_EXPRESSIONS, |list| {
                    for e in rule {
                        expr(list, e);
                    }
                });
                messages.push((msg_type(NFT_MSG_NEWRULE), NLM_F_CREATE | NLM_F_APPEND, body));
            }
        }
    }
    let mut socket = Socket::open(NETLINK_NETFILTER)?;
    socket.call_framed_batch(
        (NFNL_MSG_BATCH_BEGIN, nfgenmsg(0, NFNL_SUBSYS_NFTABLES)),
        &messages,
        (NFNL_MSG_BATCH_END, nfgenmsg(0, NFNL_SUBSYS_NFTABLES)),
    )
}

/// Every nf_tables table of the families Hangar uses: (family, name).
pub fn tables() -> io::Result<Vec<(Family, String)>> {
    let mut socket = Socket::open(NETLINK_NETFILTER)?;
    let replies = socket.call(msg_type(NFT_MSG_GETTABLE), NLM_F_DUMP, &nfgenmsg(0, 0))?;
    let mut out = Vec::new();
    for (_, msg) in replies {
        let (Some(family), Some(rest)) =
            (msg.first().and_then(|f| Family::from_raw(*f)), msg.get(4..))
        else {
            continue;
        };
        if let Some((_, v)) = attrs(rest).into_iter().find(|(a, _)| *a == NFTA_TABLE_NAME) {
            out.push((family, str_of(v)));
        }
    }
    out.sort();
    Ok(out)
}

/// How many rules table `name` of `family` holds (0 when it does not exist).
pub fn rule_count(family: Family, name: &str) -> io::Result<usize> {
    let mut socket = Socket::open(NETLINK_NETFILTER)?;
    let replies = socket.call(msg_type(NFT_MSG_GETRULE), NLM_F_DUMP, &nfgenmsg(family as u8, 0))?;
    Ok(replies
        .iter()
        .filter(|(_, msg)| {
            msg.get(4..).is_some_and(|rest| {
                attrs(rest).into_iter().any(|(a, v)| a == NFTA_RULE_TABLE && str_of(v) == name)
            })
        })
        .count())
}
