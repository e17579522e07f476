//! The event loop every role (daemon, listener, manager, worker) and the admin server
//! runs: one `mio::Poll`, the tokens of what it watches, and a wait that ends at the
//! loop's earliest deadline.
//!
//! A loop watches its fixed sources first ([`EventLoop::watch`]), each under the next
//! token, then hands the rest of the token space to its dynamic sources in one of two
//! shapes: [`Tokens`], each used once (child channels: a late event for a process gone
//! never reaches its successor), or [`IndexTokens`], one per [`Slab`] index
//! (connections: token to index is one subtraction). Each turn the loop says when it
//! must wake ([`Wake`]), [`EventLoop::wait`]s, and takes the ready sources one at a time
//! ([`EventLoop::next_ready`]), so their handlers may borrow the loop's owner mutably.
//! A loop that runs short of descriptors pauses taking connections ([`IntakePause`]).

mod intake_pause;
mod slab;
mod tokens;

pub use intake_pause::IntakePause;
pub use slab::Slab;
pub use tokens::{IndexTokens, Tokens};

use crate::sys::retry_eintr;
use mio::event::Source;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// A deadline already past still waits this long: what is due is acted on after the
/// wait, and one its owner cannot act on yet must not spin the loop.
const OVERDUE_WAIT: Duration = Duration::from_millis(1);

/// When a loop's next wait ends: at once, at the earliest of its deadlines, or when a
/// source is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Only look for events: work is waiting for its next turn.
    Now,
    At(Instant),
    Never,
}

impl Wake {
    /// The earlier of this and `deadline`.
    pub fn or_at(self, deadline: Instant) -> Wake {
        match self {
            Wake::Now => Wake::Now,
            Wake::At(t) => Wake::At(t.min(deadline)),
            Wake::Never => Wake::At(deadline),
        }
    }

    /// The earliest of this and every one of `deadlines` (an `Option` counts as none or one).
    pub fn or_at_any(self, deadlines: impl IntoIterator<Item = Instant>) -> Wake {
        deadlines.into_iter().fold(self, Wake::or_at)
    }

    /// How long a wait that starts at `now` may last (`None`: no limit).
    fn timeout(self, now: Instant) -> Option<Duration> {
        match self {
            Wake::Now => Some(Duration::ZERO),
            Wake::At(t) => Some(t.saturating_duration_since(now).max(OVERDUE_WAIT)),
            Wake::Never => None,
        }
    }
}

/// A source that is ready, as `wait` found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ready {
    pub token: Token,
    pub writable: bool,
}

/// A poll, its event buffer and the allocation of its tokens.
pub struct EventLoop {
    poll: Poll,
    events: Events,
    /// The last wait's events, copied so that handlers need no borrow of `events`.
    ready: Vec<Ready>,
    next_ready: usize,
    next_token: usize,
    /// The rest of the token space went to a `Tokens` or `IndexTokens`.
    rest_given: bool,
}

impl EventLoop {
    /// A loop taking up to `capacity` events per wait.
    pub fn new(capacity: usize) -> io::Result<EventLoop> {
        Ok(EventLoop {
            poll: Poll::new()?,
            events: Events::with_capacity(capacity),
            ready: Vec::with_capacity(capacity),
            next_ready: 0,
            next_token: 0,
            rest_given: false,
        })
    }

    pub fn registry(&self) -> &Registry {
        self.poll.registry()
    }

    /// A token for a fixed source registered later (or a waker).
    pub fn reserve_token(&mut self) -> Token {
        assert!(!self.rest_given, "a loop reserves its fixed tokens before it hands out the rest");
        self.next_token += 1;
        Token(self.next_token - 1)
    }

    /// Watches a fixed descriptor under a token of its own.
    pub fn watch(&mut self, fd: RawFd, interest: Interest) -> io::Result<Token> {
        self.watch_source(&mut SourceFd(&fd), interest)
    }

    pub fn watch_source(&mut self, source: &mut impl Source, interest: Interest) -> io::Result<Token> {
        let token = self.reserve_token();
        self.registry().register(source, token, interest)?;
        Ok(token)
    }

    /// A waker that makes `wait` return, and the token its wake-ups come with.
    pub fn waker(&mut self) -> io::Result<(Token, Waker)> {
        let token = self.reserve_token();
        Ok((token, Waker::new(self.registry(), token)?))
    }

    /// The rest of the token space, each token handed out once.
    pub fn once_only_tokens(&mut self) -> Tokens {
        Tokens::starting_at(self.give_rest())
    }

    /// The rest of the token space, one token per slab index.
    pub fn index_tokens(&mut self) -> IndexTokens {
        IndexTokens::starting_at(self.give_rest())
    }

    fn give_rest(&mut self) -> usize {
        assert!(!self.rest_given, "a loop hands out the rest of its tokens once");
        self.rest_given = true;
        self.next_token
    }

    /// Waits for events until `wake`, retrying EINTR with what is left of the wait (a
    /// signal, or a SIGCONT after a stop, must not put off an overdue heartbeat).
    pub fn wait(&mut self, wake: Wake) -> io::Result<()> {
        let (poll, events) = (&mut self.poll, &mut self.events);
        retry_eintr(|| poll.poll(events, wake.timeout(Instant::now())))?;
        self.ready.clear();
        self.ready.extend(events.iter().map(|e| Ready { token: e.token(), writable: e.is_writable() }));
        self.next_ready = 0;
        Ok(())
    }

    /// The next source the last wait found ready.
    pub fn next_ready(&mut self) -> Option<Ready> {
        let ready = self.ready.get(self.next_ready).copied()?;
        self.next_ready += 1;
        Some(ready)
    }

    /// Whether the last wait found `token` ready.
    pub fn is_ready(&self, token: Token) -> bool {
        self.ready.iter().any(|r| r.token == token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wake_is_the_earliest_deadline_and_now_wins() {
        let t0 = Instant::now();
        let (t1, t2) = (t0 + Duration::from_millis(5), t0 + Duration::from_millis(9));
        assert_eq!(Wake::Never.or_at(t2).or_at_any([t1]), Wake::At(t1));
        assert_eq!(Wake::At(t1).or_at_any(None), Wake::At(t1));
        assert_eq!(Wake::Now.or_at(t1), Wake::Now);
        assert_eq!(Wake::At(t0).timeout(t1), Some(OVERDUE_WAIT));
        assert_eq!(Wake::At(t2).timeout(t1), Some(Duration::from_millis(4)));
        assert_eq!(Wake::Never.timeout(t0), None);
    }

    #[test]
    fn fixed_tokens_come_first_and_the_rest_follows_them() -> io::Result<()> {
        let mut event_loop = EventLoop::new(8)?;
        let (a, b) = (event_loop.reserve_token(), event_loop.reserve_token());
        let conns = event_loop.index_tokens();
        assert_eq!((a, b), (Token(0), Token(1)));
        assert_eq!(conns.index(conns.token(3)), Some(3));
        assert_eq!(conns.index(b), None);
        Ok(())
    }

    #[test]
    fn a_waker_wakes_the_wait_and_is_ready_once() -> io::Result<()> {
        let mut event_loop = EventLoop::new(8)?;
        let (token, waker) = event_loop.waker()?;
        waker.wake()?;
        event_loop.wait(Wake::At(Instant::now() + Duration::from_secs(5)))?;
        assert!(event_loop.is_ready(token));
        assert_eq!(event_loop.next_ready(), Some(Ready { token, writable: false }));
        assert_eq!(event_loop.next_ready(), None);
        Ok(())
    }
}
