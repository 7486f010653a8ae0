//! Cluster figures on loopback (`cargo bench --bench cluster`): node
//! processes (`shardblk node run`) on file-backed pools, a client in this
//! process.
//!
//! - Read latency and throughput, local vs remote: 4 KiB random reads and
//!   1 MiB sequential reads of a 64 MiB written range, straight from a local
//!   pool volume (the engine's `Volume::read`) and through the cluster client
//!   from a node process over TCP (R = 1, one node).
//! - Durable write latency for comparison: local `write` + `flush` vs the
//!   client at R = 1 and R = 2 (every replica commits before it answers).
//! - Time to restore R after a node loss versus data size: three nodes,
//!   R = 2, write N MiB, SIGKILL one node, measure the time until gossip
//!   declares it dead and until every written shard has two live copies.
//! - Rebalancing when a node joins versus data size: three nodes, R = 2,
//!   write N MiB, start a fourth node, measure the shards (and copies) moved
//!   against the total and the theoretical share, and the time from the
//!   fourth node's start until the rebalancing is done (default throttle,
//!   `CLUSTER_REBALANCE_BYTES_PER_SEC`).
//!
//! - Queue depth: random 4 KiB reads and writes kept QD at a time through
//!   the client's `submit`/`poll` (three nodes, R = 2), QD 1 to 32: IOPS
//!   and latency, the attacher running that many operations at once.
//!
//! - Remote staging (`SHARDBLK_BENCH_ONLY=stage`): a cluster device's
//!   network thread with a stage tier file, half the volume staged; QD1
//!   4 KiB and 128 KiB random reads of staged shards (served from the stage
//!   tier) against unstaged ones (from the replicas), interleaved.
//!
//! Prints markdown tables; `SHARDBLK_BENCH_QUICK=1` shrinks the sizes,
//! `SHARDBLK_BENCH_ONLY=rebalance` (or `qd`, `stage`) runs that table alone.

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shardblk::cluster::client::{ClientConfig, ClusterClient, Io};
use shardblk::cluster::rebalance::Limits;
use shardblk::constants::{
    CLUSTER_OUT_AFTER_MS, CLUSTER_REBALANCE_BYTES_PER_SEC, CLUSTER_REBALANCE_MAX_MOVES,
    CLUSTER_SHARD_BYTES,
};
use shardblk::device::handoff::{channel, BufPtr, NetDone, NetOp, NetRequest, QueueEnd};
use shardblk::device::metrics::{trace_ring, Op as DevOp, TraceEvent, TraceProducer};
use shardblk::device::net::{ClusterSource, NetThread};
use shardblk::device::serve_cluster::stage_of;
use shardblk::io::AlignedBuf;
use shardblk::prefetch::live::LiveConfig;
use shardblk::prefetch::{PredictorKind, PrefetchConfig};
use shardblk::shard::policy::TierPolicy;
use shardblk::shard::pool::{Pool, TierSpec};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

const MIB: u64 = 1 << 20;

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

fn make_pool_file(path: &Path, bytes: u64) {
    std::fs::File::create(path).unwrap().set_len(bytes).unwrap();
}

struct Node {
    child: Option<Child>,
    gossip: SocketAddr,
}

