//! What a run reports: its logs as it goes (`log`), and at its end the curves (`plot`) and a
//! summary (`summary`), with where a step's time went when asked (`clock`).

mod clock;
mod log;
mod plot;
mod ranks;
mod summary;

pub use clock::StepTimes;
pub(crate) use clock::{Phase, StepClock};
pub use log::MetricsRecord;
pub(crate) use log::{MetricsLog, QuestionLog};
pub use plot::{plot, Baseline, Curves};
pub use ranks::RankStepTimes;
pub(crate) use ranks::RankTimes;
pub use summary::TrainSummary;
