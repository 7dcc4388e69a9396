//! `medbert-run`: start one worker per device, like torchrun. Parses, calls the library's
//! launcher, exits with its status.

use clap::FromArgMatches;
use medbert::launch::config::{self, Host, RunArgs};
use medbert::launch::{self, exit};

fn main() {
    let args = RunArgs::from_arg_matches(&config::command().get_matches()).unwrap_or_else(|e| e.exit());
    let launched = Host::this_machine()
        .and_then(|host| config::config_from_args(args, &host))
        .and_then(|config| launch::launch(&config, &*launch::Signals::listen()?));
    match launched {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            eprintln!("medbert-run: error: {err}");
            std::process::exit(exit::INVALID);
        }
    }
}
