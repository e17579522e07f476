//! The daemon: root of the process tree and supervisor of the listener and manager.
//!
//! It binds the listening sockets (or adopts socket-activated ones, `sockets`), creates the lanes (listener→worker, one per worker
//! slot) and the steering channel (manager→listener), holding both ends of each forever
//! so queued connections outlive any crash, and the lifeline pipe, then starts each role by fork+exec and watches it: heartbeats are
//! checked every 200 ms, three misses make a hang, an exit (SIGCHLD) is acted on at
//! once, and restarts back off as `supervise` defines. Under systemd it keeps all of that
//! in the fd store (`fdstore`), so a daemon that is killed comes back holding the same.

mod commands;
mod fdstore;
mod planes;
mod publish;
mod reload;
mod roles;
mod sockets;
mod systemd;
mod tickets;
mod upgrade;

use crate::config::{AccessLogTarget, Config};
use crate::control::{self, CommandRequest, LoopHandle};
use crate::event_loop::{EventLoop, Tokens, Wake};
use crate::figures::Accumulator;
use crate::ipc::{Fd, ToListener, ToManager};
use crate::observe::SharedObserved;
use crate::signals::{Event, Signals};
use crate::supervise::CHECK_INTERVAL;
use crate::sys::{self, process::Exit, Pid};
use anyhow::Context;
use mio::unix::SourceFd;
use mio::{Interest, Token};
use roles::{RetireTimes, RoleEvent, RoleProcess};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// The daemon's fixed event sources; children's channels get `Daemon::tokens`.
struct Sources {
    signals: Token,
    /// The control and admin threads' waker: commands are queued.
    commands: Token,
    /// The other daemon of a binary upgrade (registered while there is one).
    upgrade: Token,
}

/// The daemon's overall state, as status shows it.
pub use webd_proto::DaemonState as State;

/// A start-up refusal that exits 2 (see `main`).
pub use sockets::UsageError;

/// Everything a child is started with that the daemon keeps for its whole life.
pub struct Inheritance {
    pub config: Config,
    pub exe: std::path::PathBuf,
    pub listen: Vec<OwnedFd>,
    /// The `tls_listen` sockets, in its order.
    pub tls_listen: Vec<OwnedFd>,
    /// The certificates, as last loaded (at start or by a reload).
    pub tls: crate::tls::TlsMaterial,
    /// The session-ticket keys every worker shares (rotated by `tickets`).
    pub tickets: crate::tls::tickets::TicketKeys,
    /// The first `tls_listen` socket's port as bound, for `redirect_to_https`.
    pub https_port: Option<u16>,
    /// Steering channel: (listener's receiving end, manager's sending end).
    pub steering: (OwnedFd, OwnedFd),
    /// One lane per worker slot id: (listener's sending end, worker's receiving end).
    /// Only ever grows, so every slot a pool may use has one.
    pub lanes: Vec<(OwnedFd, OwnedFd)>,
    pub lifeline_read: OwnedFd,
    /// Held, never written: its close at our exit is the children's signal.
    pub _lifeline_write: OwnedFd,
    /// `--user`: the identity of the listener, manager and workers.
    pub credentials: Option<sys::spawn::Credentials>,
    /// The access log file (opened here, so a root-owned log directory works with
    /// `--user`); `None` when off or on stderr.
    pub access_log: Option<OwnedFd>,
}

/// Opens the access log for appending; `-` (stderr) and off need no file.
fn open_access_log(config: &Config) -> anyhow::Result<Option<OwnedFd>> {
    use std::os::unix::fs::OpenOptionsExt;
    let AccessLogTarget::File(path) = &config.access_log else { return Ok(None) };
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("cannot open access log {}", path.display()))?;
    Ok(Some(OwnedFd::from(file)))
}

