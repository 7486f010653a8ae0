//! Cluster end to end on loopback: three `shardblk node run` processes, a
//! cluster volume with R = 2, random verified writes (one at a time and
//! batches of 16 at once) while one node is killed (SIGKILL) and restarted; a stale attacher fenced out; and
//! rebalancing when a fourth node joins and when a node leaves; a graceful
//! leave (SIGTERM) drained with R live copies throughout; a returning
//! node's stale copies dropped; a real partition: the old attacher in
//! its own network namespace, cut off by taking its link down; and the ublk
//! device's network thread serving requests handed off as a queue thread
//! hands them.

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shardblk::cluster::attacher::OpError;
use shardblk::cluster::client::{ClientConfig, ClientError, ClusterClient, Io};
use shardblk::cluster::rebalance::Limits;
use shardblk::constants::{CLUSTER_BLOCK_BYTES, CLUSTER_OUT_AFTER_MS, CLUSTER_SHARD_BYTES};
use shardblk::device::handoff::{channel, BufPtr, NetDone, NetOp, NetRequest, QueueEnd};
use shardblk::device::net::{ClusterSource, NetThread};
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

const BS: u64 = CLUSTER_BLOCK_BYTES;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn free_tcp_at(ip: IpAddr) -> SocketAddr {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
}

fn free_udp_at(ip: IpAddr) -> SocketAddr {
    std::net::UdpSocket::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
}

fn free_udp() -> SocketAddr {
    free_udp_at(LOOPBACK)
}

struct Node {
    id: String,
    pool: PathBuf,
    listen: SocketAddr,
    gossip: SocketAddr,
    child: Option<Child>,
    log: PathBuf,
}

impl Node {
    fn new(dir: &Path, i: usize) -> Node {
        Node::new_at(dir, i, LOOPBACK)
    }

    /// A node whose shard protocol and gossip listen on `ip`.
    fn new_at(dir: &Path, i: usize, ip: IpAddr) -> Node {
        let pool = dir.join(format!("pool{i}.img"));
        std::fs::File::create(&pool)
            .unwrap()
            .set_len(256 << 20)
            .unwrap();
        let st = Command::new(env!("CARGO_BIN_EXE_shardblk"))
            .args(["pool", "init", "--tier"])
            .arg(format!("hot={}", pool.display()))
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
        Node {
            id: format!("node{i}"),
            log: dir.join(format!("node{i}.log")),
            pool,
            listen: free_tcp_at(ip),
            gossip: free_udp_at(ip),
            child: None,
        }
    }

    fn start(&mut self, seeds: &[SocketAddr]) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_shardblk"));
        cmd.args(["node", "run", "--id", &self.id])
            .arg("--pool")
            .arg(&self.pool)
            .arg("--listen")
            .arg(self.listen.to_string())
            .arg("--gossip")
            .arg(self.gossip.to_string());
        for s in seeds {
            cmd.arg("--seed").arg(s.to_string());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        cmd.stdout(Stdio::null()).stderr(log);
        self.child = Some(cmd.spawn().unwrap());
    }

    /// SIGTERM: a graceful leave.
    fn terminate(&self) {
        let pid = self.child.as_ref().expect("running").id() as i32;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
    }

