use std::io::ErrorKind;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = edgevit_tools::cli::Cli::parse();
    match edgevit_tools::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // A closed stdout (e.g. piped into `head`) is not a failure.
            if err.chain().any(|e| {
                e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            // One problem per line (verification reports them all), each prefixed.
            for line in format!("{err:#}").lines() {
                eprintln!("edgevit-tools: {line}");
            }
            ExitCode::FAILURE
        }
    }
}
