//! libFuzzer entry point of `store_concurrent`; the logic is in `fuzz/targets/store_concurrent.rs`, which
//! `tests/fuzz_corpus.rs` replays on stable.
#![no_main]

#[path = "../targets/store_concurrent.rs"]
mod logic;

libfuzzer_sys::fuzz_target!(|data: &[u8]| logic::run(data));
