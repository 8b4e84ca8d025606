//! Pipes: a message channel between two processes, Python's
//! `multiprocessing.Pipe`.
//!
//! [`Pipe::duplex`] gives two [`Connection`]s that both send and receive;
//! [`Pipe::simplex`] gives a [`Receiver`] and a [`Sender`]. Values cross as
//! serde data; [`Connection::send_bytes`] sends raw bytes framed exactly like
//! Python's `Connection.send_bytes`. Ends are serde handles: pass one to
//! [`crate::spawn`] (under every start method) or send it over another pipe.
//!
//! One end may be shared by threads (sends and receives are each serialized
//! by a lock), but two processes writing to the same end interleave large
//! messages; give each writer its own pipe (or use a queue).

mod endpoint;

pub use endpoint::{Connection, Pipe, Receiver, Sender};
