//! An in-memory [`BlockDev`]: the simplest correct device, used as the
//! reference in device tests and as the backing of the fault-injecting device.
//!
//! Contract: same alignment and range checks as a real `O_DIRECT` device;
//! `sync` is a no-op because memory is the durable medium of this fake. A
//! "crash" is modelled by [`super::fault::FaultDev`], not here.

use super::{check_transfer, BlockDev, IoResult};
use std::sync::RwLock;

pub struct MemDev {
    name: String,
    data: RwLock<Vec<u8>>,
}

impl MemDev {
    pub fn new(name: &str, size_bytes: u64) -> Self {
        MemDev { name: name.to_string(), data: RwLock::new(vec![0; size_bytes as usize]) }
    }
    /// A copy of the whole device contents (for crash images in tests).
    pub fn snapshot(&self) -> Vec<u8> {
        self.data.read().expect("memdev lock").clone()
    }
    /// A device whose contents are `image`.
    pub fn from_image(name: &str, image: Vec<u8>) -> Self {
        MemDev { name: name.to_string(), data: RwLock::new(image) }
    }
}

impl BlockDev for MemDev {
    fn size_bytes(&self) -> u64 {
        self.data.read().expect("memdev lock").len() as u64
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> IoResult<()> {
        let data = self.data.read().expect("memdev lock");
        check_transfer(buf.as_ptr(), buf.len(), offset, data.len() as u64)?;
        let o = offset as usize;
        buf.copy_from_slice(&data[o..o + buf.len()]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> IoResult<()> {
        let mut data = self.data.write().expect("memdev lock");
        check_transfer(buf.as_ptr(), buf.len(), offset, data.len() as u64)?;
        let o = offset as usize;
        data[o..o + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn sync(&self) -> IoResult<()> {
        Ok(())
    }
}
