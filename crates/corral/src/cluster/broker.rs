//! One connection to the broker, reopened after a failure, with every wait
//! bounded: a call that cannot reach Redis returns an error, never hangs.

use std::time::{Duration, Instant};

use redis::{Connection, RedisError, RedisResult};

use super::ClusterError;

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a reply may take beyond a command's own blocking time.
const REPLY_SLACK: Duration = Duration::from_secs(5);
/// The first pause after a failure; doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A broker connection, opened on first use and after each failure.
pub(crate) struct Broker {
    client: redis::Client,
    conn: Option<Connection>,
    /// How long a command may block on the server (`BLOCK`, `BLPOP`).
    block: Duration,
    /// Since when calls have failed (`None`: the last one worked).
    failing_since: Option<Instant>,
    backoff: Duration,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

impl Broker {
    /// A broker at `url` (`redis://[user:password@]host:port[/db]`, or
    /// `rediss://` with the `cluster-tls` feature); nothing is connected yet.
    /// `ca`: a PEM certificate to trust for `rediss://` instead of the
    /// system's store.
    pub(crate) fn new(
        url: &str,
        ca: Option<&[u8]>,
        block: Duration,
    ) -> Result<Broker, ClusterError> {
        let client = open_client(url, ca).map_err(|e| ClusterError::InvalidUrl {
            url: redact(url),
            reason: e.to_string(),
        })?;
        Ok(Broker {
            client,
            conn: None,
            block,
            failing_since: None,
            backoff: MIN_BACKOFF,
        })
    }

    /// Connects now, or says why not.
    pub(crate) fn connect(&mut self) -> Result<(), ClusterError> {
        self.call(|_| Ok(()))
            .map_err(|e| ClusterError::from_redis(&self.client, e))
    }

    fn open(&mut self) -> RedisResult<&mut Connection> {
        if self.conn.is_none() {
            let conn = self.client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
            conn.set_read_timeout(Some(self.block + REPLY_SLACK))?;
            conn.set_write_timeout(Some(REPLY_SLACK))?;
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut().expect("just opened"))
    }

    /// Runs `f` on the connection. A failure that may have broken the
    /// connection drops it (the next call reconnects); server replies that
    /// are errors (a missing group, say) keep it.
    pub(crate) fn call<T>(
        &mut self,
        f: impl FnOnce(&mut Connection) -> RedisResult<T>,
    ) -> RedisResult<T> {
        let result = self.open().and_then(f);
        match &result {
            Ok(_) => {
                self.failing_since = None;
                self.backoff = MIN_BACKOFF;
            }
            Err(e) if broken(e) => {
                self.conn = None;
                self.failing_since.get_or_insert_with(Instant::now);
            }
            Err(_) => {}
        }
        result
    }

    /// For how long calls have been failing to reach the broker.
    pub(crate) fn down_for(&self) -> Option<Duration> {
        self.failing_since.map(|t| t.elapsed())
    }

    /// Sleeps before the next attempt after a failure (at most `until`).
    pub(crate) fn pause(&mut self, until: Option<Instant>) {
        let mut pause = self.backoff;
        if let Some(until) = until {
            pause = pause.min(until.saturating_duration_since(Instant::now()));
        }
        std::thread::sleep(pause);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// How long blocking commands block, in milliseconds.
    pub(crate) fn block_ms(&self) -> u64 {
        self.block.as_millis() as u64
    }
}

fn open_client(url: &str, ca: Option<&[u8]>) -> RedisResult<redis::Client> {
    match ca {
        None => redis::Client::open(url),
        #[cfg(feature = "cluster-tls")]
        Some(pem) => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.to_vec()),
            },
        ),
        #[cfg(not(feature = "cluster-tls"))]
        Some(_) => Err((
            redis::ErrorKind::InvalidClientConfig,
            "a CA certificate is for rediss:// URLs, which need corral's `cluster-tls` feature",
        )
            .into()),
    }
}

/// Whether an error means the connection is gone (rather than a reply the
/// server gave on a working one).
pub(crate) fn broken(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_connection_refusal()
}

/// The URL without its password, for messages.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(redact("redis://:pw@host:1/0"), "redis://***@host:1/0");
        assert_eq!(redact("redis://u:p@w@h:1"), "redis://***@h:1");
        assert_eq!(redact("redis://host:1"), "redis://host:1");
    }
}
