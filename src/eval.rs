//! Evaluation: loss and accuracy over labelled questions, each rank its share, summed
//! exactly over the group (never an average of averages).

use crate::batch::collate;
use crate::device::Precision;
use crate::dist::Comm;
use crate::error::Result;
use crate::model::{upload, MultipleChoiceModel};
use crate::prep::cache::PreparedCache;
use serde::Serialize;
use tch::{Kind, Tensor};

/// `--per-device-eval-batch-size` when not given.
pub const DEFAULT_EVAL_BATCH_SIZE: usize = 32;

/// Accuracy and loss over a split; sums, so that ranks can add them up exactly.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct EvalResult {
    pub questions: usize,
    pub correct: usize,
    pub loss_sum: f64,
    /// (subject, correct, questions) where the cache names subjects.
    pub per_subject: Vec<(String, usize, usize)>,
}

impl EvalResult {
    /// The metrics `metric` can name.
    pub const METRICS: [&'static str; 2] = ["loss", "accuracy"];

    /// A metric by name (one of `METRICS`); None for any other.
    pub fn metric(&self, name: &str) -> Option<f64> {
        match name {
            "loss" => Some(self.loss()),
            "accuracy" => Some(self.accuracy()),
            _ => None,
        }
    }

    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.questions.max(1) as f64
    }
    pub fn loss(&self) -> f64 {
        self.loss_sum / self.questions.max(1) as f64
    }

    /// Adds up every rank's counts and sums.
    fn sum_over(mut self, comm: &Comm) -> Result<EvalResult> {
        let mut v = vec![self.questions as f64, self.correct as f64, self.loss_sum];
        v.extend(self.per_subject.iter().flat_map(|&(_, c, t)| [c as f64, t as f64]));
        comm.sum(&mut v)?;
        (self.questions, self.correct, self.loss_sum) = (v[0] as usize, v[1] as usize, v[2]);
        for (s, pair) in self.per_subject.iter_mut().zip(v[3..].chunks(2)) {
            (s.1, s.2) = (pair[0] as usize, pair[1] as usize);
        }
        Ok(self)
    }
}

/// Loss and accuracy of `model` on the labelled questions of `cache` among `questions` (all
/// when None), in eval mode without a graph, under `precision`'s autocast (as the HF Trainer
/// evaluates a bf16 run in bf16). Each rank of `comm` takes every world_size-th question (no
/// padding) and the results are summed over the ranks; `Comm::single()` evaluates them all.
pub fn evaluate(
    model: &MultipleChoiceModel,
    cache: &PreparedCache,
    questions: Option<&[usize]>,
    batch_size: usize,
    precision: Precision,
    comm: &Comm,
) -> Result<EvalResult> {
    let labels = cache.labels()?;
    let subjects = cache.subjects()?;
    let names = &cache.manifest.subjects;
    let all: Vec<usize> = match questions {
        Some(q) => q.to_vec(),
        None => (0..cache.len()).collect(),
    };
    let mine: Vec<usize> =
        all.into_iter().filter(|&q| labels[q] >= 0).skip(comm.rank()).step_by(comm.world_size()).collect();
    let mut per_subject = vec![(0usize, 0usize); names.len()];
    let mut out = EvalResult::default();
    tch::no_grad(|| -> Result<()> {
        for chunk in mine.chunks(batch_size.max(1)) {
            let (batch, y) = collate(cache, chunk)?;
            let y = upload(&y, model.vs.device());
            let logits = precision.autocast(|| model.forward(&batch, false))?.to_kind(Kind::Float);
            let losses = logits.f_cross_entropy_loss::<Tensor>(&y, None, tch::Reduction::None, -100, 0.0)?;
            out.loss_sum += losses.to_kind(Kind::Double).sum(Kind::Double).double_value(&[]);
            let hits: Vec<bool> = Vec::try_from(logits.argmax(-1, false).eq_tensor(&y))?;
            for (&q, hit) in chunk.iter().zip(hits) {
                out.questions += 1;
                out.correct += usize::from(hit);
                if let Some(s) = usize::try_from(subjects[q]).ok().filter(|&s| s < per_subject.len()) {
                    per_subject[s].0 += usize::from(hit);
                    per_subject[s].1 += 1;
                }
            }
        }
        Ok(())
    })?;
    out.per_subject = names.iter().zip(per_subject).map(|(n, (c, t))| (n.clone(), c, t)).collect();
    out.sum_over(comm)
}
