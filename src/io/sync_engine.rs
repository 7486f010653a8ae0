//! [`SyncEngine`]: the reference [`IoEngine`], executing a batch with plain
//! blocking calls on any [`BlockDev`] (memory, fault-injecting or file
//! devices).
//!
//! Contract: ops run one after another in batch order, so a `Sync` op covers
//! every write before it in the batch (the same guarantee the io_uring engine
//! gives). Each op's result is that of the device call; an unknown device
//! index is an [`IoError::NoDevice`] for that op alone. The engine itself
//! never fails.

use super::{BlockDev, IoEngine, IoError, IoOp, IoResult, OpKind};
use std::sync::Arc;

pub struct SyncEngine {
    devs: Vec<Arc<dyn BlockDev>>,
}

impl SyncEngine {
    /// An engine over `devs`; [`super::DevIndex`] `i` names `devs[i]`.
    pub fn new(devs: Vec<Arc<dyn BlockDev>>) -> Self {
        SyncEngine { devs }
    }
    /// The devices, in [`super::DevIndex`] order.
    pub fn devices(&self) -> &[Arc<dyn BlockDev>] {
        &self.devs
    }
}

impl IoEngine for SyncEngine {
    fn run(&mut self, ops: &mut [IoOp<'_>]) -> IoResult<()> {
        for op in ops.iter_mut() {
            let Some(dev) = self.devs.get(op.dev.0 as usize) else {
                op.result = Err(IoError::NoDevice {
                    index: op.dev.0,
                    count: self.devs.len(),
                });
                continue;
            };
            op.result = match &mut op.kind {
                OpKind::Read(buf) => dev.read_at(buf, op.offset),
                OpKind::Write(buf) => dev.write_at(buf, op.offset),
                OpKind::Sync => dev.sync(),
            };
        }
        Ok(())
    }
}
