//! What crosses the broker: stream entries of jobs, lists of outcomes, and
//! the names of the keys that hold them. Everything is postcard; nothing
//! read from Redis is trusted (a malformed entry fails that entry).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::TaskError;

/// The field of a task stream entry that holds its [`TaskEntry`].
pub(crate) const FIELD: &str = "t";
/// The field that holds the entry's HMAC-SHA256 under the cluster key.
pub(crate) const SIGNATURE: &str = "s";
/// The consumer group every node reads the task stream in.
pub(crate) const GROUP: &str = "nodes";
/// How long a results list outlives the last outcome pushed to it (a
/// client that died never reads it).
pub(crate) const RESULTS_TTL_SECS: i64 = 60;
/// The most items one stream entry carries.
pub(crate) const ENTRY_ITEMS: usize = 512;
/// The most argument bytes one stream entry carries (a larger single job
/// goes alone).
pub(crate) const ENTRY_BYTES: usize = 1 << 20;

/// One stream entry: jobs of one client, run by the node that reads it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct TaskEntry {
    /// The submitting binary's identity hash: code offsets mean something
    /// only in the same build.
    pub(crate) build: u64,
    /// The submitting client's id (its results list and liveness key).
    pub(crate) client: String,
    pub(crate) jobs: Vec<WireJob>,
}

/// Items of one function, as the local pool's `Job` holds them.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WireJob {
    /// Unique within its client: outcomes are deduplicated by
    /// `(id, position)`.
    pub(crate) id: u64,
    pub(crate) entry: i64,
    pub(crate) func: i64,
    pub(crate) args: Vec<u8>,
    /// End of each item's argument in `args`.
    pub(crate) ends: Vec<u32>,
    pub(crate) timeout: Option<Duration>,
}

impl WireJob {
    /// Whether `ends` describes `args` (increasing, within it, ending at
    /// its end): a job from the stream is checked before it is run.
    pub(crate) fn well_formed(&self) -> bool {
        let mut last = 0;
        for &end in &self.ends {
            if end < last {
                return false;
            }
            last = end;
        }
        !self.ends.is_empty() && last as usize == self.args.len()
    }
}

/// One item's outcome, pushed to its client's results list.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WireOutcome {
    pub(crate) job: u64,
    /// The item's position in its job.
    pub(crate) pos: u32,
    /// The encoded value, or why there is none.
    pub(crate) result: Result<Vec<u8>, TaskError>,
}

/// Outcomes pushed together (one list element).
pub(crate) type OutcomeBatch = Vec<WireOutcome>;

/// The keys of one namespace.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub(crate) fn new(namespace: &str) -> Keys {
        Keys {
            prefix: namespace.to_owned(),
        }
    }

    /// The task stream.
    pub(crate) fn tasks(&self) -> String {
        format!("{}:tasks", self.prefix)
    }

    /// A client's outcomes (a list of [`OutcomeBatch`]es).
    pub(crate) fn results(&self, client: &str) -> String {
        format!("{}:results:{client}", self.prefix)
    }

    /// A client's liveness (expires when it stops refreshing it).
    pub(crate) fn alive(&self, client: &str) -> String {
        format!("{}:client:{client}", self.prefix)
    }

    /// The ids of a client's jobs it cancelled.
    pub(crate) fn cancelled(&self, client: &str) -> String {
        format!("{}:cancelled:{client}", self.prefix)
    }

    /// The nodes and their sizes (a hash: node → "processes expiry-ms").
    pub(crate) fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// A random value set once: it changes only if the broker lost its data.
    pub(crate) fn epoch(&self) -> String {
        format!("{}:epoch", self.prefix)
    }
}

/// The key entries are signed with: the one given, else one derived from
/// the broker's password (whoever may write to the stream knows it), else
/// a fixed one (then anyone who can write to the broker can run this
/// binary's functions on the nodes: give Redis a password, or a key).
pub(crate) fn cluster_key(given: Option<&[u8]>, url: &str) -> Vec<u8> {
    use sha2::Digest;
    if let Some(key) = given {
        return key.to_vec();
    }
    let password = redis::IntoConnectionInfo::into_connection_info(url)
        .ok()
        .and_then(|info| info.redis_settings().password().map(str::to_owned))
        .unwrap_or_default();
    let mut hash = sha2::Sha256::new();
    hash.update(b"corral cluster key\0");
    hash.update(password.as_bytes());
    hash.finalize().to_vec()
}

/// The signature of an entry's payload.
pub(crate) fn sign(key: &[u8], payload: &[u8]) -> Vec<u8> {
    use hmac::Mac;
    crate::connection::auth::hmac_sha256(key, payload)
        .finalize()
        .into_bytes()
        .to_vec()
}

/// Whether `signature` is the payload's, compared in constant time.
pub(crate) fn verify(key: &[u8], payload: &[u8], signature: &[u8]) -> bool {
    use hmac::Mac;
    crate::connection::auth::hmac_sha256(key, payload)
        .verify_slice(signature)
        .is_ok()
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("postcard encodes plain structs into a Vec")
}

pub(crate) fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
    postcard::from_bytes(bytes).map_err(|e| e.to_string())
}

/// Milliseconds since the epoch (node expiry stamps, compared across
/// machines with clocks in sync to well under a visibility timeout).
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_jobs_are_seen() {
        let job = |args: usize, ends: Vec<u32>| WireJob {
            id: 1,
            entry: 0,
            func: 0,
            args: vec![0; args],
            ends,
            timeout: None,
        };
        assert!(job(4, vec![1, 4]).well_formed());
        assert!(!job(4, vec![3, 1, 4]).well_formed());
        assert!(!job(4, vec![1, 5]).well_formed());
        assert!(!job(4, vec![1, 3]).well_formed());
        assert!(!job(0, vec![]).well_formed());
    }

    #[test]
    fn errors_cross() {
        let out = WireOutcome {
            job: 7,
            pos: 2,
            result: Err(TaskError::TimedOut(Duration::from_millis(5))),
        };
        let back: WireOutcome = decode(&encode(&out)).unwrap();
        assert_eq!(back.result, out.result);
    }
}
