//! A watchdog for concurrency tests: a deadlock fails the test instead of hanging the run.
//! Included by path (`#[path = "support/watchdog.rs"] mod watchdog;`) so a test file does not
//! compile the rest of `support/`.

use std::sync::mpsc;
use std::time::Duration;

/// Runs `work` on its own thread and fails the test if it does not finish in `limit`: a
/// deadlocked batch or a stuck resize would otherwise hang the test run.
pub fn within<T: Send + 'static>(limit: Duration, work: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(work()).ok());
    match rx.recv_timeout(limit) {
        Ok(result) => result,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("no progress in {limit:?}: deadlock"),
        // The worker panicked; its message was already printed.
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the worker thread panicked"),
    }
}
