//! Membership on a real node: chitchat (scuttlebutt gossip over UDP with a
//! phi-accrual failure detector) and the keys each node publishes in its
//! node state.
//!
//! Contract:
//! - Keys: `role` (`storage` or `client`), `listen` (shard protocol
//!   address), `domain` (failure-domain label, may be empty), `weight`
//!   (placement weight, fixed at the node's first start), `cap.T` / `free.T`
//!   (bytes per tier name `T`), `load` (requests served in the last
//!   publishing interval), `shards` (shards with blocks here), and one
//!   `ovr:VOLUME:SHARD` key per override record the node holds
//!   (`OverrideRecord::encode`; a record the node no longer holds is
//!   deleted), `floor:VOLUME` (`TERM.OWNER`: the node's floor of the volume,
//!   see `replica`), and `leaving` (`1` once the node announced
//!   a graceful leave: attachers move its copies off, see `node`). An attaching client publishes
//!   `rebal:VOLUME`: its rebalancing status of that volume as JSON
//!   (`attacher::RebalanceStatus`).
//! - A restarted node joins with a new generation (its start time), so its
//!   state supersedes the old one; [`ClusterView`] merges generations of one
//!   node id: live if any is live, keys from the newest.
//! - [`ClusterView::overrides`] merges the nodes' records under the floors
//!   they publish: per volume the highest floor wins ([`ClusterView::floors`])
//!   and records older than it come only from nodes at that floor (they
//!   hold exactly that snapshot's), so a node behind cannot bring back a
//!   record a newer snapshot left out.
//! - Placement members are the storage nodes known, live or not (a dead
//!   node keeps its homes; its shards are served by overrides until it
//!   returns, or until the attacher counts it out and rebalances), sorted
//!   by id.

use super::attacher::RebalanceStatus;
use super::epoch::Epoch;
use super::overrides::{OverrideMap, OverrideRecord};
use super::placement::{Member, NodeId, ShardKey};
use crate::constants::{CLUSTER_FAIL_AFTER_MS, CLUSTER_GOSSIP_INTERVAL_MS};
use chitchat::transport::UdpTransport;
use chitchat::{spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

/// The cluster name every node and client gossips under.
pub const CLUSTER_ID: &str = "shardblk";

pub const ROLE_STORAGE: &str = "storage";
pub const ROLE_CLIENT: &str = "client";
/// The key a node sets to `1` when it announces a graceful leave.
pub const LEAVING_KEY: &str = "leaving";

/// Start gossiping as `id` on `gossip` (UDP), joining through `seeds`.
pub async fn start(
    id: &str,
    gossip: SocketAddr,
    seeds: &[SocketAddr],
    keys: Vec<(String, String)>,
) -> anyhow::Result<ChitchatHandle> {
    let generation = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let interval = Duration::from_millis(CLUSTER_GOSSIP_INTERVAL_MS);
    let config = ChitchatConfig {
        chitchat_id: ChitchatId::new(id.to_string(), generation, gossip),
        cluster_id: CLUSTER_ID.to_string(),
        gossip_interval: interval,
        listen_addr: gossip,
        seed_nodes: seeds.iter().map(|s| s.to_string()).collect(),
        failure_detector_config: FailureDetectorConfig {
            phi_threshold: 8.0,
            sampling_window_size: 1_000,
            max_interval: Duration::from_millis(CLUSTER_FAIL_AFTER_MS),
            initial_interval: interval,
            dead_node_grace_period: Duration::from_secs(24 * 3600),
        },
        marked_for_deletion_grace_period: Duration::from_secs(3600),
        catchup_callback: None,
        extra_liveness_predicate: None,
    };
    spawn_chitchat(config, keys, &UdpTransport).await
}

/// One node as gossip shows it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    pub id: NodeId,
    pub live: bool,
    pub role: String,
    pub listen: Option<SocketAddr>,
    pub domain: Option<String>,
    pub weight: f64,
    /// `(tier, capacity bytes, free bytes)`.
    pub tiers: Vec<(String, u64, u64)>,
    pub load: u64,
    pub shards: u64,
    /// Announced a graceful leave (still serving until drained).
    pub leaving: bool,
}

/// One attacher's rebalancing of one volume, as gossip shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RebalanceView {
    /// The publishing (attaching) node.
    pub node: NodeId,
    pub live: bool,
    pub volume: String,
    pub status: RebalanceStatus,
}

/// One node's floors and override records, as it publishes them.
type Published = (BTreeMap<String, Epoch>, Vec<(ShardKey, OverrideRecord)>);

/// The cluster as one observer sees it now.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClusterView {
    pub nodes: Vec<NodeView>,
    pub overrides: OverrideMap,
    /// Per volume, the highest floor a node publishes.
    pub floors: BTreeMap<String, Epoch>,
    pub rebalancing: Vec<RebalanceView>,
}

