fn main() -> std::process::ExitCode {
    wininetd::main()
}