struct Daemon {
    event_loop: EventLoop,
    sources: Sources,
    signals: Signals,
    inherit: Inheritance,
    listener: RoleProcess<roles::Listener>,
    manager: RoleProcess<roles::Manager>,
    /// Poll tokens for the children's channels.
    tokens: Tokens,
    state: State,
    stop_deadline: Option<Instant>,
    next_check: Instant,
    started: Instant,
    /// The command line, for re-reading the config file on SIGHUP (flags still win).
    cli: crate::config::Cli,
    commands: mpsc::Receiver<CommandRequest>,
    /// Replies owed to control clients, answered when their effect is real.
    pending: Vec<commands::PendingReply>,
    observed: SharedObserved,
    /// Monotonic totals of every child's reports, over what the daemon we replaced
    /// counted.
    totals: Accumulator,
    systemd: systemd::Systemd,
    planes: planes::Planes,
    upgrade: upgrade::Upgrade,
    /// A successor owns the control socket now: leave its file alone at exit.
    handed_over: bool,
    /// The successor of an upgrade reads our lanes: our workers hand connections to it.
    lanes_shared: bool,
    /// `webctl stop` clients, answered once the sockets are released.
    stop_replies: Vec<std::sync::mpsc::SyncSender<webd_proto::Response>>,
    /// Binary upgrades this tree descends from.
    upgrades: u64,
    /// Our command line, for starting a successor.
    argv0: String,
    args: Vec<std::ffi::OsString>,
    /// In a graceful stop, the manager's shutdown deadline, sent once the listener is gone.
    manager_stop_pending: Option<u64>,
    /// systemd's fd store: what a daemon after us adopts if we are killed.
    fd_store: fdstore::FdStore,
    /// Daemon incarnations before us that systemd restarted from the fd store.
    daemon_restarts: u64,
    /// The addresses the listening sockets are bound to (a configured port 0 resolved),
    /// for status and the log: read once, and still known once a stop has closed them.
    listen_bound: Vec<std::net::SocketAddr>,
    tls_listen_bound: Vec<std::net::SocketAddr>,
    /// Ticket-key rotations a test asked for (fault file) and made.
    forced_rotations: tickets::ForcedRotations,
}

