//! The `caskv` binary. The HTTP server (`caskv serve`) and the CLI client arrive with issue #3;
//! until then the binary says so and exits non-zero instead of pretending to serve.

fn main() {
    let command = std::env::args().nth(1).unwrap_or_default();
    eprintln!(
        "caskv {}: the `{command}` command is not available yet: this build has the library only \
         (the HTTP server is tracked in issue #3)",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
