//! A storage node: serves its copies of cluster shards from its local pool
//! over the shard protocol and takes part in gossip.
//!
//! Contract:
//! - [`run`] opens the pool (exclusively, as every pool user does), loads
//!   the replica metadata file, fixes the node's placement weight at its
//!   first start (quantised free capacity, `placement::weight_for_free_bytes`),
//!   binds the protocol listener and joins gossip, then every
//!   `CLUSTER_PUBLISH_MS` republishes its capacity, free space, load, shard
//!   count and override records, and merges the records other nodes publish
//!   into its own. It returns when `stop` completes.
//! - Every answered write, fence or override commit is durable first (data
//!   through the pool's commit, metadata through the metadata journal).
//! - **Graceful leave** ([`run_with_leave`]): when `leave` completes the
//!   node publishes `leaving = 1` and keeps serving. Attachers then move
//!   its copies off (rebalancing, throttled; its copies stay in their sets
//!   until the new ones are committed) and drop them. The node returns a
//!   [`LeaveReport`] once it is no longer needed: it holds no written shard,
//!   no override record names it, and no volume's placement basis names it
//!   (so no attacher places a shard on it); or after `CLUSTER_LEAVE_MAX_MS`
//!   (undrained, reporting what it still holds and which volumes still
//!   place on it: those with no attacher running to move them).

use super::gossip::{self, ClusterView, ROLE_STORAGE};
use super::overrides::OverrideMap;
use super::placement::weight_for_free_bytes;
use super::replica::{Delta, ReplicaCore, ReplicaMeta};
use super::server::{serve, spawn_replica};
use super::store::{MetaJournal, PoolStore};
use crate::constants::{
    CLUSTER_BLOCK_BYTES, CLUSTER_LEAVE_CHECK_MS, CLUSTER_LEAVE_MAX_MS, CLUSTER_PUBLISH_MS,
    CLUSTER_SHARD_BYTES,
};
use crate::shard::pool::{Pool, PoolError};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Stable node name; default `n-` and the first 12 hex digits of the pool's uuid.
    pub id: Option<String>,
    pub pool: PathBuf,
    /// Replica metadata file (fences, block versions, overrides, weight);
    /// default: the pool path with `.cluster.json` appended.
    pub state: Option<PathBuf>,
    pub listen: SocketAddr,
    pub gossip: SocketAddr,
    pub seeds: Vec<SocketAddr>,
    pub domain: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("pool: {0}")]
    Pool(#[from] PoolError),
    #[error("replica state {path}: {source}")]
    State {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("gossip: {0}")]
    Gossip(String),
}

/// What the publisher reads from the replica thread.
#[derive(Default)]
struct Published {
    meta: ReplicaMeta,
    /// `(volume, shard)` holding written blocks.
    shards: std::collections::BTreeSet<(String, u64)>,
}

/// How a graceful leave ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaveReport {
    pub id: String,
    /// Nothing held or placed here any more (else the time bound ran out).
    pub drained: bool,
    pub waited_ms: u64,
    /// Shards with written blocks still held.
    pub shards_held: u64,
    /// Volumes whose basis or override records still name this node.
    pub placed_in: Vec<String>,
}

/// Volumes whose placement basis or a shard's override record names `id`.
fn volumes_placing(overrides: &OverrideMap, id: &str) -> Vec<String> {
    let mut v: Vec<String> = overrides
        .iter()
        .filter(|(_, r)| r.replicas.iter().any(|n| n == id))
        .map(|(k, _)| k.volume.clone())
        .collect();
    v.dedup();
    v
}

/// Run a node until `stop` completes.
pub async fn run(
    cfg: NodeConfig,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), NodeError> {
    run_with_leave(cfg, std::future::pending(), stop)
        .await
        .map(|_| ())
}

