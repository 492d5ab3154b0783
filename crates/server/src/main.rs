//! The `sealroom` binary.

fn main() -> std::process::ExitCode {
    sealroom_server::cli::main()
}