/// Runs the daemon until a graceful stop completes.
pub fn run(config: Config, cli: crate::config::Cli, tls: crate::tls::TlsMaterial) -> anyhow::Result<()> {
    // First, before any thread or child: it clears LISTEN_* from our environment.
    let inherited = sockets::take_activated()?;
    let mut stored = fdstore::Adopted::sort(inherited.stored);
    let (tls_activated, activated): (Vec<_>, Vec<_>) =
        inherited.activated.into_iter().partition(|a| a.name == sockets::HTTPS_NAME);
    // A socket unit's sockets are systemd's already: the fd store must not hold them twice.
    let unit_sockets: Vec<std::net::SocketAddr> = activated.iter().chain(&tls_activated).map(|a| a.addr).collect();
    let mut successor_channel = None;
    let mut argv = std::env::args_os();
    let argv0 = argv.next().map(|a| a.to_string_lossy().into_owned()).unwrap_or_else(|| "webd".into());
    let args: Vec<std::ffi::OsString> = argv.collect();
    let credentials = match &config.user {
        Some(name) => {
            anyhow::ensure!(nix::unistd::geteuid().is_root(), "--user {name} needs webd to start as root");
            Some(sys::spawn::Credentials::for_user(name)?)
        }
        None => None,
    };
    let access_log = open_access_log(&config)?;
    let mut handoff = upgrade::receive_handoff()?;
    let handed_lanes = handoff.as_mut().map(|h| std::mem::take(&mut h.lanes)).unwrap_or_default();
    // An upgrade's predecessor hands its keys over; a crashed one left them in the store.
    let stored_keys = stored.state.as_ref().and_then(|(_, state)| state.tickets.clone());
    let ticket_keys = tickets::initial(handoff.as_mut().and_then(|h| h.tickets.take()).or(stored_keys))?;
    let tls_addrs = config.tls_listen.clone().unwrap_or_default();
    let (listen, tls_listen, inherited_control, inherited_admin, carried) = match handoff {
        Some(inherited)
            if !sockets::serve_addresses(&inherited.listen, &config.listen)
                || !sockets::serve_addresses(&inherited.tls_listen, &tls_addrs) =>
        {
            anyhow::bail!(
                "the old daemon's listening sockets are not the addresses this configuration listens on \
                 ({:?}, TLS {:?}): changing listen or tls_listen needs a restart",
                config.listen,
                tls_addrs
            )
        }
        Some(inherited) => {
            tracing::info!(upgrades = inherited.totals.upgrades, "upgrade: took the sockets from the old daemon");
            let control = Some(std::os::unix::net::UnixListener::from(inherited.control));
            let admin = inherited.admin.map(std::net::TcpListener::from);
            successor_channel = Some(inherited.channel);
            (inherited.listen, inherited.tls_listen, control, admin, inherited.totals)
        }
        None => {
            let listen = sockets::adopted(std::mem::take(&mut stored.listen), &config.listen, activated)?;
            let tls = sockets::adopted(std::mem::take(&mut stored.tls_listen), &tls_addrs, tls_activated)?;
            let carried = match &stored.state {
                Some((_, fdstore::State { totals, .. })) => {
                    tracing::warn!(
                        lanes = stored.lanes.len(),
                        requests = totals.figures.responses.total(),
                        restarts = totals.daemon_restarts + 1,
                        "fd store: the previous daemon died; adopting its sockets, lanes and counters"
                    );
                    crate::observe::CarriedTotals { daemon_restarts: totals.daemon_restarts + 1, ..totals.clone() }
                }
                None => Default::default(),
            };
            (
                sockets::activated_or_bound(&config.listen, listen, sockets::HTTP_NAME)?,
                sockets::activated_or_bound(&tls_addrs, tls, sockets::HTTPS_NAME)?,
                None,
                None,
                carried,
            )
        }
    };
    let steering = match stored.steering.take() {
        Some(steering) => steering,
        None => sys::seqpacket_pair().context("steering channel")?,
    };
    // The lanes an upgrade's predecessor reads too (its workers hand connections over
    // through them), else those systemd kept from a crashed daemon, else new ones.
    let mut lanes = match handed_lanes {
        handed if !handed.is_empty() => handed,
        _ => std::mem::take(&mut stored.lanes),
    };
    grow_lanes(&mut lanes, config.workers).context("worker lanes")?;
    let fd_store = fdstore::FdStore::from_env(stored.state.take().map(|(file, _)| file), unit_sockets);
    let (lifeline_read, lifeline_write) = sys::process::lifeline().context("lifeline pipe")?;
    sys::process::become_subreaper().context("PR_SET_CHILD_SUBREAPER")?;
    let fd_limit = sys::process::raise_fd_limit();
    let signals = Signals::install(&[Event::Stop, Event::Reload, Event::Child, Event::ReopenLogs, Event::Upgrade])
        .context("signal handlers")?;
    let exe = std::env::current_exe().context("locating our own executable")?;
    let mut event_loop = EventLoop::new(64).context("epoll")?;
    let signals_token = event_loop.watch(signals_fd(&signals), Interest::READABLE)?;
    // Everything that can fail at start is bound before any child exists, so a refusal
    // leaves no half-started tree. A successor serves the sockets it was handed only
    // once the old daemon lets go of them.
    let control_listener = match inherited_control {
        Some(control) => control,
        None => control::bind(&config.control_socket)?,
    };
    let observed = SharedObserved::default();
    let (command_tx, command_rx) = mpsc::channel();
    let (commands_token, waker) = event_loop.waker().context("waker")?;
    let handle = LoopHandle { commands: command_tx, waker: Arc::new(waker) };
    let sources = Sources { signals: signals_token, commands: commands_token, upgrade: event_loop.reserve_token() };
    let mut planes = planes::Planes::new(control_listener, inherited_admin, config.admin.addr(), handle);
    let upgrade = match successor_channel {
        Some(channel) => {
            event_loop.registry().register(&mut SourceFd(&channel.raw_fd()), sources.upgrade, Interest::READABLE)?;
            upgrade::Upgrade::Successor { channel, ready_sent: false }
        }
        None => {
            planes.start(&observed)?;
            upgrade::Upgrade::Idle
        }
    };
    let now = Instant::now();
    let listen_bound = sockets::local_addrs(&listen);
    let tls_listen_bound = sockets::local_addrs(&tls_listen);
    let joined = |addrs: &[std::net::SocketAddr]| addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(" ");
    tracing::info!(
        pid = std::process::id(),
        listen = %joined(&listen_bound),
        tls_listen = %joined(&tls_listen_bound),
        certificates = tls.certificates.len(),
        root = %config.root.display(),
        workers = config.workers,
        fd_limit,
        version = crate::VERSION,
        "webd starting"
    );
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let tokens = event_loop.once_only_tokens();
    let mut daemon = Daemon {
        event_loop,
        sources,
        signals,
        inherit: Inheritance {
            config,
            exe,
            listen,
            tls_listen,
            tls,
            tickets: ticket_keys,
            https_port: tls_listen_bound.first().map(std::net::SocketAddr::port),
            steering,
            lanes,
            lifeline_read,
            _lifeline_write: lifeline_write,
            credentials,
            access_log,
        },
        listener: RoleProcess::new(now),
        manager: RoleProcess::new(now),
        tokens,
        state: State::Running,
        stop_deadline: None,
        next_check: now + CHECK_INTERVAL,
        started: now,
        cli,
        commands: command_rx,
        pending: Vec::new(),
        observed,
        totals: Accumulator::default(),
        systemd: systemd::Systemd::from_env(now),
        planes,
        upgrade,
        handed_over: false,
        lanes_shared: false,
        stop_replies: Vec::new(),
        upgrades: 0,
        argv0,
        args,
        manager_stop_pending: None,
        fd_store,
        daemon_restarts: 0,
        listen_bound,
        tls_listen_bound,
        forced_rotations: tickets::ForcedRotations { file: crate::fault::file(), done: 0 },
    };
    daemon.continue_from(carried);
    if matches!(daemon.upgrade, upgrade::Upgrade::Idle) {
        daemon.store_descriptors();
    }
    let result = daemon.run_loop();
    if !daemon.handed_over {
        control::remove_own_socket(&daemon.inherit.config.control_socket);
    }
    result
}

