//! What each admin path answers (the list is in the module doc of `admin`).
//!
//! Read-only: every handler takes the `Observed` lock just long enough to copy what it
//! shows, then formats outside the lock, so a scrape never delays the supervision loop.

use super::http::Response;
use super::metrics::{Exporter, CONTENT_TYPE};
use crate::observe::SharedObserved;

/// The handlers and the state they read.
pub struct Endpoints {
    observed: SharedObserved,
    exporter: Exporter,
    /// The last rendered exposition and the publication it shows (one server thread):
    /// reused until the daemon publishes again, so a client pipelining scrapes (or
    /// hundreds of them) costs copies, not renders, and never sees stale figures.
    rendered: std::cell::RefCell<Option<(u64, Vec<u8>)>>,
}

impl Endpoints {
    pub fn new(observed: SharedObserved) -> prometheus::Result<Endpoints> {
        Ok(Endpoints { exporter: Exporter::new(observed.clone())?, observed, rendered: Default::default() })
    }

    /// The response to `method path`; an unknown path is 404 whatever the method, a
    /// known one answers GET and HEAD only.
    pub fn respond(&self, method: &str, path: &str) -> Response {
        let handler: fn(&Endpoints) -> Response = match path {
            "/metrics" => Endpoints::metrics,
            "/status" => Endpoints::status,
            "/healthz" => Endpoints::healthz,
            "/readyz" => Endpoints::readyz,
            _ => return Response::text(404, "not found\n"),
        };
        match method {
            "GET" | "HEAD" => handler(self),
            _ => Response::method_not_allowed(),
        }
    }

    fn metrics(&self) -> Response {
        let generation = self.observed.lock().generation;
        if let Some((seen, body)) = self.rendered.borrow().as_ref() {
            if *seen == generation && generation != 0 {
                return Response::new(200, CONTENT_TYPE, body.clone());
            }
        }
        match self.exporter.render() {
            Ok(body) => {
                *self.rendered.borrow_mut() = Some((generation, body.clone()));
                Response::new(200, CONTENT_TYPE, body)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot encode metrics");
                Response::text(500, format!("cannot encode metrics: {e}\n"))
            }
        }
    }

    fn status(&self) -> Response {
        let status = self.observed.lock().status.clone();
        let Some(status) = status else {
            return Response::json(503, r#"{"error":"status not available yet"}"#);
        };
        match serde_json::to_vec(&status) {
            Ok(body) => Response::json(200, body),
            Err(e) => Response::json(500, serde_json::json!({ "error": e.to_string() }).to_string()),
        }
    }

    /// Answered by the admin thread itself: it runs as long as the daemon does.
    fn healthz(&self) -> Response {
        Response::text(200, "ok")
    }

    fn readyz(&self) -> Response {
        let not_ready = self.observed.lock().not_ready.clone();
        match not_ready {
            None => Response::text(200, "ready"),
            Some(reason) => Response::text(503, reason),
        }
    }
}
