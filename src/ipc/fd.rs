//! Descriptors inside messages.
//!
//! A message names each descriptor it carries by a field of type [`Fd`]; on the wire
//! that field is the descriptor's index among the ones attached to the packet
//! (SCM_RIGHTS), as D-Bus's `UNIX_FD` type is. Encoding collects the attached
//! descriptors in field order and decoding takes each back by its index, so a message
//! owns its descriptors once received and nothing is picked out of a side list by
//! position.

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::cell::RefCell;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

/// A descriptor a message carries: lent by a sender that keeps its own (a listening
/// socket, a lane end), owned by the receiver.
#[derive(Debug)]
pub enum Fd<'a> {
    Lent(BorrowedFd<'a>),
    Owned(OwnedFd),
}

impl<'a> Fd<'a> {
    /// A descriptor sent without giving it up.
    pub fn lend(fd: &'a impl AsFd) -> Fd<'a> {
        Fd::Lent(fd.as_fd())
    }

    /// The received descriptor (a lent one, only ever met in-process, is duplicated).
    pub fn into_owned(self) -> std::io::Result<OwnedFd> {
        match self {
            Fd::Owned(fd) => Ok(fd),
            Fd::Lent(fd) => fd.try_clone_to_owned(),
        }
    }
}

impl AsFd for Fd<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Fd::Lent(fd) => fd.as_fd(),
            Fd::Owned(fd) => fd.as_fd(),
        }
    }
}

thread_local! {
    /// While a message is encoded: the descriptors its `Fd` fields named, in order.
    static OUTGOING: RefCell<Vec<RawFd>> = const { RefCell::new(Vec::new()) };
    /// While a message is decoded: the descriptors that came with it, each taken once.
    static INCOMING: RefCell<Vec<Option<OwnedFd>>> = const { RefCell::new(Vec::new()) };
}

impl Serialize for Fd<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let index = OUTGOING.with_borrow_mut(|fds| {
            fds.push(self.as_fd().as_raw_fd());
            fds.len() - 1
        });
        s.serialize_u64(index as u64)
    }
}

impl<'de> Deserialize<'de> for Fd<'_> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let index = u64::deserialize(d)? as usize;
        take_incoming(index)
            .map(Fd::Owned)
            .ok_or_else(|| D::Error::custom(format!("descriptor #{index} is not attached or named twice")))
    }
}

/// Appends `msg` as JSON to `buf`; returns the descriptors to attach, in index order.
/// They stay valid while `msg` (which borrows or owns them) does.
pub fn encode<T: Serialize>(msg: &T, buf: &mut Vec<u8>) -> serde_json::Result<Vec<RawFd>> {
    OUTGOING.with_borrow_mut(Vec::clear);
    let encoded = serde_json::to_writer(&mut *buf, msg);
    let fds = OUTGOING.with_borrow_mut(std::mem::take);
    encoded.map(|()| fds)
}

/// Decodes a message and hands it the descriptors that came with it. Descriptors it
/// does not name are closed and make the message a protocol error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], fds: Vec<OwnedFd>) -> Result<T, String> {
    let attached = fds.len();
    INCOMING.with_borrow_mut(|slots| *slots = fds.into_iter().map(Some).collect());
    let decoded = serde_json::from_slice::<T>(bytes);
    let unnamed = INCOMING.with_borrow_mut(|slots| std::mem::take(slots).into_iter().flatten().count());
    match decoded {
        Err(e) => Err(format!("bad message: {e}")),
        Ok(_) if unnamed > 0 => Err(format!("{unnamed} of {attached} attached descriptors named by no field")),
        Ok(msg) => Ok(msg),
    }
}

/// Takes descriptor `index` of the message being decoded, if it arrived.
pub(super) fn take_incoming(index: usize) -> Option<OwnedFd> {
    INCOMING.with_borrow_mut(|fds| fds.get_mut(index).and_then(Option::take))
}
