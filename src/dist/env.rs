//! The launcher's contract: the variables torchrun (and medbert-run) set for each worker.

use crate::error::{Error, Result};
use std::str::FromStr;

/// Where this process stands in the worker group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistEnv {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    pub local_world_size: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// The launcher hosts the rendezvous store (TORCHELASTIC_USE_AGENT_STORE=True).
    pub agent_store: bool,
    /// Restarts of the worker group so far (TORCHELASTIC_RESTART_COUNT).
    pub restart_count: usize,
}

impl DistEnv {
    /// Reads the process environment. `Ok(None)` when WORLD_SIZE is unset (a plain,
    /// single-process run); any variable that is present but malformed, or missing while
    /// WORLD_SIZE is set, is an error naming it.
    pub fn from_env() -> Result<Option<DistEnv>> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// As `from_env`, over any variable lookup (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<DistEnv>> {
        if get("WORLD_SIZE").is_none() {
            return Ok(None);
        }
        let num = |name: &'static str| -> Result<usize> { parse(name, get(name)) };
        let world_size = num("WORLD_SIZE")?;
        let rank = num("RANK")?;
        if world_size == 0 {
            return Err(Error::Env { name: "WORLD_SIZE", message: "must be at least 1".into() });
        }
        if rank >= world_size {
            return Err(Error::Env { name: "RANK", message: format!("{rank} is not below WORLD_SIZE {world_size}") });
        }
        let local_rank = get("LOCAL_RANK").map_or(Ok(rank), |v| parse("LOCAL_RANK", Some(v)))?;
        let local_world_size =
            get("LOCAL_WORLD_SIZE").map_or(Ok(world_size), |v| parse("LOCAL_WORLD_SIZE", Some(v)))?;
        if local_rank >= local_world_size {
            return Err(Error::Env {
                name: "LOCAL_RANK",
                message: format!("{local_rank} is not below LOCAL_WORLD_SIZE {local_world_size}"),
            });
        }
        let master_addr = get("MASTER_ADDR")
            .filter(|s| !s.trim().is_empty())
            .ok_or(Error::Env { name: "MASTER_ADDR", message: "not set (the launcher sets it)".into() })?;
        let master_port = parse("MASTER_PORT", get("MASTER_PORT"))?;
        let agent_store = get("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        let restart_count =
            get("TORCHELASTIC_RESTART_COUNT").map_or(Ok(0), |v| parse("TORCHELASTIC_RESTART_COUNT", Some(v)))?;
        Ok(Some(DistEnv {
            rank,
            world_size,
            local_rank,
            local_world_size,
            master_addr,
            master_port,
            agent_store,
            restart_count,
        }))
    }

    pub fn is_main(&self) -> bool {
        self.rank == 0
    }
}

fn parse<T: FromStr>(name: &'static str, value: Option<String>) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    let value = value.ok_or(Error::Env { name, message: "not set (the launcher sets it)".into() })?;
    value.trim().parse().map_err(|e| Error::Env { name, message: format!("{value:?} is not valid: {e}") })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(pairs: &[(&str, &str)]) -> Result<Option<DistEnv>> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        DistEnv::from_lookup(|k| map.get(k).cloned())
    }

    const FULL: [(&str, &str); 6] = [
        ("WORLD_SIZE", "4"),
        ("RANK", "3"),
        ("LOCAL_RANK", "1"),
        ("LOCAL_WORLD_SIZE", "2"),
        ("MASTER_ADDR", "10.0.0.1"),
        ("MASTER_PORT", "29500"),
    ];

    #[test]
    fn absent_world_size_means_single_process() {
        assert_eq!(lookup(&[("RANK", "0")]).unwrap(), None);
    }

    #[test]
    fn full_environment_parses() {
        let env = lookup(&FULL).unwrap().unwrap();
        assert_eq!((env.rank, env.world_size, env.local_rank, env.local_world_size), (3, 4, 1, 2));
        assert_eq!((env.master_addr.as_str(), env.master_port), ("10.0.0.1", 29500));
        assert!(!env.is_main());
    }

    #[test]
    fn the_launchers_store_and_restart_count_are_read() {
        let env = lookup(&FULL).unwrap().unwrap();
        assert_eq!((env.agent_store, env.restart_count), (false, 0));
        let mut pairs = FULL.to_vec();
        pairs.extend([("TORCHELASTIC_USE_AGENT_STORE", "True"), ("TORCHELASTIC_RESTART_COUNT", "2")]);
        let env = lookup(&pairs).unwrap().unwrap();
        assert_eq!((env.agent_store, env.restart_count), (true, 2));
        let bad: Vec<(&str, &str)> =
            pairs.iter().map(|&(k, v)| if k == "TORCHELASTIC_RESTART_COUNT" { (k, "x") } else { (k, v) }).collect();
        assert!(lookup(&bad).unwrap_err().to_string().contains("TORCHELASTIC_RESTART_COUNT"));
    }

    #[test]
    fn each_bad_variable_is_named() {
        let cases: [(&str, Option<&str>); 5] = [
            ("RANK", Some("x")),
            ("RANK", Some("4")),
            ("MASTER_PORT", Some("70000")),
            ("MASTER_ADDR", None),
            ("LOCAL_RANK", Some("2")),
        ];
        for (name, value) in cases {
            let mut pairs: Vec<(&str, &str)> = FULL.iter().copied().filter(|(k, _)| *k != name).collect();
            if let Some(v) = value {
                pairs.push((name, v));
            }
            let err = lookup(&pairs).unwrap_err().to_string();
            assert!(err.contains(name), "{name}={value:?}: {err}");
        }
    }
}
