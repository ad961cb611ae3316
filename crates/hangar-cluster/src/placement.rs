//! Where each pool's instances run: a pure function of the nodes, the pools and the previous
//! placement, so it is tested like `hangar_fleet::reconcile::plan` and the scheduler only has
//! to read its inputs from etcd and write the result back.
//!
//! The rules, in order:
//! 1. An instance stays where it is while its node is alive and not draining (a cordon stops
//!    new placements, not old ones); a pool that shrank loses instances from the nodes holding
//!    most of it first.
//! 2. What is missing goes to live, ready nodes that can run it (KVM when the pool needs it, the
//!    pool's image) and have room for it: running instances need their vCPUs and memory, warm
//!    and spare ones their memory (they use no CPU), sleeping ones their memory on disk.
//! 3. Among those, the node holding fewest of the pool's instances (a pool spreads over nodes),
//!    then the one left with the least free memory (bin-packing keeps whole nodes free for big
//!    instances), then the name (the same inputs give the same placement).
//! 4. What fits nowhere is reported, not forced.

use std::collections::BTreeMap;

use hangar_fleet::Desired;

use crate::node::{NodeView, Resources, Schedule};

/// Per node, per pool: how many instances of each kind the node should keep.
pub type Assignment = BTreeMap<String, BTreeMap<String, Desired>>;

/// A pool's demand on the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolDemand {
    /// The pool's full id (`tenant--pool`).
    pub pool: String,
    /// How many instances of each kind, cluster-wide.
    pub desired: Desired,
    /// What one instance needs while it has a process (vCPUs, memory; disk for its overlay).
    pub per_instance: Resources,
    /// It must run with KVM.
    pub requires_kvm: bool,
    /// The built-in image it boots, if any: only nodes that have it can run it.
    pub image: Option<String>,
}

/// The scheduler's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// Every node's share, nodes with none included (so a node learns it has nothing to run).
    pub nodes: Assignment,
    /// Per pool, what fits nowhere now.
    pub unplaced: BTreeMap<String, Desired>,
}

/// The kinds of instance, in the order they are placed (the ones a claim needs at once first).
const KINDS: [Kind; 4] = [Kind::Running, Kind::Warm, Kind::Spare, Kind::Sleeping];

#[derive(Debug, Clone, Copy)]
enum Kind {
    Running,
    Warm,
    Spare,
    Sleeping,
}

impl Kind {
    fn get(self, d: &Desired) -> u32 {
        match self {
            Kind::Running => d.running,
            Kind::Warm => d.warm,
            Kind::Spare => d.spare,
            Kind::Sleeping => d.sleeping,
        }
    }

    fn get_mut(self, d: &mut Desired) -> &mut u32 {
        match self {
            Kind::Running => &mut d.running,
            Kind::Warm => &mut d.warm,
            Kind::Spare => &mut d.spare,
            Kind::Sleeping => &mut d.sleeping,
        }
    }

    /// What one instance of this kind holds on its node: a running one its vCPUs and memory; a
    /// warm (paused) one or a spare (waiting for its state) its memory but no CPU time; a
    /// sleeping one no process, only its memory saved on disk besides its overlay.
    fn footprint(self, per: Resources) -> Resources {
        match self {
            Kind::Running => per,
            Kind::Warm | Kind::Spare => Resources { vcpus: 0, ..per },
            Kind::Sleeping => Resources {
                vcpus: 0,
                memory_mib: 0,
                disk_mib: per.disk_mib.saturating_add(per.memory_mib),
            },
        }
    }
}

/// What the pool's instances on one node hold.
fn held(pool: &PoolDemand, d: &Desired) -> Resources {
    KINDS.iter().fold(Resources::default(), |sum, k| {
        sum.plus(k.footprint(pool.per_instance).times(k.get(d)))
    })
}