/// Run a node until `stop` completes (`None`), or until a graceful leave
/// started by `leave` ends (see the module doc).
pub async fn run_with_leave(
    cfg: NodeConfig,
    leave: impl std::future::Future<Output = ()>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<Option<LeaveReport>, NodeError> {
    let pool = Pool::open(&cfg.pool)?;
    let id = cfg
        .id
        .clone()
        .unwrap_or_else(|| format!("n-{:012x}", pool.uuid() >> 80));
    let state = cfg.state.clone().unwrap_or_else(|| {
        let mut s = cfg.pool.clone().into_os_string();
        s.push(".cluster.json");
        PathBuf::from(s)
    });
    let state_err = |source| NodeError::State {
        path: state.display().to_string(),
        source,
    };
    let (mut journal, mut meta) = MetaJournal::open(&state).map_err(state_err)?;
    if meta.weight.is_none() {
        let free: u64 = pool
            .status()
            .tiers
            .iter()
            .map(|t| t.capacity_bytes - t.used_bytes)
            .sum();
        let d = Delta::Weight(weight_for_free_bytes(free).max(f64::MIN_POSITIVE));
        meta.apply(&d);
        journal.append(&meta, &[d]).map_err(state_err)?;
    }
    let weight = meta.weight.expect("set above");
    let bps = CLUSTER_SHARD_BYTES / CLUSTER_BLOCK_BYTES;
    let published = Arc::new(Mutex::new(Published {
        meta: ReplicaMeta {
            overrides: meta.overrides.clone(),
            floors: meta.floors.clone(),
            ..ReplicaMeta::default()
        },
        shards: meta
            .versions
            .iter()
            .flat_map(|(v, m)| m.keys().map(move |b| (v.clone(), b / bps)))
            .collect(),
    }));
    let (pool2, pub2) = (pool.clone(), published.clone());
    let replica = spawn_replica(
        move || {
            let mut core = ReplicaCore::new(PoolStore::new(pool2), meta);
            core.journal = Some(Vec::new());
            core
        },
        move |m: &ReplicaMeta, deltas: Vec<Delta>| {
            journal.append(m, &deltas).map_err(|e| e.to_string())?;
            let mut p = pub2.lock().expect("published");
            // what gossip needs: overrides (small) and the shard count
            if deltas
                .iter()
                .any(|d| matches!(d, Delta::Override { .. } | Delta::Floor { .. }))
            {
                p.meta.overrides = m.overrides.clone();
                p.meta.floors = m.floors.clone();
            }
            for d in &deltas {
                match d {
                    Delta::Versions {
                        volume, first, n, ..
                    } => {
                        for s in first / bps..=(first + n - 1) / bps {
                            p.shards.insert((volume.clone(), s));
                        }
                    }
                    Delta::Dropped { volume, first, n } => {
                        // a shard is gone once none of its blocks is held
                        for s in first / bps..=(first + n - 1) / bps {
                            let held = m
                                .versions
                                .get(volume)
                                .is_some_and(|v| v.range(s * bps..(s + 1) * bps).next().is_some());
                            if !held {
                                p.shards.remove(&(volume.clone(), s));
                            }
                        }
                    }
                    _ => {}
                }
            }
            Ok(())
        },
    );
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| NodeError::Listen {
            addr: cfg.listen,
            source,
        })?;
    let listen = listener.local_addr().map_err(|source| NodeError::Listen {
        addr: cfg.listen,
        source,
    })?;
    let server = tokio::spawn(serve(listener, replica.clone()));
    let keys = vec![
        ("role".to_string(), ROLE_STORAGE.to_string()),
        ("listen".to_string(), listen.to_string()),
        ("domain".to_string(), cfg.domain.clone().unwrap_or_default()),
        ("weight".to_string(), weight.to_string()),
    ];
    let handle = gossip::start(&id, cfg.gossip, &cfg.seeds, keys)
        .await
        .map_err(|e| NodeError::Gossip(e.to_string()))?;
    tracing::info!(id = %id, %listen, gossip = %cfg.gossip, "node up");
    let publisher = async {
        let mut last_served = 0;
        loop {
            let served = replica.served();
            let (overrides, floors, shards) = {
                let p = published.lock().expect("published");
                (
                    p.meta.overrides.clone(),
                    p.meta.floors.clone(),
                    p.shards.len() as u64,
                )
            };
            {
                let cc = handle.chitchat();
                let mut cc = cc.lock().await;
                let st = cc.self_node_state();
                for t in pool.status().tiers {
                    st.set(format!("cap.{}", t.name), t.capacity_bytes);
                    st.set(format!("free.{}", t.name), t.capacity_bytes - t.used_bytes);
                }
                st.set("load", served - last_served);
                st.set("shards", shards);
                for (k, r) in overrides.iter() {
                    let key = gossip::override_key(k);
                    let val = r.encode();
                    if st.get(&key) != Some(val.as_str()) {
                        st.set(key, val);
                    }
                }
                // records a snapshot replaced are gone from the map
                let held: std::collections::BTreeSet<String> = overrides
                    .iter()
                    .map(|(k, _)| gossip::override_key(k))
                    .collect();
                let stale: Vec<String> = st
                    .iter_prefix("ovr:")
                    .map(|(k, _)| k.to_string())
                    .filter(|k| !held.contains(k))
                    .collect();
                for k in stale {
                    st.delete(&k);
                }
                for (v, f) in &floors {
                    let key = format!("{}{v}", gossip::FLOOR_PREFIX);
                    let val = gossip::encode_epoch(*f);
                    if st.get(&key) != Some(val.as_str()) {
                        st.set(key, val);
                    }
                }
            }
            last_served = served;
            let view = ClusterView::of(&handle).await;
            let behind = view
                .floors
                .iter()
                .any(|(v, f)| floors.get(v).is_none_or(|mine| mine < f));
            if behind
                || view
                    .overrides
                    .iter()
                    .any(|(k, r)| overrides.get(k) != Some(r))
            {
                replica.merge_gossip(view.floors, view.overrides);
            }
            tokio::time::sleep(Duration::from_millis(CLUSTER_PUBLISH_MS)).await;
        }
    };
    let leaver = async {
        leave.await;
        {
            let cc = handle.chitchat();
            cc.lock()
                .await
                .self_node_state()
                .set(gossip::LEAVING_KEY, "1");
        }
        tracing::info!(id = %id, "leaving: announced; waiting for copies to move off");
        let t0 = std::time::Instant::now();
        loop {
            let (held, placed_in) = {
                let p = published.lock().expect("published");
                (
                    p.shards.len() as u64,
                    volumes_placing(&p.meta.overrides, &id),
                )
            };
            let waited_ms = t0.elapsed().as_millis() as u64;
            let drained = held == 0 && placed_in.is_empty();
            if drained || waited_ms >= CLUSTER_LEAVE_MAX_MS {
                return LeaveReport {
                    id: id.clone(),
                    drained,
                    waited_ms,
                    shards_held: held,
                    placed_in,
                };
            }
            tokio::time::sleep(Duration::from_millis(CLUSTER_LEAVE_CHECK_MS)).await;
        }
    };
    let abort = server.abort_handle();
    let report = tokio::select! {
        _ = stop => None,
        _ = publisher => None,
        r = leaver => Some(r),
        r = server => {
            tracing::error!("shard server ended: {r:?}");
            None
        }
    };
    abort.abort();
    let _ = handle.shutdown().await;
    Ok(report)
}
