//! libFuzzer entry point of `http_acl`; the logic is in `fuzz/targets/http_acl.rs`, which
//! `tests/fuzz_corpus.rs` replays on stable.
#![no_main]

#[path = "../targets/http_acl.rs"]
mod logic;

libfuzzer_sys::fuzz_target!(|data: &[u8]| logic::run(data));
