fn main() -> std::process::ExitCode {
    kstack::cli::main()
}
