//! The control socket and admin endpoint as the daemon holds them: served on their own
//! threads, and kept as sockets so a binary upgrade can hand them over without a gap.

use crate::admin::AdminHandle;
use crate::control::{self, LoopHandle};
use crate::observe::SharedObserved;
use anyhow::Context;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub struct Planes {
    /// Our copy of the control socket (the serving thread has another).
    pub control: UnixListener,
    control_stop: Arc<AtomicBool>,
    pub admin: Option<AdminHandle>,
    admin_addr: Option<SocketAddr>,
    /// The admin socket's address as bound (a configured port 0 resolved), for status.
    admin_bound: Option<SocketAddr>,
    handle: LoopHandle,
    /// Sockets handed over by the daemon we replace, served once it lets go.
    inherited_admin: Option<TcpListener>,
    serving: bool,
    /// Control clients being served right now.
    control_clients: Arc<std::sync::atomic::AtomicUsize>,
}

impl Planes {
    pub fn new(
        control: UnixListener,
        inherited_admin: Option<TcpListener>,
        admin_addr: Option<SocketAddr>,
        handle: LoopHandle,
    ) -> Planes {
        let admin_bound = inherited_admin.as_ref().and_then(|s| s.local_addr().ok());
        Planes {
            control,
            control_stop: Arc::default(),
            admin: None,
            admin_addr,
            admin_bound,
            handle,
            inherited_admin,
            serving: false,
            control_clients: Arc::default(),
        }
    }

    /// Starts serving: on the inherited admin socket if there is one, else binding ours.
    pub fn start(&mut self, observed: &SharedObserved) -> anyhow::Result<()> {
        if self.serving {
            return Ok(());
        }
        self.serving = true;
        let control = self.control.try_clone().context("control socket")?;
        self.control_clients =
            control::spawn(control, observed.clone(), self.handle.clone(), Arc::clone(&self.control_stop))
                .context("control socket thread")?;
        self.admin = match (self.inherited_admin.take(), self.admin_addr) {
            (Some(socket), _) => {
                Some(crate::admin::spawn_inherited(socket, observed.clone()).context("admin endpoint")?)
            }
            (None, Some(addr)) => Some(crate::admin::spawn(addr, observed.clone())?),
            (None, None) => None,
        };
        if let Some(admin) = &self.admin {
            self.admin_bound = admin.socket.local_addr().ok();
        }
        Ok(())
    }

    /// The admin endpoint's address as bound, `None` when it is off.
    pub fn admin_bound(&self) -> Option<SocketAddr> {
        self.admin_bound
    }

    /// Gives replies in flight (e.g. the answer to `stop` or `upgrade`) a moment to reach
    /// their clients before the process exits.
    pub fn let_replies_finish(&self, within: std::time::Duration) {
        let deadline = std::time::Instant::now() + within;
        while self.control_clients.load(Ordering::Acquire) > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Stops serving both and closes the admin port (a graceful stop releasing what it
    /// bound before it answers `stop`).
    pub fn close(&mut self) {
        self.control_stop.store(true, Ordering::Release);
        if let Some(admin) = self.admin.take() {
            admin.close();
        }
    }

    /// Stops accepting on both (a successor serves them now).
    pub fn stop(&self) {
        self.control_stop.store(true, Ordering::Release);
        if let Some(admin) = &self.admin {
            admin.stop();
        }
    }
}
