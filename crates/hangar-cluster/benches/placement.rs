//! The scheduler's placement (`hangar_cluster::place`), pure: no etcd, no nodes, only the
//! decision. The baseline in the same run is a round-robin that ignores capacity, spread and
//! the previous placement: what the rules cost is the ratio between the two.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use hangar_cluster::{place, Assignment, NodeInfo, NodeView, PoolDemand, Resources, Schedule};
use hangar_fleet::Desired;

fn nodes(n: usize) -> Vec<NodeView> {
    (0..n)
        .map(|i| NodeView {
            info: NodeInfo {
                name: format!("node-{i:03}"),
                advertise: format!("10.0.0.{i}:7070"),
                tls_fingerprint: None,
                capacity: Resources { vcpus: 512, memory_mib: 1 << 20, disk_mib: 1 << 22 },
                accel: "kvm".into(),
                qemu_version: Some("10.0.2".into()),
                images: vec!["minimal".into()],
                joined_at: 0,
            },
            alive: true,
            schedule: Schedule::Ready,
            unmanaged: Resources::default(),
        })
        .collect()
}

fn pools(pools: usize, each: u32) -> Vec<PoolDemand> {
    (0..pools)
        .map(|i| PoolDemand {
            pool: format!("t{}--p{i}", i % 10),
            desired: Desired { warm: each, ..Desired::default() },
            per_instance: Resources { vcpus: 1, memory_mib: 256, disk_mib: 64 },
            requires_kvm: false,
            image: Some("minimal".into()),
        })
        .collect()
}

/// The baseline: instance k of every pool to node k mod n, nothing checked.
fn round_robin(nodes: &[NodeView], pools: &[PoolDemand]) -> Assignment {
    let mut out: Assignment = BTreeMap::new();
    let mut k = 0usize;
    for pool in pools {
        for _ in 0..pool.desired.warm {
            let node = &nodes[k % nodes.len()].info.name;
            out.entry(node.clone()).or_default().entry(pool.pool.clone()).or_default().warm += 1;
            k += 1;
        }
    }
    out
}

fn bench(c: &mut Criterion) {
    // (name, nodes, pools, instances per pool): 1,000 instances over 3 nodes, and the issue's
    // simulation size, 100 nodes x 100 instances.
    for (label, n, p, each) in [("1000x3", 3, 10, 100), ("10000x100", 100, 100, 100)] {
        let (nodes, pools) = (nodes(n), pools(p, each));
        c.bench_function(&format!("placement_{label}_round_robin_baseline"), |b| {
            b.iter(|| round_robin(black_box(&nodes), black_box(&pools)))
        });
        c.bench_function(&format!("placement_{label}_from_nothing"), |b| {
            b.iter(|| place(black_box(&nodes), black_box(&pools), &Assignment::new()))
        });
        // The steady state: every pass after the first finds everything placed already.
        let placed = place(&nodes, &pools, &Assignment::new()).nodes;
        c.bench_function(&format!("placement_{label}_nothing_to_change"), |b| {
            b.iter(|| place(black_box(&nodes), black_box(&pools), black_box(&placed)))
        });
    }
}

criterion_group! {
    name = benches;
    // The 10,000-instance placements take milliseconds each: fewer samples keep the run short.
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
