//! libFuzzer entry point of `log_recovery`; the logic is in `fuzz/targets/log_recovery.rs`, which
//! `tests/fuzz_corpus.rs` replays on stable.
#![no_main]

#[path = "../targets/log_recovery.rs"]
mod logic;

libfuzzer_sys::fuzz_target!(|data: &[u8]| logic::run(data));