/// Places every pool's instances on `nodes`, keeping what `current` placed where it may stay.
pub fn place(nodes: &[NodeView], pools: &[PoolDemand], current: &Assignment) -> Placement {
    let mut pools: Vec<&PoolDemand> = pools.iter().collect();
    pools.sort_by(|a, b| a.pool.cmp(&b.pool));
    let mut nodes: Vec<&NodeView> = nodes.iter().collect();
    nodes.sort_by(|a, b| a.info.name.cmp(&b.info.name));
    let mut out = Placement::default();
    for node in &nodes {
        out.nodes.insert(node.info.name.clone(), BTreeMap::new());
    }

    // 1. Keep what may stay, up to each pool's desired counts.
    for pool in &pools {
        for node in nodes.iter().filter(|n| n.alive && n.schedule != Schedule::Draining) {
            if let Some(kept) = current.get(&node.info.name).and_then(|p| p.get(&pool.pool)) {
                out.nodes
                    .get_mut(&node.info.name)
                    .expect("every node has an entry")
                    .insert(pool.pool.clone(), *kept);
            }
        }
        for kind in KINDS {
            loop {
                let total: u32 =
                    out.nodes.values().filter_map(|p| p.get(&pool.pool)).map(|d| kind.get(d)).sum();
                if total <= kind.get(&pool.desired) {
                    break;
                }
                // The node holding most of this pool gives one up (the last name among equals).
                let fullest = out
                    .nodes
                    .iter()
                    .filter_map(|(name, p)| {
                        p.get(&pool.pool)
                            .filter(|d| kind.get(d) > 0)
                            .map(|d| (d.total(), name.clone()))
                    })
                    .max()
                    .map(|(_, name)| name)
                    .expect("a total above zero is on some node");
                let d = out
                    .nodes
                    .get_mut(&fullest)
                    .and_then(|p| p.get_mut(&pool.pool))
                    .expect("just found");
                *kind.get_mut(d) -= 1;
            }
        }
    }
    for shares in out.nodes.values_mut() {
        shares.retain(|_, d| d.total() > 0);
    }

    // What each node has left, after what it runs outside the pools and what was kept.
    let mut free: BTreeMap<String, Resources> = BTreeMap::new();
    for node in &nodes {
        let kept =
            out.nodes[&node.info.name].iter().fold(
                Resources::default(),
                |sum, (id, d)| match pools.iter().find(|p| p.pool == *id) {
                    Some(pool) => sum.plus(held(pool, d)),
                    None => sum,
                },
            );
        free.insert(node.info.name.clone(), node.info.capacity.minus(node.unmanaged).minus(kept));
    }

    // 2-4. Place what is missing, one instance at a time.
    for pool in &pools {
        for kind in KINDS {
            let have: u32 =
                out.nodes.values().filter_map(|p| p.get(&pool.pool)).map(|d| kind.get(d)).sum();
            let need = kind.footprint(pool.per_instance);
            for _ in have..kind.get(&pool.desired) {
                let best = nodes
                    .iter()
                    .filter(|n| n.alive && n.schedule == Schedule::Ready)
                    .filter(|n| !pool.requires_kvm || n.info.accel == "kvm")
                    .filter(|n| pool.image.as_ref().is_none_or(|i| n.info.images.contains(i)))
                    .filter(|n| free[&n.info.name].holds(need))
                    .min_by_key(|n| {
                        let node: &NodeView = n;
                        let name = node.info.name.as_str();
                        let mine = out.nodes[name].get(&pool.pool).map(Desired::total).unwrap_or(0);
                        let left = free[name].minus(need).memory_mib;
                        (mine, left, name)
                    });
                match best {
                    Some(node) => {
                        let name = node.info.name.clone();
                        let d = out
                            .nodes
                            .get_mut(&name)
                            .expect("every node has an entry")
                            .entry(pool.pool.clone())
                            .or_default();
                        *kind.get_mut(d) += 1;
                        let f = free.get_mut(&name).expect("every node has room recorded");
                        *f = f.minus(need);
                    }
                    None => {
                        *kind.get_mut(out.unplaced.entry(pool.pool.clone()).or_default()) += 1;
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::NodeInfo;

    fn node(name: &str, memory_mib: u64) -> NodeView {
        NodeView {
            info: NodeInfo {
                name: name.into(),
                advertise: format!("{name}:7070"),
                tls_fingerprint: None,
                capacity: Resources { vcpus: 16, memory_mib, disk_mib: 100_000 },
                accel: "tcg".into(),
                qemu_version: None,
                images: vec!["minimal".into()],
                joined_at: 0,
            },
            alive: true,
            schedule: Schedule::Ready,
            unmanaged: Resources::default(),
        }
    }

    fn pool(id: &str, warm: u32) -> PoolDemand {
        PoolDemand {
            pool: id.into(),
            desired: Desired { warm, ..Desired::default() },
            per_instance: Resources { vcpus: 1, memory_mib: 256, disk_mib: 64 },
            requires_kvm: false,
            image: Some("minimal".into()),
        }
    }

    fn warm_on(p: &Placement, pool: &str) -> Vec<(String, u32)> {
        p.nodes
            .iter()
            .map(|(n, pools)| (n.clone(), pools.get(pool).map(|d| d.warm).unwrap_or(0)))
            .collect()
    }

    fn counts(v: &[(&str, u32)]) -> Vec<(String, u32)> {
        v.iter().map(|(n, c)| (n.to_string(), *c)).collect()
    }

    #[test]
    fn a_pool_spreads_evenly_over_equal_nodes() {
        let nodes = [node("a", 8192), node("b", 8192), node("c", 8192)];
        let p = place(&nodes, &[pool("acme--web", 6)], &Assignment::new());
        assert_eq!(warm_on(&p, "acme--web"), counts(&[("a", 2), ("b", 2), ("c", 2)]));
        assert!(p.unplaced.is_empty());
    }

    #[test]
    fn the_same_inputs_give_the_same_placement_and_a_second_pass_changes_nothing() {
        let nodes = [node("a", 4096), node("b", 8192), node("c", 2048)];
        let pools = [pool("acme--web", 5), pool("acme--db", 3)];
        let first = place(&nodes, &pools, &Assignment::new());
        assert_eq!(first, place(&nodes, &pools, &Assignment::new()));
        assert_eq!(first, place(&nodes, &pools, &first.nodes), "a stable placement is kept");
    }

    #[test]
    fn instances_stay_where_they_are_and_only_the_missing_ones_move() {
        let nodes = [node("a", 8192), node("b", 8192), node("c", 8192)];
        let first = place(&nodes, &[pool("acme--web", 6)], &Assignment::new());
        // c dies: its two go to a and b, which keep their own.
        let mut after = nodes.clone();
        after[2].alive = false;
        let p = place(&after, &[pool("acme--web", 6)], &first.nodes);
        assert_eq!(warm_on(&p, "acme--web"), counts(&[("a", 3), ("b", 3), ("c", 0)]));
        // c comes back: nothing moves back (no churn), nothing is doubled.
        let p = place(&nodes, &[pool("acme--web", 6)], &p.nodes);
        assert_eq!(warm_on(&p, "acme--web"), counts(&[("a", 3), ("b", 3), ("c", 0)]));
    }

    #[test]
    fn cordon_keeps_what_is_there_and_drain_moves_it_away() {
        let nodes = [node("a", 8192), node("b", 8192), node("c", 8192)];
        let first = place(&nodes, &[pool("acme--web", 6)], &Assignment::new());
        let mut cordoned = nodes.clone();
        cordoned[0].schedule = Schedule::Cordoned;
        let p = place(&cordoned, &[pool("acme--web", 9)], &first.nodes);
        assert_eq!(warm_on(&p, "acme--web"), counts(&[("a", 2), ("b", 4), ("c", 3)]));
        let mut drained = nodes.clone();
        drained[0].schedule = Schedule::Draining;
        let p = place(&drained, &[pool("acme--web", 6)], &first.nodes);
        assert_eq!(warm_on(&p, "acme--web"), counts(&[("a", 0), ("b", 3), ("c", 3)]));
        assert!(p.nodes["a"].is_empty(), "a drained node is left empty: {p:?}");
    }

    #[test]
    fn a_shrinking_pool_gives_up_instances_from_its_fullest_node() {
        let nodes = [node("a", 8192), node("b", 8192)];
        let mut current = Assignment::new();
        current.insert(
            "a".into(),
            [("acme--web".to_string(), Desired { warm: 3, ..Desired::default() })].into(),
        );
        current.insert(
            "b".into(),
            [("acme--web".to_string(), Desired { warm: 1, ..Desired::default() })].into(),
        );
        let p = place(&nodes, &[pool("acme--web", 2)], &current);
        assert_eq!(warm_on(&p, "acme--web"), counts(&[("a", 1), ("b", 1)]));
        // A removed pool leaves every node.
        let p = place(&nodes, &[], &current);
        assert!(p.nodes.values().all(BTreeMap::is_empty), "{p:?}");
    }

    #[test]
    fn capacity_kvm_and_images_limit_where_instances_go() {
        let mut small = node("a", 600); // room for two 256 MiB instances
        small.unmanaged = Resources { vcpus: 0, memory_mib: 0, disk_mib: 0 };
        let p = place(&[small.clone()], &[pool("acme--web", 3)], &Assignment::new());
        assert_eq!(warm_on(&p, "acme--web"), counts(&[("a", 2)]));
        assert_eq!(p.unplaced["acme--web"].warm, 1, "what does not fit is reported");
        // Memory other VMs hold is not the scheduler's to give.
        small.unmanaged.memory_mib = 300;
        let p = place(&[small], &[pool("acme--web", 3)], &Assignment::new());
        assert_eq!(warm_on(&p, "acme--web"), counts(&[("a", 1)]));

        let mut kvm = node("k", 8192);
        kvm.info.accel = "kvm".into();
        let mut needs_kvm = pool("acme--fast", 2);
        needs_kvm.requires_kvm = true;
        let p = place(&[node("t", 8192), kvm], &[needs_kvm], &Assignment::new());
        assert_eq!(warm_on(&p, "acme--fast"), counts(&[("k", 2), ("t", 0)]));

        let mut imageless = node("x", 8192);
        imageless.info.images.clear();
        let p = place(&[imageless], &[pool("acme--web", 1)], &Assignment::new());
        assert_eq!(p.unplaced["acme--web"].warm, 1);
    }

    #[test]
    fn among_equal_spreads_the_fuller_node_is_packed_first() {
        let mut busy = node("a", 8192);
        busy.unmanaged.memory_mib = 4096;
        let p = place(&[busy, node("b", 8192)], &[pool("acme--web", 1)], &Assignment::new());
        assert_eq!(warm_on(&p, "acme--web"), counts(&[("a", 1), ("b", 0)]));
    }

    #[test]
    fn sleeping_instances_need_disk_not_memory() {
        let mut tiny = node("a", 0);
        tiny.info.capacity.vcpus = 0;
        let mut sleepy = pool("acme--web", 0);
        sleepy.desired.sleeping = 2;
        let p = place(&[tiny], &[sleepy], &Assignment::new());
        assert_eq!(p.nodes["a"]["acme--web"].sleeping, 2, "{p:?}");
    }

    proptest::proptest! {
        /// Whatever the nodes and pools: no kind of any pool is over-placed, placed + unplaced
        /// is exactly what is desired, nothing lands on a dead, cordoned-for-new or draining
        /// node beyond what it kept, and no node's room is exceeded by new placements.
        #[test]
        fn placements_add_up(
            memories in proptest::collection::vec(0u64..6000, 1..6),
            alive in proptest::collection::vec(proptest::bool::ANY, 6),
            warm in proptest::collection::vec(0u32..12, 1..4),
        ) {
            let nodes: Vec<NodeView> = memories.iter().enumerate().map(|(i, m)| {
                let mut n = node(&format!("n{i}"), *m);
                n.alive = alive[i];
                n
            }).collect();
            let pools: Vec<PoolDemand> = warm.iter().enumerate().map(|(i, w)| pool(&format!("t--p{i}"), *w)).collect();
            let p = place(&nodes, &pools, &Assignment::new());
            for pool in &pools {
                let placed: u32 = p.nodes.values().filter_map(|m| m.get(&pool.pool)).map(|d| d.warm).sum();
                let unplaced = p.unplaced.get(&pool.pool).map(|d| d.warm).unwrap_or(0);
                proptest::prop_assert_eq!(placed + unplaced, pool.desired.warm);
            }
            for n in &nodes {
                let used: u64 = p.nodes[&n.info.name].values().map(|d| u64::from(d.warm) * 256).sum();
                proptest::prop_assert!(used <= n.info.capacity.memory_mib);
                if !n.alive {
                    proptest::prop_assert!(p.nodes[&n.info.name].is_empty());
                }
            }
            proptest::prop_assert_eq!(&p, &place(&nodes, &pools, &p.nodes));
        }
    }
}