    /// The exit status once the process ended.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let st = self.child.as_mut()?.try_wait().unwrap()?;
        self.child = None;
        Some(st)
    }

    /// Whether the process still runs, and the tail of its log: printed
    /// when a request to it fails, so a CI failure says why.
    fn diagnosis(&mut self) -> String {
        let state = match self.child.as_mut().map(|c| c.try_wait()) {
            None => "not started".to_string(),
            Some(Ok(None)) => "running".to_string(),
            Some(Ok(Some(st))) => format!("exited {st}"),
            Some(Err(e)) => format!("unknown ({e})"),
        };
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!("{} ({state}), log tail:\n{}", self.id, tail.join("\n"))
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL: no goodbye
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn cluster(dir: &Path, n: usize) -> Vec<Node> {
    let mut nodes: Vec<Node> = (0..n).map(|i| Node::new(dir, i)).collect();
    let seeds: Vec<SocketAddr> = nodes.iter().map(|x| x.gossip).collect();
    for node in &mut nodes {
        node.start(&seeds);
    }
    nodes
}

fn client_cfg(id: &str, nodes: &[Node], size: u64) -> ClientConfig {
    ClientConfig {
        id: id.into(),
        gossip: free_udp(),
        seeds: nodes.iter().map(|x| x.gossip).collect(),
        volume: "vol".into(),
        size_bytes: size,
        replicas: 2,
        expect_nodes: nodes.len(),
        wait_ms: 20_000,
        out_after_ms: CLUSTER_OUT_AFTER_MS,
        rebalance: Limits::default(),
    }
}

/// One random write (checked later) or a read checked against the model now.
async fn random_op(
    c: &mut ClusterClient,
    rng: &mut ChaCha8Rng,
    model: &mut [u8],
    written: &mut BTreeSet<u64>,
    errors: &mut u64,
) {
    let size = model.len() as u64;
    let blocks = rng.random_range(1..=16u64);
    let off = rng.random_range(0..size / BS - blocks) * BS;
    let len = blocks * BS;
    if rng.random_bool(0.6) {
        let mut data = vec![0u8; len as usize];
        rng.fill(&mut data[..]);
        c.write(off, &data).await.expect("write");
        model[off as usize..(off + len) as usize].copy_from_slice(&data);
        for s in off / CLUSTER_SHARD_BYTES..=(off + len - 1) / CLUSTER_SHARD_BYTES {
            written.insert(s);
        }
    } else {
        let got = c.read(off, len).await.expect("read");
        if got[..] != model[off as usize..(off + len) as usize] {
            *errors += 1;
            eprintln!("verification error at {off} length {len}");
        }
    }
}

/// `qd` I/Os on disjoint random ranges at once through `submit`/`poll`
/// (writes checked later, reads against the model now).
async fn concurrent_batch(
    c: &mut ClusterClient,
    rng: &mut ChaCha8Rng,
    model: &mut [u8],
    written: &mut BTreeSet<u64>,
    errors: &mut u64,
    qd: usize,
) {
    let size = model.len() as u64;
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    while ranges.len() < qd {
        let blocks = rng.random_range(1..=16u64);
        let off = rng.random_range(0..size / BS - blocks) * BS;
        let len = blocks * BS;
        if ranges.iter().all(|&(o, l)| off + len <= o || o + l <= off) {
            ranges.push((off, len));
        }
    }
    let mut out: HashMap<u64, (u64, u64, Option<Vec<u8>>)> = HashMap::new();
    for (tag, &(off, len)) in ranges.iter().enumerate() {
        let tag = tag as u64;
        if rng.random_bool(0.6) {
            let mut data = vec![0u8; len as usize];
            rng.fill(&mut data[..]);
            let io = Io::Write {
                offset: off,
                data: Bytes::from(data.clone()),
            };
            c.submit(tag, io).expect("submit");
            out.insert(tag, (off, len, Some(data)));
        } else {
            c.submit(tag, Io::Read { offset: off, len })
                .expect("submit");
            out.insert(tag, (off, len, None));
        }
    }
    while !out.is_empty() {
        for d in c.poll(Duration::from_secs(1)).await {
            let (off, len, wrote) = out.remove(&d.tag).expect("submitted");
            let at = off as usize..(off + len) as usize;
            match (d.result.expect("concurrent I/O"), wrote) {
                (None, Some(data)) => {
                    model[at].copy_from_slice(&data);
                    for s in off / CLUSTER_SHARD_BYTES..=(off + len - 1) / CLUSTER_SHARD_BYTES {
                        written.insert(s);
                    }
                }
                (Some(got), None) => {
                    if got[..] != model[at] {
                        *errors += 1;
                        eprintln!("verification error at {off} length {len} (concurrent)");
                    }
                }
                other => panic!("tag {}: {other:?}", d.tag),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_r2_survive_a_killed_and_restarted_node() {
    let seed: u64 = std::env::var("SHARDBLK_CLUSTER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    eprintln!("seed {seed} (SHARDBLK_CLUSTER_SEED)");
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(dir.path(), 3);
    let size = 16 * CLUSTER_SHARD_BYTES;
    let mut c = ClusterClient::connect(client_cfg("client-a", &nodes, size))
        .await
        .expect("attach");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut model = vec![0u8; size as usize];
    let mut written = BTreeSet::new();
    let mut errors = 0;
    for _ in 0..60 {
        random_op(&mut c, &mut rng, &mut model, &mut written, &mut errors).await;
    }
    for _ in 0..4 {
        let (m, w, e) = (&mut model, &mut written, &mut errors);
        concurrent_batch(&mut c, &mut rng, m, w, e, 16).await;
    }
    let victim = rng.random_range(0..3usize);
    nodes[victim].kill();
    let t = std::time::Instant::now();
    for i in 0..100 {
        random_op(&mut c, &mut rng, &mut model, &mut written, &mut errors).await;
        if i % 25 == 0 {
            let (m, w, e) = (&mut model, &mut written, &mut errors);
            concurrent_batch(&mut c, &mut rng, m, w, e, 16).await;
        }
    }
    eprintln!(
        "100 ops with {} down took {:?}",
        nodes[victim].id,
        t.elapsed()
    );
    let seeds: Vec<SocketAddr> = nodes.iter().map(|x| x.gossip).collect();
    nodes[victim].start(&seeds);
    for _ in 0..60 {
        random_op(&mut c, &mut rng, &mut model, &mut written, &mut errors).await;
    }
    for _ in 0..4 {
        let (m, w, e) = (&mut model, &mut written, &mut errors);
        concurrent_batch(&mut c, &mut rng, m, w, e, 16).await;
    }
    let shards: Vec<u64> = written.iter().copied().collect();
    assert!(
        c.settle(&shards, Duration::from_secs(30)).await,
        "R=2 not restored: {:?}",
        shards.iter().map(|&s| c.replicas_of(s)).collect::<Vec<_>>()
    );
    // every copy of every written shard holds the model's bytes
    for &s in &shards {
        let set = c.replicas_of(s);
        assert_eq!(set.len(), 2, "shard {s}: {set:?}");
        for node in &set {
            for (b, data) in c.fetch_from(node, s).await.expect("fetch") {
                let at = (b * BS) as usize;
                if data[..] != model[at..at + BS as usize] {
                    errors += 1;
                    eprintln!("copy on {node} of block {b} differs");
                }
            }
        }
    }
    let all = c.read(0, size).await.unwrap();
    if all != model {
        errors += 1;
    }
    assert_eq!(errors, 0, "verification errors");
    eprintln!("repairs: {}", c.repairs);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_attacher_is_fenced_by_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(dir.path(), 3);
    let size = 4 * CLUSTER_SHARD_BYTES;
    let mut old = ClusterClient::connect(client_cfg("client-old", &nodes, size))
        .await
        .expect("attach old");
    old.write(0, &vec![1u8; 8192]).await.unwrap();
    // `old` is now cut off (it sends nothing while the new attacher takes over)
    let mut new = ClusterClient::connect(client_cfg("client-new", &nodes, size))
        .await
        .expect("attach new");
    assert!(new.epoch() > old.epoch());
    new.write(0, &vec![2u8; 4096]).await.unwrap();
    // `old` comes back and tries to write: refused, nothing changes
    let e = old.write(0, &vec![3u8; 8192]).await.unwrap_err();
    assert!(matches!(e, ClientError::Op(OpError::Fenced(_))), "{e}");
    let e = old.read(0, 4096).await.unwrap_err();
    assert!(matches!(e, ClientError::Op(OpError::Fenced(_))), "{e}");
    let got = new.read(0, 8192).await.unwrap();
    assert!(
        got[..4096].iter().all(|&b| b == 2),
        "new attacher's write kept"
    );
    assert!(
        got[4096..].iter().all(|&b| b == 1),
        "old acknowledged write kept"
    );
    old.shutdown().await;
    new.shutdown().await;
}

/// `shardblk cluster status --json` through `seeds`, while `c` keeps
/// running (its gossip state carries the rebalancing progress).
async fn status_json(c: &mut ClusterClient, seeds: &[SocketAddr]) -> serde_json::Value {
    serde_json::from_slice(&status(c, seeds, &["--json"]).await).unwrap()
}

/// `shardblk cluster status` (the table) through `seeds`, while `c` runs.
async fn status_text(c: &mut ClusterClient, seeds: &[SocketAddr]) -> String {
    String::from_utf8(status(c, seeds, &[]).await).unwrap()
}

/// The stdout of a successful `shardblk cluster status ARGS` through
/// `seeds`; `c` keeps running (its pump) while the command runs.
async fn status(c: &mut ClusterClient, seeds: &[SocketAddr], args: &[&str]) -> Vec<u8> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shardblk"));
    cmd.args(["cluster", "status"]).args(args);
    for s in seeds {
        cmd.arg("--seed").arg(s.to_string());
    }
    let h = tokio::task::spawn_blocking(move || cmd.output().unwrap());
    while !h.is_finished() {
        c.idle(Duration::from_millis(50)).await;
    }
    let out = h.await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The rebalancing entry `node` published for volume `vol`.
fn rebalancing_of<'a>(st: &'a serde_json::Value, node: &str) -> Option<&'a serde_json::Value> {
    st["rebalancing"]
        .as_array()?
        .iter()
        .find(|r| r["node"] == node && r["volume"] == "vol")
}

/// Every copy of every shard holds the model's bytes, and a whole read
/// through the attacher returns the model.
async fn verify_copies(c: &mut ClusterClient, model: &[u8], shards: u64) -> u64 {
    let mut errors = 0;
    for s in 0..shards {
        let set = c.replicas_of(s);
        assert_eq!(set.len(), 2, "shard {s}: {set:?}");
        for node in &set {
            let got = c.fetch_from(node, s).await.expect("fetch");
            assert_eq!(
                got.len() as u64,
                CLUSTER_SHARD_BYTES / BS,
                "shard {s} on {node}"
            );
            for (b, data) in got {
                let at = (b * BS) as usize;
                if data[..] != model[at..at + BS as usize] {
                    errors += 1;
                    eprintln!("copy on {node} of block {b} differs");
                }
            }
        }
    }
    if c.read(0, model.len() as u64).await.unwrap() != model {
        errors += 1;
    }
    errors
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_takes_its_share_and_a_leaving_one_is_replaced() {
    let seed: u64 = std::env::var("SHARDBLK_CLUSTER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    eprintln!("seed {seed} (SHARDBLK_CLUSTER_SEED)");
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(dir.path(), 3);
    let shards = 24u64;
    let size = shards * CLUSTER_SHARD_BYTES;
    let mut cfg = client_cfg("client-rebal", &nodes, size);
    cfg.out_after_ms = 3_000;
    // slow enough to watch: about a shard every half second
    let limits = Limits {
        bytes_per_sec: 2 << 20,
        max_moves: 2,
    };
    cfg.rebalance = limits;
    let mut c = ClusterClient::connect(cfg).await.expect("attach");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut model = vec![0u8; size as usize];
    rng.fill(&mut model[..]);
    c.write(0, &model).await.expect("write");
    let before: Vec<Vec<String>> = (0..shards).map(|s| c.replicas_of(s)).collect();
    assert!(before.iter().all(|s| !s.contains(&"node3".to_string())));

    // a fourth node joins
    nodes.push(Node::new(dir.path(), 3));
    let seeds: Vec<SocketAddr> = nodes.iter().map(|x| x.gossip).collect();
    nodes[3].start(&seeds);
    let t = std::time::Instant::now();
    while c.rebalance_status().is_none_or(|s| s.progress.planned == 0) {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no rebalancing planned"
        );
        c.idle(Duration::from_millis(50)).await;
    }
    let during = status_json(&mut c, &seeds).await;
    let r = rebalancing_of(&during, "client-rebal").expect("progress in cluster status");
    eprintln!("during: {r}");
    let planned = r["status"]["progress"]["planned"].as_u64().unwrap();
    assert!(planned > 0 && planned < shards, "{r}");
    assert!(r["status"]["progress"]["moved"].as_u64().unwrap() <= planned);
    let st = c
        .rebalanced(Duration::from_secs(40))
        .await
        .expect("rebalanced after the join");
    let took = t.elapsed();
    eprintln!("join: {st:?} in {took:?}");
    assert_eq!(st.basis, vec!["node0", "node1", "node2", "node3"]);
    assert_eq!(st.progress.moved, st.progress.planned);
    assert_eq!(c.moves, st.progress.planned);
    // only shards that now live on node3 moved, one copy each
    let mut moved = 0;
    for s in 0..shards {
        let now = c.replicas_of(s);
        if now != before[s as usize] {
            moved += 1;
            assert!(now.contains(&"node3".to_string()), "shard {s}: {now:?}");
            let kept: Vec<_> = now.iter().filter(|n| *n != "node3").collect();
            assert_eq!(kept.len(), 1);
            assert!(
                before[s as usize].contains(kept[0]),
                "shard {s}: {before:?} -> {now:?}"
            );
        }
    }
    assert_eq!(moved, st.progress.planned);
    // throttled: the copy took at least its bytes over the rate, less the
    // burst and the moves a nearly spent budget may still start
    let burst = 2 * CLUSTER_SHARD_BYTES * limits.max_moves as u64;
    let floor = st.progress.bytes.saturating_sub(burst) as f64 / limits.bytes_per_sec as f64;
    assert!(took.as_secs_f64() >= floor, "{took:?} < {floor} s");
    let after = status_json(&mut c, &seeds).await;
    let r = rebalancing_of(&after, "client-rebal").expect("progress in cluster status");
    eprintln!("after: {r}");
    assert_eq!(r["status"]["done"], true, "{r}");
    assert_eq!(r["status"]["progress"]["moved"].as_u64().unwrap(), moved);
    let node3 = after["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "node3")
        .unwrap();
    assert!(node3["shards"].as_u64().unwrap() > 0, "{node3}");
    // old copies were dropped: the nodes hold exactly two copies per shard
    let held: u64 = after["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["shards"].as_u64().unwrap())
        .sum();
    assert_eq!(held, 2 * shards, "{after}");
    // and the table form shows it too
    let text = status_text(&mut c, &seeds).await;
    eprintln!("{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("client-rebal"))
        .expect("a rebalancing line");
    assert!(line.contains(" done "), "{line}");
    assert!(line.contains("node0,node1,node2,node3"), "{line}");
    assert_eq!(verify_copies(&mut c, &model, shards).await, 0);

    // node1 leaves (for good): once it is out, its shards move to new homes
    nodes[1].kill();
    let t = std::time::Instant::now();
    while c.view().is_live("node1") {
        assert!(t.elapsed() < Duration::from_secs(20), "node1 still live");
        c.idle(Duration::from_millis(50)).await;
    }
    let st = c
        .rebalanced(Duration::from_secs(40))
        .await
        .expect("rebalanced after the leave");
    eprintln!("leave: {st:?}");
    assert_eq!(st.basis, vec!["node0", "node2", "node3"]);
    assert_eq!(st.finished, 2);
    let all: Vec<u64> = (0..shards).collect();
    assert!(
        c.settle(&all, Duration::from_secs(20)).await,
        "R=2 restored"
    );
    for s in 0..shards {
        assert!(!c.replicas_of(s).contains(&"node1".to_string()));
    }
    assert_eq!(verify_copies(&mut c, &model, shards).await, 0);
    eprintln!("repairs {} moves {}", c.repairs, c.moves);
    c.shutdown().await;
}

/// A number from the environment, else `default`.
fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The node holding the most copies of the volume's shards.
fn busiest(c: &ClusterClient, nodes: &[Node], shards: u64) -> usize {
    (0..nodes.len())
        .max_by_key(|&i| {
            (0..shards)
                .filter(|&s| c.replicas_of(s).contains(&nodes[i].id))
                .count()
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_leaving_gracefully_is_drained_without_a_shard_below_r() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(dir.path(), 4);
    let seeds: Vec<SocketAddr> = nodes.iter().map(|x| x.gossip).collect();
    let shards = env_u64("SHARDBLK_LEAVE_SHARDS", 16);
    let size = shards * CLUSTER_SHARD_BYTES;
    let mut cfg = client_cfg("client-leave", &nodes, size);
    // slow enough to watch the drain (a figure run raises it)
    let limits = Limits {
        bytes_per_sec: env_u64("SHARDBLK_LEAVE_BPS", 2 << 20),
        max_moves: 2,
    };
    cfg.rebalance = limits;
    let mut c = ClusterClient::connect(cfg).await.expect("attach");
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut model = vec![0u8; size as usize];
    rng.fill(&mut model[..]);
    for (i, chunk) in model.chunks(4 << 20).enumerate() {
        c.write(i as u64 * (4 << 20), chunk).await.expect("write");
    }
    let l = busiest(&c, &nodes, shards);
    let leaver = nodes[l].id.clone();
    let held = (0..shards)
        .filter(|&s| c.replicas_of(s).contains(&leaver))
        .count();
    eprintln!("{leaver} holds {held} of {shards} shards; SIGTERM");
    let t = std::time::Instant::now();
    nodes[l].terminate();
    let mut status_during = None;
    let mut min_live = usize::MAX;
    let exit = loop {
        assert!(
            t.elapsed() < Duration::from_secs(180),
            "{leaver} did not leave: {:?}",
            c.rebalance_status()
        );
        c.idle(Duration::from_millis(50)).await;
        // R live copies of every shard at every moment of the drain
        for s in 0..shards {
            let set = c.replicas_of(s);
            let live = set.iter().filter(|n| c.view().is_live(n)).count();
            min_live = min_live.min(live);
            assert!(live >= 2, "shard {s}: {set:?} during the drain");
        }
        if status_during.is_none()
            && c.view().leaving().contains(&leaver)
            && c.rebalance_status().is_some_and(|s| s.progress.planned > 0)
        {
            status_during = Some(status_json(&mut c, &seeds).await);
        }
        if let Some(st) = nodes[l].exited() {
            break st;
        }
    };
    let took = t.elapsed();
    let log = std::fs::read_to_string(&nodes[l].log).unwrap();
    assert!(exit.success(), "{leaver} exited {exit}: {log}");
    assert!(
        log.contains(&format!("node {leaver} left: drained")),
        "{log}"
    );
    eprintln!(
        "drained {held} shards of {} MiB in {took:?} at {} MiB/s",
        CLUSTER_SHARD_BYTES >> 20,
        limits.bytes_per_sec >> 20
    );
    let during = status_during.expect("status seen during the drain");
    let me = during["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == leaver.as_str())
        .unwrap();
    assert_eq!(me["leaving"], true, "{me}");
    let r = rebalancing_of(&during, "client-leave").expect("progress in cluster status");
    eprintln!("during: {r}");
    assert!(r["status"]["progress"]["planned"].as_u64().unwrap() >= held as u64);
    assert!(!r["status"]["target"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n == leaver.as_str()));
    // when it exited it was in no set and out of the basis: done
    let st = c.rebalance_status().unwrap();
    assert!(st.done, "{st:?}");
    assert!(!st.basis.contains(&leaver), "{st:?}");
    assert_eq!(st.progress.abandoned, 0);
    for s in 0..shards {
        assert!(!c.replicas_of(s).contains(&leaver), "shard {s}");
    }
    let after = status_json(&mut c, &seeds).await;
    let r = rebalancing_of(&after, "client-leave").unwrap();
    assert_eq!(r["status"]["done"], true, "{r}");
    assert_eq!(verify_copies(&mut c, &model, shards).await, 0);
    eprintln!("fewest live copies of a shard during the drain: {min_live}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_node_drops_its_stale_copies() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(dir.path(), 3);
    let shards = 8u64;
    let size = shards * CLUSTER_SHARD_BYTES;
    // the default out-after (a minute): copies are repaired elsewhere,
    // never rebalanced back
    let mut c = ClusterClient::connect(client_cfg("client-orphan", &nodes, size))
        .await
        .expect("attach");
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut model = vec![0u8; size as usize];
    rng.fill(&mut model[..]);
    c.write(0, &model).await.expect("write");
    let v = busiest(&c, &nodes, shards);
    let victim = nodes[v].id.clone();
    let stale: Vec<u64> = (0..shards)
        .filter(|&s| c.replicas_of(s).contains(&victim))
        .collect();
    assert!(!stale.is_empty());
    nodes[v].kill();
    let t = std::time::Instant::now();
    while c.view().is_live(&victim) {
        assert!(t.elapsed() < Duration::from_secs(20), "{victim} still live");
        c.idle(Duration::from_millis(50)).await;
    }
    let all: Vec<u64> = (0..shards).collect();
    assert!(c.settle(&all, Duration::from_secs(60)).await, "R restored");
    for &s in &stale {
        assert!(!c.replicas_of(s).contains(&victim), "shard {s}");
    }
    assert_eq!(c.orphans_dropped(), 0);
    let seeds: Vec<SocketAddr> = nodes.iter().map(|x| x.gossip).collect();
    nodes[v].start(&seeds);
    let t = std::time::Instant::now();
    let mut left = stale.clone();
    while !left.is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{victim} still holds shards {left:?} ({} orphans dropped)",
            c.orphans_dropped()
        );
        c.idle(Duration::from_millis(200)).await;
        if !c.view().is_live(&victim) {
            continue;
        }
        let mut still = Vec::new();
        for &s in &left {
            match c.fetch_from(&victim, s).await {
                Ok(blocks) if blocks.is_empty() => {}
                _ => still.push(s),
            }
        }
        left = still;
    }
    eprintln!(
        "{victim}'s {} stale copies dropped {:?} after its restart",
        stale.len(),
        t.elapsed()
    );
    assert!(c.orphans_dropped() >= stale.len() as u64);
    for s in 0..shards {
        assert!(!c.replicas_of(s).contains(&victim), "shard {s}");
    }
    assert_eq!(verify_copies(&mut c, &model, shards).await, 0);
    c.shutdown().await;
}

/// A network namespace joined to the root one by a veth pair, and an
/// address in the root namespace (on a second veth pair, which stays up)
/// for the storage nodes. Removed on drop, whatever happened.
struct Netns {
    ns: String,
    /// Root-namespace end of the namespace's link: taken down to cut it off.
    host_if: String,
    addr_if: String,
    node_ip: IpAddr,
    child_ip: IpAddr,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e} (is iproute2 installed?)", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

impl Netns {
    fn setup() -> Netns {
        let pid = std::process::id();
        let base = pid & 0x1fff;
        let net = |host: u32| {
            Ipv4Addr::new(
                10,
                (100 + (pid >> 13) % 100) as u8,
                (base >> 5) as u8,
                ((base & 31) * 8 + host) as u8,
            )
        };
        let n = Netns {
            ns: format!("sbp{pid}"),
            host_if: format!("sbp{pid}h"),
            addr_if: format!("sbp{pid}a"),
            node_ip: IpAddr::V4(net(5)),
            child_ip: IpAddr::V4(net(2)),
        };
        let (ns, h, a) = (n.ns.as_str(), n.host_if.as_str(), n.addr_if.as_str());
        let (na, ba) = (format!("sbp{pid}n"), format!("sbp{pid}b"));
        let host = format!("{}/30", net(1));
        let child = format!("{}/30", net(2));
        let node = format!("{}/32", net(5));
        let gw = net(1).to_string();
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", ns],
            vec!["link", "add", a, "type", "veth", "peer", "name", &ba],
            vec!["addr", "add", &node, "dev", a],
            vec!["link", "set", a, "up"],
            vec!["link", "set", &ba, "up"],
            vec!["link", "add", h, "type", "veth", "peer", "name", &na],
            vec!["link", "set", &na, "netns", ns],
            vec!["addr", "add", &host, "dev", h],
            vec!["link", "set", h, "up"],
            vec!["-n", ns, "addr", "add", &child, "dev", &na],
            vec!["-n", ns, "link", "set", &na, "up"],
            vec!["-n", ns, "link", "set", "lo", "up"],
            vec!["-n", ns, "route", "add", "default", "via", &gw],
        ];
        for st in steps {
            if let Err(e) = ip(&st) {
                panic!(
                    "this test needs network namespaces and veth links (root and \
                     iproute2; tools/setup.sh installs iproute2): {e}"
                );
            }
        }
        n
    }

    fn set_link(&self, up: bool) {
        ip(&["link", "set", &self.host_if, if up { "up" } else { "down" }]).unwrap();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.ns]);
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["link", "del", &self.addr_if]);
    }
}

/// What the parent tells the old attacher (in the environment).
const PART_CHILD_ENV: &str = "SHARDBLK_PARTITION_CHILD";

/// A child process killed on drop.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The old attacher of `a_partitioned_attacher_is_fenced_by_the_next`, run
/// by it inside the network namespace. Writes A (acknowledged), then on
/// "write" from stdin retries writing B until refused as fenced, then one
/// more write elsewhere; reports each outcome as a `PART` line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the old attacher of a_partitioned_attacher_is_fenced_by_the_next, run in its namespace"]
async fn partition_old_attacher() {
    let spec: serde_json::Value = serde_json::from_str(
        &std::env::var(PART_CHILD_ENV)
            .expect("run by a_partitioned_attacher_is_fenced_by_the_next"),
    )
    .unwrap();
    let seeds: Vec<SocketAddr> = spec["seeds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().parse().unwrap())
        .collect();
    let cfg = ClientConfig {
        id: "client-old".into(),
        gossip: spec["gossip"].as_str().unwrap().parse().unwrap(),
        seeds,
        volume: "vol".into(),
        size_bytes: spec["size"].as_u64().unwrap(),
        replicas: 2,
        expect_nodes: 3,
        wait_ms: 30_000,
        out_after_ms: CLUSTER_OUT_AFTER_MS,
        rebalance: Limits::default(),
    };
    let mut c = ClusterClient::connect(cfg).await.expect("old attach");
    c.write(0, &vec![1u8; 8 * BS as usize])
        .await
        .expect("write A");
    c.write(CLUSTER_SHARD_BYTES, &vec![1u8; 4 * BS as usize])
        .await
        .expect("write A'");
    println!("PART ready epoch {}", c.epoch().term);
    let line = tokio::task::spawn_blocking(|| {
        let mut l = String::new();
        std::io::stdin().read_line(&mut l).unwrap();
        l
    });
    let mut line = std::pin::pin!(line);
    loop {
        tokio::select! {
            l = &mut line => { assert_eq!(l.unwrap().trim(), "write"); break; }
            _ = c.idle(Duration::from_millis(100)) => {}
        }
    }
    let outcome = |r: &Result<(), ClientError>| match r {
        Ok(()) => "ok".to_string(),
        Err(ClientError::Op(OpError::Fenced(_))) => "fenced".to_string(),
        Err(e) => format!("error {e}"),
    };
    let t0 = std::time::Instant::now();
    for n in 1.. {
        let r = c.write(0, &vec![3u8; 8 * BS as usize]).await;
        println!(
            "PART attempt {n} at {} ms: {}",
            t0.elapsed().as_millis(),
            outcome(&r)
        );
        if r.is_ok() || matches!(r, Err(ClientError::Op(OpError::Fenced(_)))) {
            break;
        }
        if t0.elapsed() > Duration::from_secs(150) {
            break;
        }
        c.idle(Duration::from_millis(300)).await;
    }
    let r = c
        .write(2 * CLUSTER_SHARD_BYTES, &vec![4u8; 4 * BS as usize])
        .await;
    println!("PART after: {}", outcome(&r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_attacher_is_fenced_by_the_next() {
    use std::io::{BufRead, Write as _};
    let net = Netns::setup();
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| Node::new_at(dir.path(), i, net.node_ip))
        .collect();
    let seeds: Vec<SocketAddr> = nodes.iter().map(|x| x.gossip).collect();
    for n in &mut nodes {
        n.start(&seeds);
    }
    let size = 4 * CLUSTER_SHARD_BYTES;
    let spec = serde_json::json!({
        "seeds": seeds.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        "gossip": SocketAddr::new(net.child_ip, 7946).to_string(),
        "size": size,
    });
    let child_log = dir.path().join("old-attacher.log");
    let mut child = ChildGuard(
        Command::new("ip")
            .args(["netns", "exec", &net.ns])
            .arg(std::env::current_exe().unwrap())
            .args([
                "partition_old_attacher",
                "--exact",
                "--ignored",
                "--nocapture",
            ])
            .env(PART_CHILD_ENV, spec.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&child_log).unwrap())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let out = child.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(p) = l.strip_prefix("PART ") {
                eprintln!("old attacher: {p}");
                if tx.send(p.to_string()).is_err() {
                    break;
                }
            }
        }
    });
    let log = || std::fs::read_to_string(&child_log).unwrap_or_default();
    let ready = rx
        .recv_timeout(Duration::from_secs(90))
        .unwrap_or_else(|_| panic!("old attacher not ready: {}", log()));
    assert!(ready.starts_with("ready"), "{ready}");

    // cut it off (shard protocol and gossip alike), then let it write
    net.set_link(false);
    let mut stdin = child.0.stdin.take().unwrap();
    writeln!(stdin, "write").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut cfg = client_cfg("client-new", &nodes, size);
    cfg.gossip = free_udp_at(net.node_ip);
    let mut new = ClusterClient::connect(cfg).await.expect("attach new");
    new.write(0, &vec![2u8; 4 * BS as usize]).await.unwrap();
    eprintln!(
        "new attacher at term {} wrote; link back up",
        new.epoch().term
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    net.set_link(true);

    let mut lines = Vec::new();
    let t = std::time::Instant::now();
    while !lines
        .last()
        .is_some_and(|l: &String| l.starts_with("after"))
    {
        assert!(
            t.elapsed() < Duration::from_secs(200),
            "old attacher did not finish: {lines:?} {}",
            log()
        );
        while let Ok(l) = rx.try_recv() {
            lines.push(l);
        }
        new.idle(Duration::from_millis(100)).await;
    }
    let attempts: Vec<&String> = lines.iter().filter(|l| l.starts_with("attempt")).collect();
    assert!(
        attempts.len() >= 2,
        "it retried during the cut: {attempts:?}"
    );
    assert!(
        !attempts.iter().any(|l| l.ends_with(": ok")),
        "an old write was acknowledged: {attempts:?}"
    );
    assert!(
        attempts.last().unwrap().ends_with(": fenced"),
        "{attempts:?}"
    );
    assert_eq!(lines.last().unwrap(), "after: fenced");
    // nothing it wrote after the new attach is anywhere; both attachers'
    // acknowledged data is intact
    let got = new.read(0, 8 * BS).await.unwrap();
    assert!(got[..4 * BS as usize].iter().all(|&b| b == 2), "new write");
    assert!(
        got[4 * BS as usize..].iter().all(|&b| b == 1),
        "old write A"
    );
    let got = new.read(CLUSTER_SHARD_BYTES, 4 * BS).await.unwrap();
    assert!(got.iter().all(|&b| b == 1), "old write A'");
    for s in 0..3 {
        for node in new.replicas_of(s) {
            let mut got = new.fetch_from(&node, s).await;
            for _ in 0..20 {
                if got.is_ok() {
                    break;
                }
                new.idle(Duration::from_millis(250)).await;
                got = new.fetch_from(&node, s).await;
            }
            let got = got.unwrap_or_else(|e| {
                let why: Vec<String> = nodes.iter_mut().map(|n| n.diagnosis()).collect();
                panic!("shard {s} from {node}: {e}\n{}", why.join("\n"))
            });
            for (b, data) in got {
                assert!(
                    data.iter().all(|&x| x != 3 && x != 4),
                    "block {b} on {node} holds a write of the fenced attacher"
                );
                assert!(s != 2, "shard 2 on {node} was written (block {b})");
            }
        }
    }
    let st = child.0.wait().unwrap();
    assert!(st.success(), "old attacher: {st} {}", log());
    new.shutdown().await;
}

/// Wait (as a queue thread does, on its eventfd) until `want` results came
/// back through `q`, pushing parked requests meanwhile.
fn results(q: &mut QueueEnd, want: usize) -> Vec<NetDone> {
    let end = std::time::Instant::now() + Duration::from_secs(60);
    let mut got = Vec::new();
    while got.len() < want {
        assert!(std::time::Instant::now() < end, "only {got:?} came back");
        q.retry();
        while let Some(d) = q.pop_done() {
            got.push(d);
        }
        if got.len() < want {
            let mut pfd = libc::pollfd {
                fd: q.wake_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one live pollfd.
            unsafe { libc::poll(&mut pfd, 1, 200) };
            q.reset_wake();
        }
    }
    got
}

/// The ublk device's network thread without ublk: requests handed through a
/// queue end (a ring of 2, so most of them park first) with pointers to
/// buffers, served against three real nodes, results back by tag with an
/// eventfd wake-up; reads return what was written, WRITE_ZEROES zeroes, a
/// range past the end fails with EINVAL.
#[test]
fn the_device_network_thread_serves_handed_off_requests() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(dir.path(), 3);
    let size = 8 * CLUSTER_SHARD_BYTES;
    let src = ClusterSource {
        seeds: nodes.iter().map(|x| x.gossip).collect(),
        gossip: free_udp(),
        volume: "devvol".into(),
        size_bytes: size,
        replicas: 2,
        nodes: 3,
        stage_tier: None,
    };
    let notify = Arc::new(Notify::new());
    let (mut q, n) = channel(8, 2, notify.clone()).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    // 8 tags, 64 KiB each, spread over the volume (some crossing shards)
    let len = 64 * 1024u64;
    let offsets: Vec<u64> = (0..8u64)
        .map(|i| i * size / 8 + CLUSTER_SHARD_BYTES - 16 * 1024 * (i % 2))
        .map(|o| o.min(size - len))
        .collect();
    let mut bufs: Vec<Vec<u8>> = (0..8)
        .map(|_| {
            let mut b = vec![0u8; len as usize];
            rng.fill(&mut b[..]);
            b
        })
        .collect();
    let model = bufs.clone();
    let req = |tag: usize, op, buf: &mut Vec<u8>, offsets: &[u64]| NetRequest {
        tag: tag as u16,
        op,
        offset: offsets[tag],
        len,
        buf: BufPtr(buf.as_mut_ptr()),
    };
    let sent: usize = (0..8)
        .map(|t| usize::from(q.submit(req(t, NetOp::Write, &mut bufs[t], &offsets))))
        .sum();
    // handed over before the network thread runs, so the ring of 2 takes
    // exactly two and the rest wait parked (a running thread draining the
    // ring meanwhile made this count depend on the scheduler)
    assert_eq!(sent, 2, "a ring of 2 takes two");
    assert_eq!(q.parked(), 6, "a ring of 2 parks the rest");
    let net = NetThread::start(&src, vec![n], notify, None).expect("attach");
    let mut done = results(&mut q, 8);
    done.sort_by_key(|d| d.tag);
    assert!(done.iter().all(|d| d.res == len as i32), "{done:?}");
    for b in bufs.iter_mut() {
        b.fill(0);
    }
    for (t, b) in bufs.iter_mut().enumerate() {
        q.submit(req(t, NetOp::Read, b, &offsets));
    }
    let done = results(&mut q, 8);
    assert!(done.iter().all(|d| d.res == len as i32), "{done:?}");
    assert!(bufs == model, "reads differ from the writes");
    // zeroes over tag 3's range, read back
    let mut none = Vec::new();
    q.submit(req(3, NetOp::WriteZeroes, &mut none, &offsets));
    assert_eq!(results(&mut q, 1)[0].res, 0);
    q.submit(req(3, NetOp::Read, &mut bufs[3], &offsets));
    assert_eq!(results(&mut q, 1)[0].res, len as i32);
    assert!(bufs[3].iter().all(|&x| x == 0), "WRITE_ZEROES left data");
    // past the end of the volume
    let mut past = offsets.clone();
    past[0] = size;
    q.submit(req(0, NetOp::Read, &mut bufs[0], &past));
    assert_eq!(results(&mut q, 1)[0].res, -libc::EINVAL);
    assert_eq!(q.in_flight(), 0);
    net.stop();
}

/// A storage node outlives peers that hang up with answers still owed: a
/// client pipelines requests, then closes without reading (its kernel
/// answers the node's next writes with a reset). The node must take that
/// as an error on one connection (it once died of SIGPIPE, which is how a
/// cut-off attacher's reconnection killed two nodes of the partition test).
#[test]
fn a_storage_node_survives_peers_that_hang_up_mid_answer() {
    use bytes::BytesMut;
    use shardblk::cluster::epoch::Epoch;
    use shardblk::cluster::proto::Request;
    use shardblk::cluster::wire::{Frame, FrameCodec};
    use std::io::Write as _;
    use tokio_util::codec::Encoder as _;
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::new(dir.path(), 0);
    node.start(&[node.gossip]);
    let pid = node.child.as_ref().unwrap().id();
    let listen = node.listen;
    let connect = || {
        let end = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match std::net::TcpStream::connect(listen) {
                Ok(s) => return s,
                Err(e) if std::time::Instant::now() > end => panic!("node never listened: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    };
    drop(connect()); // listening: the node runs its own code now
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let ignored = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .map(|m| u64::from_str_radix(m.trim(), 16).unwrap())
        .unwrap();
    assert_ne!(
        ignored & (1 << (libc::SIGPIPE - 1)),
        0,
        "node run must ignore SIGPIPE: {status}"
    );
    let mut wire = BytesMut::new();
    for id in 1..=512u64 {
        let req = Request::Fetch {
            volume: "vol".into(),
            epoch: Epoch::ZERO,
            first_block: 0,
            n_blocks: CLUSTER_SHARD_BYTES / BS,
        };
        FrameCodec::default()
            .encode(Frame::request(id, req).unwrap(), &mut wire)
            .unwrap();
    }
    for round in 0..8 {
        std::thread::sleep(Duration::from_millis(100));
        if let Some(st) = node.exited() {
            panic!("the node died of a peer's hang-up (round {round}): {st}");
        }
        let mut s = connect();
        s.write_all(&wire).unwrap();
        std::thread::sleep(Duration::from_millis(20 * (round % 4)));
        drop(s); // unread answers: the close resets the connection
    }
    std::thread::sleep(Duration::from_millis(500));
    if let Some(st) = node.exited() {
        panic!("the node died of a peer's hang-up: {st}");
    }
    // and it still answers
    let mut s = connect();
    let mut one = BytesMut::new();
    let req = Request::Fetch {
        volume: "vol".into(),
        epoch: Epoch::ZERO,
        first_block: 0,
        n_blocks: 1,
    };
    FrameCodec::default()
        .encode(Frame::request(1, req).unwrap(), &mut one)
        .unwrap();
    s.write_all(&one).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 16];
    let n = std::io::Read::read(&mut s, &mut buf).unwrap();
    assert!(n > 0, "no answer after the hang-ups");
}

/// Remote staging on the device's network thread (`--stage-tier`, issue 5's
/// last bullet), against three real nodes: demand promotion (`--prefetch
/// none --prefetch-promote 1`) stages the shards read once onto a stage
/// tier file through fetch-for-staging; reads of them come back served
/// locally (`NetDone::local`, `local_reads`) with the replicas' data; then
/// rounds of concurrent writes into staged shards with reads of the same
/// shards in flight: every read returns the last acknowledged write (or,
/// for blocks a write in flight covers, that write's data), and after each
/// round every written range reads back new, locally.
#[test]
fn staged_cluster_shards_serve_reads_locally_and_stay_coherent_under_writes() {
    use shardblk::device::metrics::{trace_ring, Op as DevOp, TraceEvent};
    use shardblk::device::serve_cluster::stage_of;
    use shardblk::io::file::FileDev;
    use shardblk::prefetch::live::LiveConfig;
    use shardblk::prefetch::{PredictorKind, PrefetchConfig};
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(dir.path(), 3);
    let shards = 8u64;
    let size = shards * CLUSTER_SHARD_BYTES;
    let tier_path = dir.path().join("stage.img");
    drop(FileDev::create_file(&tier_path, 4 * CLUSTER_SHARD_BYTES).unwrap());
    let src = ClusterSource {
        seeds: nodes.iter().map(|x| x.gossip).collect(),
        gossip: free_udp(),
        volume: "stagevol".into(),
        size_bytes: size,
        replicas: 2,
        nodes: 3,
        stage_tier: Some(tier_path.clone()),
    };
    let lc = LiveConfig {
        kind: PredictorKind::None,
        prefetch: PrefetchConfig::default(),
        budget_bytes: None,
        model: None,
        promote_reads: 1,
        lstm: Default::default(),
    };
    let volume_id = crc32c::crc32c(src.volume.as_bytes());
    let start = std::time::Instant::now();
    let notify = Arc::new(Notify::new());
    let depth = 16u16;
    let (mut q, n) = channel(depth, 64, notify.clone()).unwrap();
    let (mut trace, consumer) = trace_ring(4096);
    let (live, stage) = stage_of(
        &src,
        &tier_path,
        &lc,
        volume_id,
        vec![consumer],
        start,
        &notify,
    )
    .unwrap();
    let net = NetThread::start(&src, vec![n], notify, Some(stage)).expect("attach");
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    // fill the volume
    let mut model = vec![0u8; size as usize];
    rng.fill(&mut model[..]);
    let chunk = 256 * 1024u64;
    let mut bufs: Vec<Vec<u8>> = (0..depth).map(|_| vec![0u8; chunk as usize]).collect();
    let mut in_flight: HashMap<u16, (NetOp, u64, u64)> = HashMap::new();
    let mut run = |q: &mut QueueEnd,
                   bufs: &mut Vec<Vec<u8>>,
                   reqs: Vec<(NetOp, u64, u64)>,
                   trace: &mut shardblk::device::metrics::TraceProducer|
     -> Vec<(NetOp, u64, u64, NetDone, Vec<u8>)> {
        assert!(reqs.len() <= depth as usize);
        for (tag, &(op, off, len)) in reqs.iter().enumerate() {
            let tag = tag as u16;
            if op == NetOp::Read {
                trace.push(TraceEvent {
                    time_ns: start.elapsed().as_nanos() as u64,
                    volume: volume_id,
                    offset: off,
                    len: len as u32,
                    op: DevOp::Read,
                });
            }
            in_flight.insert(tag, (op, off, len));
            q.submit(NetRequest {
                tag,
                op,
                offset: off,
                len,
                buf: BufPtr(bufs[tag as usize].as_mut_ptr()),
            });
        }
        let done = results(q, reqs.len());
        done.into_iter()
            .map(|d| {
                let (op, off, len) = in_flight.remove(&d.tag).unwrap();
                let data = bufs[d.tag as usize][..len as usize].to_vec();
                (op, off, len, d, data)
            })
            .collect()
    };
    let writes: Vec<(NetOp, u64, u64)> = (0..size / chunk)
        .map(|i| (NetOp::Write, i * chunk, chunk))
        .collect();
    for batch in writes.chunks(depth as usize) {
        for (t, &(_, off, len)) in batch.iter().enumerate() {
            bufs[t][..len as usize].copy_from_slice(&model[off as usize..(off + len) as usize]);
        }
        for (_, _, _, d, _) in run(&mut q, &mut bufs, batch.to_vec(), &mut trace) {
            assert_eq!(d.res, chunk as i32);
            assert!(!d.local);
        }
    }
    // read shards 0..4 once (remote): demand promotion stages them
    let reads: Vec<(NetOp, u64, u64)> = (0..4)
        .map(|s| (NetOp::Read, s * CLUSTER_SHARD_BYTES + 4096, 8192))
        .collect();
    for (_, off, len, d, data) in run(&mut q, &mut bufs, reads, &mut trace) {
        assert_eq!(d.res, len as i32);
        assert_eq!(data, model[off as usize..(off + len) as usize]);
    }
    let stats = || {
        live.shared()
            .stats()
            .and_then(|s| s.remote)
            .unwrap_or_default()
    };
    let t0 = std::time::Instant::now();
    while stats().stager.resident_shards < 4 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "not staged: {:?}",
            stats()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // staged reads: whole shards in 256 KiB pieces, served locally (the
    // first may renew the lease remotely)
    let mut local = 0;
    for s in 0..4u64 {
        let reads: Vec<(NetOp, u64, u64)> = (0..4)
            .map(|i| (NetOp::Read, s * CLUSTER_SHARD_BYTES + i * chunk, chunk))
            .collect();
        for (_, off, len, d, data) in run(&mut q, &mut bufs, reads, &mut trace) {
            assert_eq!(d.res, len as i32);
            assert!(
                data == model[off as usize..(off + len) as usize],
                "staged read at {off}"
            );
            local += usize::from(d.local);
        }
    }
    assert!(local >= 12, "only {local} of 16 staged reads were local");
    // rounds of concurrent writes and reads on the staged shards
    let blocks = 4 * CLUSTER_SHARD_BYTES / BS;
    for round in 0..30 {
        let mut reqs = Vec::new();
        let mut written: Vec<(u64, u64, Vec<u8>)> = Vec::new();
        for _ in 0..8 {
            let b = rng.random_range(0..blocks - 16);
            let n = rng.random_range(1..=16u64);
            if written
                .iter()
                .any(|&(o, l, _)| b * BS < o + l && o < (b + n) * BS)
            {
                continue; // one write per block per round
            }
            let mut data = vec![0u8; (n * BS) as usize];
            rng.fill(&mut data[..]);
            written.push((b * BS, n * BS, data));
        }
        for (off, len, data) in &written {
            bufs[reqs.len()][..*len as usize].copy_from_slice(data);
            reqs.push((NetOp::Write, *off, *len));
        }
        while reqs.len() < depth as usize {
            let b = rng.random_range(0..blocks - 16);
            reqs.push((NetOp::Read, b * BS, rng.random_range(1..=16u64) * BS));
        }
        let out = run(&mut q, &mut bufs, reqs, &mut trace);
        for (op, off, len, d, data) in &out {
            assert_eq!(d.res, *len as i32, "round {round}: {op:?} at {off}");
            if *op != NetOp::Read {
                continue;
            }
            for k in 0..len / BS {
                let at = off + k * BS;
                let got = &data[(k * BS) as usize..((k + 1) * BS) as usize];
                let old = &model[at as usize..(at + BS) as usize];
                let new = written.iter().find_map(|(o, l, w)| {
                    (at >= *o && at < o + l).then(|| &w[(at - o) as usize..(at - o + BS) as usize])
                });
                assert!(
                    got == old || new.is_some_and(|n| got == n),
                    "round {round}: read at {off} (local {}): block {at} is neither the \
                     acknowledged data nor the write in flight",
                    d.local
                );
            }
        }
        for (off, len, data) in &written {
            model[*off as usize..(off + len) as usize].copy_from_slice(data);
        }
        // every written range, now acknowledged, reads back new
        let reqs: Vec<(NetOp, u64, u64)> = written
            .iter()
            .map(|(o, l, _)| (NetOp::Read, *o, *l))
            .collect();
        for (_, off, len, d, data) in run(&mut q, &mut bufs, reqs, &mut trace) {
            assert_eq!(d.res, len as i32);
            assert!(
                data == model[off as usize..(off + len) as usize],
                "round {round}: stale read at {off} after an acknowledged write (local {})",
                d.local
            );
            local += usize::from(d.local);
        }
    }
    // stagings racing writes: reads of shards 4..8 promote them (evicting
    // read shards 0..4) while writes land in the same shards; a fetch that
    // a write overtook is discarded, never installed
    for round in 0..12 {
        let s = 4 + round % 4;
        let mut reqs = vec![(NetOp::Read, s * CLUSTER_SHARD_BYTES, BS)];
        let mut written: Vec<(u64, u64)> = Vec::new();
        for k in 0..6u64 {
            let off = s * CLUSTER_SHARD_BYTES + (k * 37 + round * 11) % 240 * BS;
            if written.iter().any(|&(o, _)| o == off) {
                continue;
            }
            let t = reqs.len();
            rng.fill(&mut bufs[t][..BS as usize]);
            model[off as usize..(off + BS) as usize].copy_from_slice(&bufs[t][..BS as usize]);
            written.push((off, BS));
            reqs.push((NetOp::Write, off, BS));
        }
        // the first read's data predates the writes or not: not checked
        for (_, _, len, d, _) in run(&mut q, &mut bufs, reqs, &mut trace) {
            assert_eq!(d.res, len as i32);
        }
        std::thread::sleep(Duration::from_millis(20));
        let reqs: Vec<(NetOp, u64, u64)> = (0..4)
            .map(|i| (NetOp::Read, s * CLUSTER_SHARD_BYTES + i * chunk, chunk))
            .collect();
        for (_, off, len, d, data) in run(&mut q, &mut bufs, reqs, &mut trace) {
            assert_eq!(d.res, len as i32);
            assert!(
                data == model[off as usize..(off + len) as usize],
                "race round {round}: stale read at {off} (local {})",
                d.local
            );
        }
    }
    // the replicas agree with the model (the writes went through)
    std::thread::sleep(Duration::from_millis(
        2 * shardblk::constants::DEVICE_STATS_PUBLISH_MS,
    ));
    let st = stats();
    eprintln!("{st:?}");
    assert!(st.local_reads >= local as u64, "{st:?}");
    assert!(st.stager.staged >= 4 && st.updated > 0, "{st:?}");
    assert_eq!(st.fetch_failed, 0, "{st:?}");
    // past the end of the volume: refused, never served from the tier
    let past = run(
        &mut q,
        &mut bufs,
        vec![(NetOp::Read, size, 4096)],
        &mut trace,
    );
    assert_eq!(past[0].3.res, -libc::EINVAL);
    assert_eq!(q.in_flight(), 0);
    net.stop();
    drop(live);
    // a fresh attacher without staging reads the model from the replicas
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = ClusterClient::connect(ClientConfig {
            volume: "stagevol".into(),
            ..client_cfg("verify", &nodes, size)
        })
        .await
        .unwrap();
        let got = c.read(0, size).await.unwrap();
        assert!(got == model, "the replicas differ from the model");
        c.shutdown().await;
    });
}