impl Node {
    fn start(dir: &Path, i: usize, seeds: &[SocketAddr], gossip: SocketAddr) -> Node {
        let pool = dir.join(format!("pool{i}.img"));
        if !pool.exists() {
            make_pool_file(&pool, 1 << 30);
            let st = Command::new(env!("CARGO_BIN_EXE_shardblk"))
                .args(["pool", "init", "--tier"])
                .arg(format!("hot={}", pool.display()))
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(st.success());
        }
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_shardblk"));
        cmd.args(["node", "run", "--id", &format!("node{i}")])
            .arg("--pool")
            .arg(&pool)
            .arg("--listen")
            .arg(free_tcp().to_string())
            .arg("--gossip")
            .arg(gossip.to_string());
        for s in seeds {
            cmd.arg("--seed").arg(s.to_string());
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        Node {
            child: Some(cmd.spawn().unwrap()),
            gossip,
        }
    }
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
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
    let gossips: Vec<SocketAddr> = (0..n).map(|_| free_udp()).collect();
    (0..n)
        .map(|i| Node::start(dir, i, &gossips, gossips[i]))
        .collect()
}

async fn client(nodes: &[Node], replicas: usize, size: u64) -> ClusterClient {
    ClusterClient::connect(ClientConfig {
        id: format!("bench-{}", std::process::id()),
        gossip: free_udp(),
        seeds: nodes.iter().map(|n| n.gossip).collect(),
        volume: "bench".into(),
        size_bytes: size,
        replicas,
        expect_nodes: nodes.len(),
        wait_ms: 30_000,
        out_after_ms: CLUSTER_OUT_AFTER_MS,
        rebalance: Limits::default(),
    })
    .await
    .expect("attach")
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6
}

struct Lat {
    p50_us: f64,
    p99_us: f64,
    mb_s: f64,
}

fn lat(mut v: Vec<Duration>, bytes_each: u64) -> Lat {
    let total: f64 = v.iter().map(|d| d.as_secs_f64()).sum();
    Lat {
        p50_us: pct(&mut v, 0.5),
        p99_us: pct(&mut v, 0.99),
        mb_s: (v.len() as u64 * bytes_each) as f64 / total / 1e6,
    }
}

fn row(what: &str, l: &Lat) {
    println!(
        "| {what} | {:.0} | {:.0} | {:.1} |",
        l.p50_us, l.p99_us, l.mb_s
    );
}

/// Three nodes with `mib` MiB at R = 2, then a fourth joins: one table row.
fn rebalance_row(dir: &Path, rt: &tokio::runtime::Runtime, mib: u64) {
    let size = mib * MIB;
    rt.block_on(async {
        let mut nodes = cluster(dir, 3);
        let mut c = client(&nodes, 2, size).await;
        let chunk = vec![0xa5u8; MIB as usize];
        for i in 0..mib {
            c.write(i * MIB, &chunk).await.unwrap();
        }
        let shards = size / CLUSTER_SHARD_BYTES;
        let before: Vec<Vec<String>> = (0..shards).map(|s| c.replicas_of(s)).collect();
        let seeds: Vec<SocketAddr> = nodes.iter().map(|n| n.gossip).collect();
        let t0 = Instant::now();
        nodes.push(Node::start(dir, 3, &seeds, free_udp()));
        let st = c
            .rebalanced(Duration::from_secs(600))
            .await
            .expect("rebalanced");
        let took = t0.elapsed();
        let moved = (0..shards)
            .filter(|&s| c.replicas_of(s) != before[s as usize])
            .count() as u64;
        assert_eq!(moved, st.progress.moved);
        let mb_s = st.progress.bytes as f64 / took.as_secs_f64() / 1e6;
        println!(
            "| {mib} MiB | {moved} of {shards} ({:.0} %) | 50 % | {:.1} % | 25 % | {:.1} MiB | {:.2} s | {mb_s:.1} |",
            100.0 * moved as f64 / shards as f64,
            100.0 * moved as f64 / (2 * shards) as f64,
            st.progress.bytes as f64 / MIB as f64,
            took.as_secs_f64(),
        );
        c.shutdown().await;
    });
}

fn rebalance_table(dir: &Path, rt: &tokio::runtime::Runtime, quick: bool) {
    println!();
    println!(
        "Rebalancing after a 4th node joins 3 (R = 2, throttle {} MiB/s, {} moves at once); \
         time from the node's start, gossip discovery included.",
        CLUSTER_REBALANCE_BYTES_PER_SEC / MIB,
        CLUSTER_REBALANCE_MAX_MOVES
    );
    println!();
    println!(
        "| data (R=2) | shards moved | theory R/(N+1) | copies moved | theory 1/(N+1) | copied | rebalanced after | copy MB/s |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    let sizes: &[u64] = if quick { &[8, 32] } else { &[16, 64, 256] };
    for &mib in sizes {
        let d = dir.join(format!("rebal{mib}"));
        std::fs::create_dir(&d).unwrap();
        rebalance_row(&d, rt, mib);
    }
}

/// Random 4 KiB reads (checked against `data`) or writes over `data`'s
/// span, `qd` at a time for `secs`: `(IOPS, p50 µs, p99 µs)`.
async fn qd_run(
    c: &mut ClusterClient,
    qd: usize,
    write: bool,
    data: &[u8],
    secs: f64,
    rng: &mut ChaCha8Rng,
) -> (f64, f64, f64) {
    let blocks = data.len() as u64 / 4096;
    let block = Bytes::from(vec![0x3cu8; 4096]);
    let mut out: std::collections::HashMap<u64, (Instant, u64)> = Default::default();
    let mut lat = Vec::new();
    let mut tag = 0u64;
    let t0 = Instant::now();
    let mut submit =
        |c: &mut ClusterClient, out: &mut std::collections::HashMap<u64, (Instant, u64)>| {
            let off = rng.random_range(0..blocks) * 4096;
            let io = if write {
                Io::Write {
                    offset: off,
                    data: block.clone(),
                }
            } else {
                Io::Read {
                    offset: off,
                    len: 4096,
                }
            };
            tag += 1;
            c.submit(tag, io).expect("submit");
            out.insert(tag, (Instant::now(), off));
        };
    for _ in 0..qd {
        submit(c, &mut out);
    }
    while !out.is_empty() {
        for d in c.poll(Duration::from_millis(100)).await {
            let (t, off) = out.remove(&d.tag).expect("submitted");
            lat.push(t.elapsed());
            let got = d.result.expect("I/O");
            if let Some(got) = got {
                assert_eq!(got[..], data[off as usize..off as usize + 4096]);
            }
            if t0.elapsed().as_secs_f64() < secs {
                submit(c, &mut out);
            }
        }
    }
    let n = lat.len() as f64;
    let took = t0.elapsed().as_secs_f64();
    (n / took, pct(&mut lat, 0.5), pct(&mut lat, 0.99))
}

/// QD 1..32 random 4 KiB reads, then writes, on 3 nodes at R = 2.
fn qd_table(dir: &Path, rt: &tokio::runtime::Runtime, quick: bool) {
    let span = if quick { 16 * MIB } else { 64 * MIB };
    let secs = if quick { 1.0 } else { 3.0 };
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut data = vec![0u8; span as usize];
    rng.fill(&mut data[..]);
    println!();
    println!(
        "Random 4 KiB I/O kept QD deep through `submit`/`poll` (3 nodes, R = 2, {} MiB, {secs} s each).",
        span / MIB
    );
    println!();
    println!("| op | QD | IOPS | p50 µs | p99 µs | vs QD1 |");
    println!("| --- | --- | --- | --- | --- | --- |");
    rt.block_on(async {
        let nodes = cluster(dir, 3);
        let mut c = client(&nodes, 2, span).await;
        for (i, ch) in data.chunks(MIB as usize).enumerate() {
            c.write(i as u64 * MIB, ch).await.unwrap();
        }
        for write in [false, true] {
            let mut base = 0.0;
            for qd in [1, 4, 16, 32] {
                let (iops, p50, p99) = qd_run(&mut c, qd, write, &data, secs, &mut rng).await;
                if qd == 1 {
                    base = iops;
                }
                println!(
                    "| {} | {qd} | {iops:.0} | {p50:.0} | {p99:.0} | {:.1}x |",
                    if write { "write" } else { "read" },
                    iops / base
                );
            }
        }
        c.shutdown().await;
        drop(nodes);
    });
}

/// Wait until `want` results came back through `q` (as a queue thread
/// does, on its eventfd), pushing parked requests meanwhile.
fn results(q: &mut QueueEnd, want: usize) -> Vec<NetDone> {
    let mut got = Vec::new();
    while got.len() < want {
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

/// Remote staging: a cluster device's network thread (requests handed off
/// as a queue thread hands them, three nodes, R = 2) with a stage tier
/// file; half the volume staged by demand promotion, then QD1 reads of
/// staged shards (served from the stage tier) and of unstaged ones (from
/// the replicas), interleaved.
fn stage_table(dir: &Path, quick: bool) {
    let shards = 16u64;
    let size = shards * CLUSTER_SHARD_BYTES;
    let reads = if quick { 200 } else { 2000 };
    let nodes = cluster(dir, 3);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut data = vec![0u8; size as usize];
    rng.fill(&mut data[..]);
    rt.block_on(async {
        let mut c = client(&nodes, 2, size).await;
        for (i, ch) in data.chunks(MIB as usize).enumerate() {
            c.write(i as u64 * MIB, ch).await.unwrap();
        }
        c.shutdown().await;
    });
    let tier = dir.join("stage.img");
    make_pool_file(&tier, size);
    let src = ClusterSource {
        seeds: nodes.iter().map(|n| n.gossip).collect(),
        gossip: free_udp(),
        volume: "bench".into(),
        size_bytes: size,
        replicas: 2,
        nodes: 3,
        stage_tier: Some(tier.clone()),
    };
    let lc = LiveConfig {
        kind: PredictorKind::None,
        prefetch: PrefetchConfig::default(),
        budget_bytes: None,
        model: None,
        promote_reads: 1,
        lstm: Default::default(),
    };
    let vid = crc32c::crc32c(src.volume.as_bytes());
    let start = Instant::now();
    let notify = Arc::new(Notify::new());
    let (mut q, n) = channel(4, 16, notify.clone()).unwrap();
    let (mut trace, consumer) = trace_ring(4096);
    let (live, stage) = stage_of(&src, &tier, &lc, vid, vec![consumer], start, &notify).unwrap();
    let net = NetThread::start(&src, vec![n], notify, Some(stage)).expect("attach");
    let mut buf = AlignedBuf::new(MIB as usize);
    let mut read = |q: &mut QueueEnd, off: u64, len: u64, trace: Option<&mut TraceProducer>| {
        if let Some(t) = trace {
            t.push(TraceEvent {
                time_ns: start.elapsed().as_nanos() as u64,
                volume: vid,
                offset: off,
                len: len as u32,
                op: DevOp::Read,
            });
        }
        let t0 = Instant::now();
        q.submit(NetRequest {
            tag: 0,
            op: NetOp::Read,
            offset: off,
            len,
            buf: BufPtr(buf.as_mut_ptr()),
        });
        let d = results(q, 1).pop().unwrap();
        let t = t0.elapsed();
        assert_eq!(d.res, len as i32);
        assert!(buf[..len as usize] == data[off as usize..(off + len) as usize]);
        (t, d.local)
    };
    // one read of each of the first half's shards stages them
    for s in 0..shards / 2 {
        read(&mut q, s * CLUSTER_SHARD_BYTES, 4096, Some(&mut trace));
    }
    let t0 = Instant::now();
    while live
        .shared()
        .stats()
        .and_then(|s| s.remote)
        .is_none_or(|r| r.stager.resident_shards < shards / 2)
    {
        assert!(t0.elapsed() < Duration::from_secs(60), "not staged");
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("\n### Remote staging: QD1 reads on loopback (3 nodes, R = 2, stage tier file)\n");
    println!("| read | served from | p50 µs | p99 µs | MB/s |");
    println!("| --- | --- | --- | --- | --- |");
    for len in [4096u64, 128 * 1024] {
        let (mut staged, mut remote) = (Vec::new(), Vec::new());
        let (mut wrong_local, mut wrong_remote) = (0, 0);
        for i in 0..reads {
            // alternate: a staged shard, then an unstaged one (whose reads
            // keep the lease fresh, as any remote operation does)
            let half = shards / 2;
            let s = rng.random_range(0..half) + if i % 2 == 0 { 0 } else { half };
            let off = s * CLUSTER_SHARD_BYTES
                + rng.random_range(0..(CLUSTER_SHARD_BYTES - len) / 4096) * 4096;
            let (t, local) = read(&mut q, off, len, None);
            if s < half {
                wrong_remote += usize::from(!local);
                staged.push(t);
            } else {
                wrong_local += usize::from(local);
                remote.push(t);
            }
        }
        assert_eq!(wrong_local, 0, "an unstaged shard served locally");
        let what = format!("{} KiB random", len / 1024);
        row(
            &format!("{what} | stage tier ({wrong_remote} went remote)"),
            &lat(staged, len),
        );
        row(&format!("{what} | replicas"), &lat(remote, len));
    }
    net.stop();
    drop(live);
}

/// The runtime the cluster clients of every table run on (two workers: the
/// machine's cores are shared with the node processes).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn main() {
    // `cargo bench` passes --bench; nothing else is accepted.
    let quick = std::env::var("SHARDBLK_BENCH_QUICK").is_ok();
    if std::env::var("SHARDBLK_BENCH_ONLY").is_ok_and(|v| v == "stage") {
        let dir = tempfile::tempdir().unwrap();
        stage_table(dir.path(), quick);
        return;
    }
    if std::env::var("SHARDBLK_BENCH_ONLY").is_ok_and(|v| v == "qd") {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime();
        qd_table(dir.path(), &rt, quick);
        return;
    }
    if std::env::var("SHARDBLK_BENCH_ONLY").is_ok_and(|v| v == "rebalance") {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime();
        rebalance_table(dir.path(), &rt, quick);
        return;
    }
    let span = if quick { 16 * MIB } else { 64 * MIB };
    let reads = if quick { 200 } else { 2000 };
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut data = vec![0u8; span as usize];
    rng.fill(&mut data[..]);

    // local: the engine's Volume API on a file-backed pool
    let lpath = dir.path().join("local.img");
    make_pool_file(&lpath, 1 << 30);
    let pool = Pool::init(
        &[TierSpec {
            name: "hot".into(),
            path: lpath.clone(),
        }],
        true,
    )
    .unwrap();
    let vol = pool
        .create_volume("bench", span, MIB, TierPolicy::default())
        .unwrap();
    let mut eng = pool.engine();
    let mut buf = AlignedBuf::new(MIB as usize);
    for (i, c) in data.chunks(MIB as usize).enumerate() {
        buf.copy_from_slice(c);
        vol.write(eng.as_mut(), i as u64 * MIB, &buf).unwrap();
    }
    vol.flush().unwrap();
    let offs: Vec<u64> = (0..reads)
        .map(|_| rng.random_range(0..span / 4096) * 4096)
        .collect();
    let mut small = AlignedBuf::new(4096);
    let l4 = lat(
        offs.iter()
            .map(|&o| {
                let t = Instant::now();
                vol.read(eng.as_mut(), o, &mut small).unwrap();
                t.elapsed()
            })
            .collect(),
        4096,
    );
    let l1m = lat(
        (0..span / MIB)
            .map(|i| {
                let t = Instant::now();
                vol.read(eng.as_mut(), i * MIB, &mut buf).unwrap();
                t.elapsed()
            })
            .collect(),
        MIB,
    );
    let w4 = lat(
        offs.iter()
            .take(200)
            .map(|&o| {
                let t = Instant::now();
                vol.write(eng.as_mut(), o, &small).unwrap();
                vol.flush().unwrap();
                t.elapsed()
            })
            .collect(),
        4096,
    );
    drop((vol, eng, pool));

    let (r4, r1m, rw1, rw2) = rt.block_on(async {
        let d1 = dir.path().join("one");
        std::fs::create_dir(&d1).unwrap();
        let nodes = cluster(&d1, 1);
        let mut c = client(&nodes, 1, span).await;
        for (i, ch) in data.chunks(MIB as usize).enumerate() {
            c.write(i as u64 * MIB, ch).await.unwrap();
        }
        let mut v = Vec::new();
        for &o in &offs {
            let t = Instant::now();
            let got = c.read(o, 4096).await.unwrap();
            v.push(t.elapsed());
            assert_eq!(got[..], data[o as usize..o as usize + 4096]);
        }
        let r4 = lat(v, 4096);
        let mut v = Vec::new();
        for i in 0..span / MIB {
            let t = Instant::now();
            c.read(i * MIB, MIB).await.unwrap();
            v.push(t.elapsed());
        }
        let r1m = lat(v, MIB);
        let mut v = Vec::new();
        for &o in offs.iter().take(200) {
            let t = Instant::now();
            c.write(o, &[7u8; 4096]).await.unwrap();
            v.push(t.elapsed());
        }
        let rw1 = lat(v, 4096);
        c.shutdown().await;
        drop(nodes);
        let d3 = dir.path().join("three");
        std::fs::create_dir(&d3).unwrap();
        let nodes = cluster(&d3, 3);
        let mut c = client(&nodes, 2, span).await;
        let mut v = Vec::new();
        for &o in offs.iter().take(200) {
            let t = Instant::now();
            c.write(o, &[9u8; 4096]).await.unwrap();
            v.push(t.elapsed());
        }
        c.shutdown().await;
        (r4, r1m, rw1, lat(v, 4096))
    });
    println!("| path | p50 µs | p99 µs | MB/s (serial) |");
    println!("| --- | --- | --- | --- |");
    row("local read 4 KiB random", &l4);
    row("remote read 4 KiB random (R=1)", &r4);
    row("local read 1 MiB sequential", &l1m);
    row("remote read 1 MiB sequential (R=1)", &r1m);
    row("local write 4 KiB + flush", &w4);
    row("remote write 4 KiB, R=1", &rw1);
    row("remote write 4 KiB, R=2 (3 nodes)", &rw2);

    println!();
    println!("| data written (R=2) | dead after | R restored after | shards copied | copy MB/s |");
    println!("| --- | --- | --- | --- | --- |");
    let sizes: &[u64] = if quick { &[4, 16] } else { &[16, 64, 256] };
    for &mib in sizes {
        let d = dir.path().join(format!("restore{mib}"));
        std::fs::create_dir(&d).unwrap();
        let size = mib * MIB;
        rt.block_on(async {
            let mut nodes = cluster(&d, 3);
            let mut c = client(&nodes, 2, size).await;
            let chunk = vec![0x5au8; MIB as usize];
            for i in 0..mib {
                c.write(i * MIB, &chunk).await.unwrap();
            }
            let shards: Vec<u64> = (0..size / CLUSTER_SHARD_BYTES).collect();
            let victim = 2;
            let lost = shards
                .iter()
                .filter(|&&s| c.replicas_of(s).contains(&format!("node{victim}")))
                .count();
            nodes[victim].kill();
            let t0 = Instant::now();
            while c.view().is_live(&format!("node{victim}")) {
                c.idle(Duration::from_millis(50)).await;
            }
            let dead = t0.elapsed();
            let before = c.repairs;
            assert!(
                c.settle(&shards, Duration::from_secs(600)).await,
                "R not restored"
            );
            let restored = t0.elapsed();
            let copied = c.repairs - before;
            let mb_s =
                (copied * CLUSTER_SHARD_BYTES) as f64 / (restored - dead).as_secs_f64() / 1e6;
            println!(
                "| {mib} MiB | {:.2} s | {:.2} s | {copied} of {lost} lost | {mb_s:.1} |",
                dead.as_secs_f64(),
                restored.as_secs_f64()
            );
            c.shutdown().await;
        });
    }
    rebalance_table(dir.path(), &rt, quick);
    let d = dir.path().join("qd");
    std::fs::create_dir(&d).unwrap();
    qd_table(&d, &rt, quick);
    let d = dir.path().join("stage");
    std::fs::create_dir(&d).unwrap();
    stage_table(&d, quick);
}
