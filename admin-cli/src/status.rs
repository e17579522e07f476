//! Human rendering of the daemon's [`Status`] for `webctl status`.
//!
//! One header line about the daemon, a blank line, then a table with one row per
//! supervised process (listener, manager) and one per worker:
//!
//! ```text
//! ROLE      ID   PID  STATE    RESTARTS  HB AGE  CONNS  REQUESTS
//! listener   -  4243  running         0    12ms      -         -
//! worker     0  4250  busy            0       -      3     10234
//! ```
//!
//! Column widths come from the content; text columns are left-aligned, numeric
//! ones right-aligned, and `-` marks a value that does not apply.

use webd_proto::{CertificateStatus, ProcessStatus, Status, WorkerStatus};

/// Renders `status` as the header line plus the process table, newline-terminated.
pub fn render(status: &Status) -> String {
    let mut table = Table::new(&[
        ("ROLE", Align::Left),
        ("ID", Align::Right),
        ("PID", Align::Right),
        ("STATE", Align::Left),
        ("RESTARTS", Align::Right),
        ("HB AGE", Align::Right),
        ("CONNS", Align::Right),
        ("REQUESTS", Align::Right),
    ]);
    for process in &status.processes {
        table.row(process_row(process));
        if let Some(keeper) = process.keeper_pid {
            table.row(keeper_row(keeper));
        }
    }
    for worker in &status.workers {
        table.row(worker_row(worker));
        if let Some(keeper) = worker.keeper_pid {
            table.row(keeper_row(keeper));
        }
    }
    let mut out = format!("{}\n\n{}", header(status), table.render());
    if !status.certificates.is_empty() {
        out.push('\n');
        out.push_str(&certificates(&status.certificates));
    }
    out
}

/// The loaded certificates, the default first.
fn certificates(certificates: &[CertificateStatus]) -> String {
    let mut table = Table::new(&[("CERTIFICATE", Align::Left), ("NOT AFTER", Align::Left), ("FILE", Align::Left)]);
    for cert in certificates {
        table.row(vec![cert.names.join(" "), cert.not_after.clone(), cert.file.clone()]);
    }
    table.render()
}

fn header(status: &Status) -> String {
    let mut listen = if status.listen.is_empty() { "none".to_owned() } else { status.listen.join(", ") };
    if !status.tls_listen.is_empty() {
        listen = format!("{listen}; tls {}", status.tls_listen.join(", "));
    }
    format!(
        "webd {} (pid {}) {}, up {}; listen {}; connections {} accepted, {} active; requests {}",
        status.version,
        status.pid,
        status.state,
        uptime(status.uptime_seconds),
        listen,
        status.connections.accepted,
        status.connections.active,
        status.requests_total,
    )
}

fn process_row(process: &ProcessStatus) -> Vec<String> {
    let running = process.pid != 0;
    vec![
        process.role.clone(),
        "-".to_owned(),
        pid(process.pid),
        process.state.to_string(),
        process.restarts.to_string(),
        if running { age(process.heartbeat_age_ms) } else { "-".to_owned() },
        "-".to_owned(),
        "-".to_owned(),
    ]
}

/// A keeper (the listener's, or a worker's, below it): no heartbeat of its own (the
/// process it keeps reports it).
fn keeper_row(keeper_pid: u32) -> Vec<String> {
    let dash = || "-".to_owned();
    vec!["keeper".to_owned(), dash(), pid(keeper_pid), "running".to_owned(), dash(), dash(), dash(), dash()]
}

fn worker_row(worker: &WorkerStatus) -> Vec<String> {
    vec![
        "worker".to_owned(),
        worker.id.to_string(),
        pid(worker.pid),
        worker.state.to_string(),
        worker.restarts.to_string(),
        "-".to_owned(),
        worker.active_connections.to_string(),
        worker.requests.to_string(),
    ]
}

/// A pid of 0 means no process runs in that slot.
fn pid(pid: u32) -> String {
    if pid == 0 {
        "-".to_owned()
    } else {
        pid.to_string()
    }
}

/// Heartbeat age: milliseconds while fresh, seconds with one decimal once stale.
fn age(ms: f64) -> String {
    if !ms.is_finite() || ms < 0.0 {
        "-".to_owned()
    } else if ms < 1000.0 {
        format!("{ms:.0}ms")
    } else {
        format!("{:.1}s", ms / 1000.0)
    }
}

/// Uptime as `1d 2h 3m 4s`, leaving out leading zero units.
fn uptime(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "?".to_owned();
    }
    let total = seconds as u64;
    let parts = [(total / 86_400, "d"), (total / 3600 % 24, "h"), (total / 60 % 60, "m")];
    let mut out: Vec<String> =
        parts.iter().skip_while(|(n, _)| *n == 0).map(|(n, unit)| format!("{n}{unit}")).collect();
    out.push(format!("{}s", total % 60));
    out.join(" ")
}

#[derive(Clone, Copy)]
enum Align {
    Left,
    Right,
}

/// A text table whose columns are as wide as their widest cell, two spaces apart.
struct Table {
    columns: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(headers: &[(&str, Align)]) -> Self {
        Table {
            columns: headers.iter().map(|(_, align)| *align).collect(),
            rows: vec![headers.iter().map(|(name, _)| (*name).to_owned()).collect()],
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.columns.len());
        self.rows.push(cells);
    }

