//! Cluster end to end on loopback: three `shardblk node run` processes, a
//! cluster volume with R = 2, random verified writes while one node is
//! killed (SIGKILL) and restarted; and a stale attacher fenced out.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shardblk::cluster::attacher::OpError;
use shardblk::cluster::client::{ClientConfig, ClientError, ClusterClient};
use shardblk::constants::{CLUSTER_BLOCK_BYTES, CLUSTER_SHARD_BYTES};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BS: u64 = CLUSTER_BLOCK_BYTES;

fn free_tcp() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn free_udp() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
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
            listen: free_tcp(),
            gossip: free_udp(),
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
    let victim = rng.random_range(0..3usize);
    nodes[victim].kill();
    let t = std::time::Instant::now();
    for _ in 0..100 {
        random_op(&mut c, &mut rng, &mut model, &mut written, &mut errors).await;
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
