//! The `keel` binary: a thin shell over the library (see `keel::cli`).

use std::process::ExitCode;

fn main() -> ExitCode {
    match keel::cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line: `{:#}` joins the cause chain with ": ".
            eprintln!("keel: {error:#}");
            ExitCode::FAILURE
        }
    }
}
