//! The `kstack` command line. The library below it never prints; this is the only code that
//! knows about the terminal (see ARCHITECTURE.md).

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