impl ClusterView {
    /// Read the view out of a chitchat instance.
    pub async fn of(handle: &ChitchatHandle) -> ClusterView {
        let cc = handle.chitchat();
        let cc = cc.lock().await;
        let live: BTreeSet<&ChitchatId> = cc.live_nodes().collect();
        let mut newest: BTreeMap<&str, (&ChitchatId, bool)> = BTreeMap::new();
        for id in cc.node_states().keys() {
            let is_live = live.contains(id);
            let e = newest.entry(id.node_id.as_str()).or_insert((id, is_live));
            e.1 |= is_live;
            if id.generation_id > e.0.generation_id {
                e.0 = id;
            }
        }
        let mut view = ClusterView::default();
        let mut published: Vec<Published> = Vec::new();
        for (name, (cid, is_live)) in newest {
            let Some(st) = cc.node_state(cid) else {
                continue;
            };
            let get = |k: &str| st.get(k).map(str::to_string);
            let num = |k: &str| get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            let mut tiers = Vec::new();
            for (k, v) in st.iter_prefix("cap.") {
                let t = &k[4..];
                let cap = v.value.parse().unwrap_or(0);
                tiers.push((t.to_string(), cap, num(&format!("free.{t}"))));
            }
            let mut floors = BTreeMap::new();
            for (k, v) in st.iter_prefix(FLOOR_PREFIX) {
                if let Some(e) = decode_epoch(&v.value) {
                    floors.insert(k[FLOOR_PREFIX.len()..].to_string(), e);
                }
            }
            let mut recs = Vec::new();
            for (k, v) in st.iter_prefix("ovr:") {
                let mut it = k[4..].rsplitn(2, ':');
                let (Some(shard), Some(vol)) = (it.next(), it.next()) else {
                    continue;
                };
                if let (Ok(shard), Ok(rec)) = (shard.parse(), OverrideRecord::decode(&v.value)) {
                    recs.push((ShardKey::new(vol, shard), rec));
                }
            }
            published.push((floors, recs));
            for (k, v) in st.iter_prefix("rebal:") {
                if let Ok(status) = serde_json::from_str::<RebalanceStatus>(&v.value) {
                    view.rebalancing.push(RebalanceView {
                        node: name.to_string(),
                        live: is_live,
                        volume: k["rebal:".len()..].to_string(),
                        status,
                    });
                }
            }
            view.nodes.push(NodeView {
                id: name.to_string(),
                live: is_live,
                role: get("role").unwrap_or_default(),
                listen: get("listen").and_then(|a| a.parse().ok()),
                domain: get("domain").filter(|d| !d.is_empty()),
                weight: get("weight").and_then(|w| w.parse().ok()).unwrap_or(0.0),
                tiers,
                load: num("load"),
                shards: num("shards"),
                leaving: get(LEAVING_KEY).is_some_and(|v| v == "1"),
            });
        }
        for (floors, _) in &published {
            for (v, f) in floors {
                let e = view.floors.entry(v.clone()).or_default();
                *e = (*e).max(*f);
            }
        }
        for (floors, recs) in &published {
            for (k, r) in recs {
                let top = view.floors.get(&k.volume).copied().unwrap_or_default();
                let mine = floors.get(&k.volume).copied().unwrap_or_default();
                if r.version.epoch >= top || mine == top {
                    view.overrides.merge(k, r);
                }
            }
        }
        view
    }

    pub fn storage(&self) -> impl Iterator<Item = &NodeView> {
        self.nodes.iter().filter(|n| n.role == ROLE_STORAGE)
    }

    /// Placement members: every storage node known, sorted by id.
    pub fn members(&self) -> Vec<Member> {
        self.storage()
            .map(|n| Member::new(&n.id, n.weight, n.domain.as_deref()))
            .collect()
    }

    /// Storage nodes that announced a graceful leave.
    pub fn leaving(&self) -> Vec<NodeId> {
        self.storage()
            .filter(|n| n.leaving)
            .map(|n| n.id.clone())
            .collect()
    }

    pub fn is_live(&self, id: &str) -> bool {
        self.nodes.iter().any(|n| n.id == id && n.live)
    }

    pub fn listen_of(&self, id: &str) -> Option<SocketAddr> {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .and_then(|n| n.listen)
    }
}

/// The key under which an attacher publishes its rebalancing of `volume`.
pub fn rebalance_key(volume: &str) -> String {
    format!("rebal:{volume}")
}

/// Prefix of the keys under which a node publishes its floor per volume.
pub const FLOOR_PREFIX: &str = "floor:";

/// `TERM.OWNER`
pub fn encode_epoch(e: Epoch) -> String {
    format!("{}.{}", e.term, e.owner)
}

fn decode_epoch(s: &str) -> Option<Epoch> {
    let (t, o) = s.split_once('.')?;
    Some(Epoch {
        term: t.parse().ok()?,
        owner: o.parse().ok()?,
    })
}

/// The key under which a node publishes one override record.
pub fn override_key(key: &ShardKey) -> String {
    format!("ovr:{}:{}", key.volume, key.shard)
}