fn signals_fd(signals: &Signals) -> i32 {
    use std::os::fd::AsFd;
    signals.as_fd().as_raw_fd()
}

impl Daemon {
    fn run_loop(&mut self) -> anyhow::Result<()> {
        loop {
            let now = Instant::now();
            self.start_due_roles(now);
            if self.state == State::Stopping && self.stop_finished(now) {
                self.publish(Instant::now());
                self.send_final_totals();
                self.release_sockets();
                for reply in self.stop_replies.drain(..) {
                    let _ = reply.try_send(webd_proto::Response::ok("stopped"));
                }
                self.planes.let_replies_finish(Duration::from_millis(500));
                tracing::info!(uptime_s = self.started.elapsed().as_secs(), "webd stopped");
                return Ok(());
            }
            self.stop_manager_after_listener();
            self.systemd.tick(now);
            self.event_loop.wait(self.next_wakeup()).context("epoll_wait")?;
            let mut role_events = Vec::new();
            while let Some(ready) = self.event_loop.next_ready() {
                match ready.token {
                    token if token == self.sources.signals => self.handle_signals(&mut role_events),
                    token if token == self.sources.commands => self.take_commands(),
                    token if token == self.sources.upgrade => self.upgrade_readable(),
                    token if self.listener.owns(token) => {
                        let grace = self.inherit.config.grace.duration();
                        let times = RetireTimes { deadline: grace, kill_after: grace };
                        self.listener.readable(token, times, &mut role_events);
                    }
                    token if self.manager.owns(token) => {
                        // The old manager's workers get the drain timeout to finish.
                        let drain = self.inherit.config.drain_timeout.duration();
                        let times =
                            RetireTimes { deadline: drain, kill_after: drain + self.inherit.config.grace.duration() };
                        self.manager.readable(token, times, &mut role_events);
                    }
                    _ => {}
                }
            }
            let now = Instant::now();
            if now >= self.next_check {
                self.next_check = now + CHECK_INTERVAL;
                self.check_heartbeats(now);
                self.rotate_ticket_keys_when_due();
            }
            self.listener.sup.kill_overdue(now);
            self.manager.sup.kill_overdue(now);
            self.check_upgrade_deadline(now);
            // Once per pass, after everything that changed state: status must show a
            // command's effect before its reply goes out.
            if self.publish(now) {
                self.systemd.ready();
                self.announce_ready();
            }
            self.settle_replies(role_events);
        }
    }

