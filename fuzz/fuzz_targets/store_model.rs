//! libFuzzer entry point of `store_model`; the logic is in `fuzz/targets/store_model.rs`, which
//! `tests/fuzz_corpus.rs` replays on stable.
#![no_main]

#[path = "../targets/store_model.rs"]
mod logic;

libfuzzer_sys::fuzz_target!(|data: &[u8]| logic::run(data));
