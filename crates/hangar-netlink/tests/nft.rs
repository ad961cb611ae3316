//! nf_tables batches against the kernel, inside a network namespace the test creates.

use std::io::Write;

use hangar_netlink::nft::*;
use hangar_testkit::netns::Netns;

fn chains() -> Vec<Chain> {
    let from = |name: &str| vec![Expr::Meta(Meta::IifName), Expr::Cmp(Cmp::Eq, ifname(name))];
    vec![
        Chain {
            name: "postrouting".into(),
            kind: "nat",
            hook: Hook::Postrouting,
            priority: 100,
            rules: vec![vec![
                Expr::Payload(Base::Network, 12, 4),
                Expr::And(vec![255, 255, 255, 0]),
                Expr::Cmp(Cmp::Eq, vec![10, 77, 0, 0]),
                Expr::Meta(Meta::OifName),
                Expr::Cmp(Cmp::Neq, ifname("hgb-x")),
                Expr::Masquerade,
            ]],
        },
        Chain {
            name: "input".into(),
            kind: "filter",
            hook: Hook::Input,
            priority: 0,
            rules: vec![
                [
                    from("hgb-x"),
                    vec![
                        Expr::CtState,
                        Expr::And(6u32.to_ne_bytes().to_vec()),
                        Expr::Cmp(Cmp::Neq, vec![0; 4]),
                        Expr::Verdict(Verdict::Accept),
                    ],
                ]
                .concat(),
                [
                    from("hgb-x"),
                    vec![
                        Expr::Meta(Meta::L4Proto),
                        Expr::Cmp(Cmp::Eq, vec![1]),
                        Expr::Verdict(Verdict::Accept),
                    ],
                ]
                .concat(),
                [from("hgb-x"), vec![Expr::Verdict(Verdict::Drop)]].concat(),
            ],
        },
    ]
}

#[test]
fn a_table_is_replaced_whole_and_removed_without_trace() {
    let ns = match Netns::new() {
        Ok(ns) => ns,
        Err(reason) => {
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED a_table_is_replaced_whole_and_removed_without_trace: {reason}"
            );
            return;
        }
    };
    ns.run(|| {
        assert_eq!(tables().unwrap(), []);
        replace_table(Family::Ipv4, "hangar", Some(&chains())).unwrap();
        assert_eq!(tables().unwrap(), [(Family::Ipv4, "hangar".to_string())]);
        assert_eq!(rule_count(Family::Ipv4, "hangar").unwrap(), 4);
        // Replacing is idempotent and whole: the same rules once, not twice.
        replace_table(Family::Ipv4, "hangar", Some(&chains())).unwrap();
        assert_eq!(rule_count(Family::Ipv4, "hangar").unwrap(), 4);
        let bridge = vec![Chain {
            name: "prerouting".into(),
            kind: "filter",
            hook: Hook::Prerouting,
            priority: -200,
            rules: vec![vec![
                Expr::Meta(Meta::IifName),
                Expr::Cmp(Cmp::Eq, ifname("hg-tap")),
                Expr::Payload(Base::Link, 6, 6),
                Expr::Cmp(Cmp::Neq, vec![0x52, 0x54, 0, 1, 2, 3]),
                Expr::Verdict(Verdict::Drop),
            ]],
        }];
        replace_table(Family::Bridge, "hangar", Some(&bridge)).unwrap();
        assert_eq!(rule_count(Family::Bridge, "hangar").unwrap(), 1);

        // A batch the kernel refuses changes nothing: the old table stays whole.
        let mut bad = chains();
        bad[0].kind = "no-such-type";
        let err = replace_table(Family::Ipv4, "hangar", Some(&bad)).unwrap_err();
        assert!(err.raw_os_error().is_some(), "{err}");
        assert_eq!(rule_count(Family::Ipv4, "hangar").unwrap(), 4);

        replace_table(Family::Ipv4, "hangar", None).unwrap();
        replace_table(Family::Bridge, "hangar", None).unwrap();
        replace_table(Family::Bridge, "hangar", None).unwrap();
        assert_eq!(tables().unwrap(), []);
    });
}