    fn next_wakeup(&self) -> Wake {
        Wake::At(self.next_check)
            .or_at_any(self.listener.sup.deadlines().chain(self.manager.sup.deadlines()))
            .or_at_any(
                self.stop_deadline.into_iter().chain(self.systemd.next_deadline()).chain(self.upgrade_deadline()),
            )
    }

    fn start_due_roles(&mut self, now: Instant) {
        if self.state == State::Stopping {
            return;
        }
        let draining = self.state == State::Draining;
        let due = |slot: &crate::supervise::Slot| slot.start_due.is_some_and(|due| due <= now);
        if due(self.listener.slot()) {
            self.listener.start(&self.inherit, self.event_loop.registry(), &mut self.tokens, draining, now);
        }
        if due(self.manager.slot()) {
            self.manager.start(&self.inherit, self.event_loop.registry(), &mut self.tokens, draining, now);
        }
    }

    fn handle_signals(&mut self, role_events: &mut Vec<RoleEvent>) {
        for event in self.signals.pending() {
            match event {
                Event::Child => self.reap_children(role_events),
                Event::Stop => self.begin_stop("signal"),
                Event::Reload => self.reload(),
                Event::ReopenLogs => self.reopen_access_log(),
                Event::Upgrade => {
                    if let Some(refused) = self.start_upgrade(None, None) {
                        tracing::error!(
                            reason = refused.error.as_deref().unwrap_or_default(),
                            "SIGUSR2: upgrade not started"
                        );
                    }
                }
            }
        }
    }

    /// SIGHUP: re-reads the configuration and applies what can change live (workers,
    /// root, timeouts, access log, certificates) with a rolling worker restart. A
    /// configuration that does not load is refused and the running one kept.
    fn reload(&mut self) {
        match self.reloaded_config() {
            Ok(config) => {
                tracing::info!(workers = config.workers, root = %config.root.display(), "SIGHUP: configuration reloaded; rolling worker restart");
                self.manager.send(&ToManager::Reconfigure(Box::new(config)));
            }
            Err(ReloadRefused::Config(e)) => {
                tracing::error!(error = %e, "SIGHUP: configuration refused; keeping the running one")
            }
            Err(ReloadRefused::Certificates(e)) => {
                tracing::error!(error = %e, "SIGHUP: certificates refused; keeping the running configuration")
            }
            Err(ReloadRefused::Lanes(e)) => {
                tracing::error!(error = %e, "SIGHUP: cannot make lanes for the new workers; keeping the pool size")
            }
        }
    }

