//! `medbert-run`: start one worker per device, like torchrun. Parses, calls the library's
//! launcher, exits with its status.

use clap::FromArgMatches;
use medbert::launch::config::{self, Host, RunArgs};
use medbert::launch::{self, exit};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

fn main() {
    let args = RunArgs::from_arg_matches(&config::command().get_matches()).unwrap_or_else(|e| e.exit());
    let signal = Arc::new(AtomicUsize::new(0));
    let launched = Host::this_machine().and_then(|host| config::config_from_args(args, &host)).and_then(|config| {
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register_usize(sig, Arc::clone(&signal), sig as usize)
                .map_err(|e| medbert::Error::Input(format!("installing signal handlers: {e}")))?;
        }
        launch::launch(&config, &signal)
    });
    match launched {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            eprintln!("medbert-run: error: {err}");
            std::process::exit(exit::INVALID);
        }
    }
}
