//! libFuzzer entry point of `http_request`; the logic is in `fuzz/targets/http_request.rs`, which
//! `tests/fuzz_corpus.rs` replays on stable.
#![no_main]

#[path = "../targets/http_request.rs"]
mod logic;

libfuzzer_sys::fuzz_target!(|data: &[u8]| logic::run(data));
