use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = meshctl::cli::Cli::parse();
    match meshctl::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
