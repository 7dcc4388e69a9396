//! Every key medbert keeps in the rendezvous store, named in one place: the launchers' keys
//! (under [`LAUNCHER`]) and those of each round's workers (under [`attempt`]).

/// The launchers' prefix: the round counter, and an elastic job's membership and heartbeats.
pub const LAUNCHER: &str = "medbert-run";

/// The launchers' keys, under [`LAUNCHER`].
pub mod launcher {
    /// The restart round every node's launcher runs its workers in.
    pub const ROUND: &str = "round";
    /// The next launcher id of an elastic job (the host takes 0).
    pub const NEXT_ID: &str = "next_id";
    /// Set once the workers of a round finished the job.
    pub const DONE: &str = "done";

    /// A launcher's heartbeat counter.
    pub fn heartbeat(id: i64) -> String {
        format!("heartbeat/{id}")
    }
    /// How many launchers registered for `round`.
    pub fn registered(round: usize) -> String {
        format!("round{round}/registered")
    }
    /// The `slot`th registration for `round`: a launcher's id and its workers per node.
    pub fn registration(round: usize, slot: i64) -> String {
        format!("round{round}/registered/{slot}")
    }
    /// The closed round's node list (ids in node-rank order) and restarts used.
    pub fn nodes_of(round: usize) -> String {
        format!("round{round}/nodes")
    }
    /// Why `round` cannot go on: the job ends.
    pub fn closed(round: usize) -> String {
        format!("round{round}/closed")
    }
    /// Set when a worker of `round` failed (the round counts against --max-restarts).
    pub fn failed(round: usize) -> String {
        format!("round{round}/failed")
    }
    /// Why the launcher with this id cannot take part.
    pub fn refused(id: i64) -> String {
        format!("refused/{id}")
    }
    /// Node `node`'s rows of the position table, when `round` hung or failed.
    pub fn positions(round: usize, node: usize) -> String {
        format!("round{round}/positions/{node}")
    }
    /// Set when the launcher with this id has left the job (the host's exit barrier).
    pub fn left(id: i64) -> String {
        format!("left/{id}")
    }
}

/// Where the workers of restart round `round` keep their keys (torchrun's
/// `/worker/attempt_<n>`).
pub fn attempt(round: usize) -> String {
    format!("/worker/attempt_{round}")
}

/// The keys of a round's workers, under [`attempt`].
pub mod worker {
    /// Set by the launcher: stop at the next checkpoint (a node waits to join).
    pub const STOP_AT_CHECKPOINT: &str = "medbert/stop-at-checkpoint";
    /// Set by rank 0 once every rank has stopped there: the step of that checkpoint.
    pub const STOPPED_AT_CHECKPOINT: &str = "medbert/stopped-at-checkpoint";
    /// Rank 0's parameter names and shapes, which every rank checks its own against.
    pub const DDP_PARAMETERS: &str = "medbert/ddp/parameters";
}