    /// Reads the configuration and certificates again and takes in what can change live;
    /// returns the configuration the workers are to be restarted with, or why nothing
    /// changed.
    pub(super) fn reloaded_config(&mut self) -> Result<Config, ReloadRefused> {
        let (new, overridden) =
            Config::load_noting_overrides(&self.cli).map_err(|e| ReloadRefused::Config(e.to_string()))?;
        for key in overridden {
            tracing::warn!(key, "reload: the file's value is overridden by a command-line flag");
        }
        let config = reload::apply_live(&self.inherit.config, new);
        for warning in config.warnings() {
            tracing::warn!("reload: {warning}");
        }
        // Certificates are re-read even when their paths did not change: that is how a
        // renewed certificate is taken. A bad file keeps the running ones.
        let tls = crate::tls::TlsMaterial::load(&config).map_err(|e| ReloadRefused::Certificates(e.to_string()))?;
        self.ensure_lanes(config.workers).map_err(|e| ReloadRefused::Lanes(format!("{e:#}")))?;
        let log_changed = config.access_log != self.inherit.config.access_log;
        self.inherit.config = config.clone();
        if log_changed {
            self.reopen_access_log();
        }
        if tls != self.inherit.tls {
            self.manager.send(&ToManager::Tls(Box::new(tls.clone())));
            self.inherit.tls = tls;
        }
        Ok(config)
    }

    /// Makes sure slots `0..workers` have lanes; new ones go to the listener and manager.
    pub(super) fn ensure_lanes(&mut self, workers: u32) -> anyhow::Result<()> {
        let first = self.inherit.lanes.len();
        grow_lanes(&mut self.inherit.lanes, workers)?;
        if self.inherit.lanes.len() > first {
            self.fd_store.store_lanes(&self.inherit.lanes, first);
            self.listener.send_lanes(&self.inherit.lanes, first);
            self.manager.send_lanes(&self.inherit.lanes, first);
        }
        Ok(())
    }

    /// SIGUSR1 (logrotate) or a reload naming another file: open the access log anew
    /// and hand the new file to the manager, which passes it to every worker.
    fn reopen_access_log(&mut self) {
        match open_access_log(&self.inherit.config) {
            Ok(Some(fd)) => {
                self.manager.send(&ToManager::ReopenLog(Fd::lend(&fd)));
                self.inherit.access_log = Some(fd);
                tracing::info!("access log reopened");
            }
            Ok(None) => self.inherit.access_log = None,
            Err(e) => tracing::error!(error = %format!("{e:#}"), "cannot reopen the access log; keeping the old file"),
        }
    }

    fn reap_children(&mut self, role_events: &mut Vec<RoleEvent>) {
        let now = Instant::now();
        for (pid, exit) in sys::process::reap_exited() {
            let stopping = self.state == State::Stopping;
            let registry = self.event_loop.registry();
            if !self.listener.on_exit(pid, exit, stopping, registry, now, role_events)
                && !self.manager.on_exit(pid, exit, stopping, registry, now, role_events)
                && !self.upgrade_child_exited(pid, exit)
            {
                log_orphan_exit(pid, exit);
            }
        }
    }

    fn check_heartbeats(&mut self, now: Instant) {
        if self.state == State::Stopping {
            return;
        }
        let timeout = self.inherit.config.heartbeat_timeout.duration();
        let grace = self.inherit.config.grace.duration();
        self.listener.check(now, timeout, grace);
        self.manager.check(now, timeout, grace);
    }

    /// Graceful stop: children finish in-flight work within the grace period.
    pub(crate) fn begin_stop(&mut self, why: &str) {
        let grace = self.inherit.config.grace.duration();
        self.begin_stop_with(why, grace);
    }

    /// Graceful stop giving workers `finish_within` for their connections. The listener
    /// stops first; the manager is told once the listener is gone, so it can hand every
    /// connection still queued to a worker before it retires them.
    pub(crate) fn begin_stop_with(&mut self, why: &str, finish_within: Duration) {
        if self.state == State::Stopping {
            return;
        }
        tracing::info!(why, finish_within_ms = finish_within.as_millis() as u64, "graceful stop");
        self.systemd.stopping();
        self.state = State::Stopping;
        let now = Instant::now();
        self.stop_deadline = Some(now + finish_within + self.inherit.config.grace.duration());
        let deadline_ms = finish_within.as_millis() as u64;
        self.listener.sup.slot.start_due = None;
        self.manager.sup.slot.start_due = None;
        self.listener.send(&ToListener::Shutdown { deadline_ms });
        self.manager_stop_pending = Some(deadline_ms);
    }

