//! The HTTP endpoint (`metrics_listen`): `GET /metrics` and `GET /healthz`, served by
//! `tiny_http` on a thread of its own. A request gathers fresh snapshots over the
//! control plane; a shard that does not answer within [`super::SHARD_ANSWER`] shows
//! as down rather than stalling the endpoint.

use super::{prom, Gatherer, Process};
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub(crate) struct Server {
    pub addr: SocketAddr,
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(
        addr: SocketAddr,
        gatherer: Gatherer,
        process: Arc<Process>,
    ) -> Result<Server, (SocketAddr, std::io::Error)> {
        let server = tiny_http::Server::http(addr)
            .map_err(|e| (addr, std::io::Error::other(e.to_string())))?;
        let bound = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| (addr, std::io::Error::other("not an IP listener")))?;
        let server = Arc::new(server);
        let thread = {
            let server = server.clone();
            std::thread::Builder::new()
                .name("shardmq-metrics".into())
                .spawn(move || serve(&server, &gatherer, &process))
                .map_err(|e| (addr, e))?
        };
        tracing::info!(address = %bound, "metrics endpoint: GET /metrics, GET /healthz");
        Ok(Server {
            addr: bound,
            server,
            thread: Some(thread),
        })
    }

    pub fn stop(mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("a valid static header")
}

fn serve(server: &tiny_http::Server, gatherer: &Gatherer, process: &Arc<Process>) {
    // `recv` returns an error once `unblock` is called.
    while let Ok(request) = server.recv() {
        let path = request.url().split('?').next().unwrap_or("").to_owned();
        let get = matches!(
            request.method(),
            tiny_http::Method::Get | tiny_http::Method::Head
        );
        let response = match (get, path.as_str()) {
            (true, "/metrics") => {
                let body = prom::render(gatherer.gather(), process);
                tiny_http::Response::from_string(body)
                    .with_header(header("Content-Type", OPENMETRICS))
            }
            (true, "/healthz") => {
                let (code, body) = health(&gatherer.gather().answered);
                if code != 200 {
                    tracing::warn!("health check: {}", body.trim_end());
                }
                tiny_http::Response::from_string(body).with_status_code(code)
            }
            (true, _) => tiny_http::Response::from_string("not found: try /metrics or /healthz\n")
                .with_status_code(404),
            (false, _) => {
                tiny_http::Response::from_string("method not allowed\n").with_status_code(405)
            }
        };
        let response = response.with_header(header("Cache-Control", "no-store"));
        let _ = request.respond(response);
    }
}

/// `/healthz`: 200 while every shard answers, else 503 naming those that do not.
fn health(answered: &[bool]) -> (u16, String) {
    let down: Vec<String> = answered
        .iter()
        .enumerate()
        .filter(|(_, up)| !**up)
        .map(|(i, _)| i.to_string())
        .collect();
    if down.is_empty() && !answered.is_empty() {
        (200, format!("ok: {} shards answering\n", answered.len()))
    } else {
        (
            503,
            format!("unhealthy: shard(s) {} not answering\n", down.join(",")),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::health;

    #[test]
    fn healthy_only_while_every_shard_answers() {
        assert_eq!(health(&[true, true]).0, 200);
        let (code, body) = health(&[true, false, false]);
        assert_eq!(code, 503);
        assert!(body.contains("1,2"), "{body}");
        assert_eq!(health(&[]).0, 503);
    }
}
