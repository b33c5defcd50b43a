//! The `caskv` binary: parses the command line and hands over to [`caskv::cli`].

fn main() -> std::process::ExitCode {
    caskv::cli::main()
}
