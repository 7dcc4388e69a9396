//! What a run reports: its logs as it goes (`log`), and at its end the curves (`plot`) and a
//! summary (`summary`).

mod log;
mod plot;
mod summary;

pub(crate) use log::{MetricsLog, QuestionLog};
pub use plot::{plot, Baseline, Curves};
pub use summary::TrainSummary;