    fn render(&self) -> String {
        let widths: Vec<usize> = (0..self.columns.len())
            .map(|col| self.rows.iter().map(|row| row[col].chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (col, cell) in row.iter().enumerate() {
                if col > 0 {
                    line.push_str("  ");
                }
                let pad = " ".repeat(widths[col] - cell.chars().count());
                match self.columns[col] {
                    Align::Left => {
                        line.push_str(cell);
                        line.push_str(&pad);
                    }
                    Align::Right => {
                        line.push_str(&pad);
                        line.push_str(cell);
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use webd_proto::{ConnectionStatus, ProcessState, WorkerState};

    fn sample() -> Status {
        let process = |role: &str, pid, state, restarts, age| ProcessStatus {
            role: role.to_owned(),
            pid,
            state,
            restarts,
            heartbeat_age_ms: age,
            heartbeat_latency_ms: 0.2,
            keeper_pid: None,
        };
        let worker = |id, pid, state, restarts, conns, requests| WorkerStatus {
            id,
            pid,
            state,
            restarts,
            active_connections: conns,
            requests,
            utilization: 0.5,
            keeper_pid: None,
        };
        Status {
            version: "0.1.0".to_owned(),
            pid: 4242,
            uptime_seconds: 3725.4,
            state: webd_proto::DaemonState::Running,
            listen: vec!["127.0.0.1:8080".to_owned(), "[::1]:8080".to_owned()],
            admin: Some("127.0.0.1:9180".to_owned()),
            tls_listen: Vec::new(),
            certificates: Vec::new(),
            processes: vec![
                ProcessStatus { keeper_pid: Some(4244), ..process("listener", 4243, ProcessState::Running, 0, 12.3) },
                process("manager", 0, ProcessState::Backoff, 7, 1500.0),
            ],
            workers: vec![
                WorkerStatus { keeper_pid: Some(4252), ..worker(0, 4250, WorkerState::Busy, 0, 3, 10234) },
                worker(1, 4251, WorkerState::Idle, 2, 0, 7),
                worker(10, 0, WorkerState::Starting, 12, 0, 0),
            ],
            connections: ConnectionStatus { accepted: 1520, active: 3 },
            requests_total: 10241,
        }
    }

    #[test]
    fn renders_header_and_aligned_table() {
        let want = "\
webd 0.1.0 (pid 4242) running, up 1h 2m 5s; listen 127.0.0.1:8080, [::1]:8080; \
connections 1520 accepted, 3 active; requests 10241

ROLE      ID   PID  STATE     RESTARTS  HB AGE  CONNS  REQUESTS
listener   -  4243  running          0    12ms      -         -
keeper     -  4244  running          -       -      -         -
manager    -     -  backoff          7       -      -         -
worker     0  4250  busy             0       -      3     10234
keeper     -  4252  running          -       -      -         -
worker     1  4251  idle             2       -      0         7
worker    10     -  starting        12       -      0         0
";
        assert_eq!(render(&sample()), want);
    }

    #[test]
    fn tls_addresses_and_certificates_are_listed_when_tls_is_on() {
        let mut status = sample();
        status.tls_listen = vec!["127.0.0.1:8443".to_owned()];
        status.certificates = vec![CertificateStatus {
            name: "example.com".to_owned(),
            names: vec!["example.com".to_owned(), "*.example.com".to_owned()],
            not_after: "2027-03-01T12:00:00Z".to_owned(),
            file: "/etc/webd/example.pem".to_owned(),
        }];
        let text = render(&status);
        assert!(text.contains("listen 127.0.0.1:8080, [::1]:8080; tls 127.0.0.1:8443;"), "{text}");
        assert!(
            text.ends_with(
                "\nCERTIFICATE                NOT AFTER             FILE\n\
                 example.com *.example.com  2027-03-01T12:00:00Z  /etc/webd/example.pem\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn every_column_starts_at_the_same_offset_on_every_line() {
        let mut status = sample();
        status.workers[1].requests = 123_456_789_012;
        status.processes[0].role = "a-much-longer-role".to_owned();
        let text = render(&status);
        let lines: Vec<&str> = text.lines().skip(2).collect();
        let header = lines[0];
        // Right-aligned columns end where their header ends; left-aligned ones
        // start where their header starts.
        for name in ["ID", "PID", "RESTARTS", "HB AGE", "CONNS", "REQUESTS"] {
            let end = header.find(name).expect("header") + name.len();
            for line in &lines[1..] {
                let cell_end = line[..end].trim_end().len();
                assert_eq!(cell_end, end, "{name} misaligned in {line:?}");
                assert!(line[end..].is_empty() || line[end..].starts_with("  "), "{line:?}");
            }
        }
        let state = header.find("STATE").expect("header");
        for line in &lines[1..] {
            assert_eq!(&line[state - 2..state], "  ", "{line:?}");
            assert_ne!(&line[state..state + 1], " ", "{line:?}");
        }
    }

    #[test]
    fn empty_status_still_has_a_header_and_column_titles() {
        let mut status = sample();
        status.listen.clear();
        status.processes.clear();
        status.workers.clear();
        let text = render(&status);
        assert!(text.contains("; listen none;"), "{text}");
        assert!(text.ends_with("\n\nROLE  ID  PID  STATE  RESTARTS  HB AGE  CONNS  REQUESTS\n"));
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(uptime(0.4), "0s");
        assert_eq!(uptime(59.0), "59s");
        assert_eq!(uptime(3600.0), "1h 0m 0s");
        assert_eq!(uptime(90_061.0), "1d 1h 1m 1s");
        assert_eq!(uptime(f64::NAN), "?");
        assert_eq!(age(0.4), "0ms");
        assert_eq!(age(999.0), "999ms");
        assert_eq!(age(1500.0), "1.5s");
        assert_eq!(age(-1.0), "-");
    }
}
