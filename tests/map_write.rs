//! `Volume::map_write`, the asynchronous submitters' write path: overwrites
//! of mapped shards resolve to pieces with tickets; a range touching an
//! unmapped shard resolves to nothing (the caller uses `Volume::write`).

mod common;
use common::{mem_pool, MIB};
use crossbeam_epoch as epoch;
use shardblk::io::{AlignedBuf, BlockDev};
use shardblk::shard::policy::TierPolicy;

#[test]
fn overwrites_resolve_to_pieces_that_read_back() {
    let (pool, devs) = mem_pool(64 * MIB, 64 * MIB);
    let shard = 256 * 1024;
    pool.create_volume("v", 16 * MIB, shard, TierPolicy::default())
        .unwrap();
    let vol = pool.volume("v").unwrap();
    let mut eng = pool.engine();
    let len = 2 * shard; // spans three shards when started mid-shard
    let off = shard / 2;
    let guard = epoch::pin();
    let mut out: [Option<_>; 8] = Default::default();
    assert_eq!(vol.map_write(&guard, off, len, &mut out).unwrap(), None);
    assert!(out.iter().all(Option::is_none), "nothing held after None");
    // Map the first two shards only: still None (the third is unmapped).
    let mut first = AlignedBuf::new(2 * shard as usize);
    first.as_mut_slice().fill(1);
    vol.write(&mut *eng, 0, first.as_slice()).unwrap();
    assert_eq!(vol.map_write(&guard, off, len, &mut out).unwrap(), None);
    assert!(out.iter().all(Option::is_none));
    vol.write(&mut *eng, 2 * shard, &first.as_slice()[..shard as usize])
        .unwrap();
    // Too few slots: None, nothing held.
    assert_eq!(
        vol.map_write(&guard, off, len, &mut out[..2]).unwrap(),
        None
    );
    // Now all mapped: three pieces covering the range in order.
    let n = vol.map_write(&guard, off, len, &mut out).unwrap().unwrap();
    assert_eq!(n, 3);
    let mut data = AlignedBuf::new(len as usize);
    for (i, b) in data.as_mut_slice().iter_mut().enumerate() {
        *b = (i / 4096) as u8 ^ 0x5a;
    }
    let mut at = 0;
    for (p, _ticket) in out[..n].iter().flatten() {
        assert_eq!(p.buf_offset, at);
        at += p.len;
        let src = &data.as_slice()[p.buf_offset as usize..(p.buf_offset + p.len) as usize];
        devs[p.tier].write_at(src, p.device_byte_offset).unwrap();
    }
    assert_eq!(at, len);
    drop(out); // end the writes
    drop(guard);
    let mut back = AlignedBuf::new(len as usize);
    vol.read(&mut *eng, off, back.as_mut_slice()).unwrap();
    assert!(back.as_slice() == data.as_slice(), "overwrite reads back");
    let mut head = AlignedBuf::new(off as usize);
    vol.read(&mut *eng, 0, head.as_mut_slice()).unwrap();
    assert!(
        head.as_slice().iter().all(|&b| b == 1),
        "bytes before the range kept"
    );
}