    /// Closes the listening sockets, the admin endpoint and the control socket's path
    /// before `stop` is answered, so `webctl stop && webd …` can bind them at once.
    fn release_sockets(&mut self) {
        self.inherit.listen.clear();
        self.inherit.tls_listen.clear();
        if self.handed_over {
            self.planes.stop();
        } else {
            self.planes.close();
            control::remove_own_socket(&self.inherit.config.control_socket);
        }
    }

    fn stop_manager_after_listener(&mut self) {
        if self.listener.sup.has_processes() {
            return;
        }
        if let Some(deadline_ms) = self.manager_stop_pending.take() {
            let hand_over = self.handed_over && self.lanes_shared;
            self.manager.send(&ToManager::Shutdown { deadline_ms, hand_over });
        }
    }

    /// Counts what the daemon we replaced had counted as a base under our own totals
    /// (replaced by fresher figures as the old daemon sends them).
    fn continue_from(&mut self, carried: crate::observe::CarriedTotals) {
        self.upgrades = carried.upgrades;
        self.daemon_restarts = carried.daemon_restarts;
        self.totals.set_base(carried.figures);
    }

    /// Hands systemd's fd store what a daemon after us needs (no-op outside systemd).
    pub(super) fn store_descriptors(&mut self) {
        let i = &self.inherit;
        self.fd_store.store_all(&i.listen, &i.tls_listen, &i.lanes, &i.steering);
        let state = self.stored_state();
        self.fd_store.keep_state(|| state);
    }

    /// What a daemon restarted from the fd store continues from.
    fn stored_state(&mut self) -> fdstore::State {
        let figures = self.figures();
        self.state_with(figures)
    }

    /// The stored state with `figures` as the counters.
    fn state_with(&self, figures: crate::figures::Figures) -> fdstore::State {
        let totals =
            crate::observe::CarriedTotals { upgrades: self.upgrades, figures, daemon_restarts: self.daemon_restarts };
        fdstore::State { totals, tickets: Some(self.inherit.tickets.clone()) }
    }

    /// True once every child is gone; past the grace deadline, kills what is left.
    fn stop_finished(&mut self, now: Instant) -> bool {
        let alive = self.listener.sup.has_processes() || self.manager.sup.has_processes();
        if !alive {
            return true;
        }
        if self.stop_deadline.is_some_and(|t| now >= t) {
            tracing::warn!("grace period over: killing remaining children");
            self.listener.kill_all();
            self.manager.kill_all();
            // Workers of the manager are also killed by the lifeline closing when we
            // exit; wait briefly so they are reaped rather than left to init.
            let until = now + Duration::from_millis(500);
            while (self.listener.sup.has_processes() || self.manager.sup.has_processes()) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
                self.reap_children(&mut Vec::new());
            }
            return true;
        }
        false
    }
}

/// Why a reload changed nothing.
#[derive(Debug)]
pub(super) enum ReloadRefused {
    Config(String),
    Certificates(String),
    Lanes(String),
}

impl std::fmt::Display for ReloadRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadRefused::Config(e) => write!(f, "configuration: {e}"),
            ReloadRefused::Certificates(e) => write!(f, "certificates: {e}"),
            ReloadRefused::Lanes(e) => write!(f, "cannot make lanes for the new workers: {e}"),
        }
    }
}

fn log_orphan_exit(pid: Pid, exit: Exit) {
    // Workers of a dead manager and the listener's keeper are reparented to us (we
    // are a subreaper).
    tracing::info!(pid = pid.as_raw(), %exit, "reaped an orphaned process");
}

/// Adds lanes until there is one per slot id below `workers`.
fn grow_lanes(lanes: &mut Vec<(OwnedFd, OwnedFd)>, workers: u32) -> anyhow::Result<()> {
    while lanes.len() < workers as usize {
        lanes.push(sys::seqpacket_pair().with_context(|| format!("lane for worker {}", lanes.len()))?);
    }
    Ok(())
}
