//! Errors of opening, recovering and snapshotting a data directory.

use std::io;
use std::path::PathBuf;

use super::codec::DecodeError;
use crate::error::StorageError;

/// Why a data directory could not be opened, recovered or snapshotted.
///
/// Every variant names the file involved; corruption also names the byte offset, so an operator
/// can inspect (or move aside) exactly what is damaged. Nothing is ever silently dropped: the
/// only data recovery discards without an error is a torn tail, and it says so in a log line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PersistError {
    /// A file or directory could not be read, written or synced.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A file holds damage that is not a torn tail: recovery stops rather than lose data.
    #[error("{}: corrupt at byte offset {offset}: {reason}; refusing to start (move the file aside or restore it from a backup)", file.display())]
    Corrupt {
        /// The damaged file.
        file: PathBuf,
        /// Where the damage starts.
        offset: u64,
        /// What is wrong there.
        reason: String,
    },
    /// A file was written by a newer caskv whose format this build cannot read.
    #[error("{}: written in format version {found}, this build reads up to version {supported}; refusing to open (upgrade caskv)", file.display())]
    NewerFormat {
        /// The file.
        file: PathBuf,
        /// Its format version.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// A configured bound lets a client send a write that one log record cannot hold (a
    /// server's `--max-key-bytes` plus `--max-value-bytes` above
    /// [`MAX_ENTRY_BYTES`](super::MAX_ENTRY_BYTES), or `--max-body-bytes` above
    /// [`MAX_BATCH_BYTES`](super::MAX_BATCH_BYTES)): refused before the directory is opened.
    #[error("{what} is {len} bytes, above the {max} bytes one log record can hold; lower it")]
    LimitTooLarge {
        /// The bound (the flags that set it).
        what: &'static str,
        /// Its configured size.
        len: usize,
        /// What the log holds.
        max: usize,
    },
    /// Another process has the directory open.
    #[error("{}: the data directory is in use by another process", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// A recovered key or value does not decode as the store's types (the directory was
    /// written with other types).
    #[error("a recovered {what} does not decode as this store's type: {source}")]
    Decode {
        /// "key" or "value".
        what: &'static str,
        /// The codec's complaint.
        #[source]
        source: DecodeError,
    },
    /// The directory holds service registrations but was opened without services
    /// ([`Options::services`](super::Options::services)): refused rather than drop them at the
    /// next snapshot.
    #[error("{}: the data directory holds {registrations} service registrations; open it with services on", dir.display())]
    ServicesOff {
        /// The data directory.
        dir: PathBuf,
        /// How many registrations it holds.
        registrations: usize,
    },
    /// The log failed while the operation needed it.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl PersistError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> PersistError {
        let path = path.into();
        move |source| PersistError::Io { path, source }
    }
}
