//! The io_uring backend (multishot recvmsg with a provided buffer ring, batched sends).
//! Not built yet: `new` reports it unavailable and the shard falls back to recvmmsg/sendmmsg.

use super::{ShardSockets, Waker};
use std::io;
use std::sync::Arc;

/// io_uring transport for one shard.
pub struct UringTransport;

impl UringTransport {
    /// Returns the sockets back with the reason when io_uring cannot be used.
    #[allow(clippy::result_large_err)]
    pub fn new(
        sockets: ShardSockets,
        _waker: Arc<Waker>,
    ) -> Result<super::mmsg::MmsgTransport, (ShardSockets, io::Error)> {
        Err((
            sockets,
            io::Error::new(io::ErrorKind::Unsupported, "io_uring backend not built yet"),
        ))
    }
}
