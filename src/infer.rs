//! `medbert eval` and `medbert predict` as library calls: a model (a checkpoint, a model
//! directory or a hub id) on a MedMCQA file, prepared where the caller says.

use crate::batch::collate;
use crate::device::PrecisionArg;
use crate::dist::GroupArgs;
use crate::error::{Error, Result};
use crate::eval::{evaluate, EvalResult, DEFAULT_EVAL_BATCH_SIZE};
use crate::model::MultipleChoiceModel;
use crate::prep::DataArgs;
use crate::prep::{self, cache::PreparedCache};
use crate::{hub, settings};
use clap::Args;
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

/// What `eval` and `predict` share: the model, batch size, where raw files are prepared.
#[derive(Args, Debug)]
pub struct InferenceArgs {
    /// A checkpoint, a model directory or a hub id.
    #[arg(long, value_parser = crate::settings::path, env = settings::MODEL_VAR)]
    pub model: PathBuf,
    /// Questions per batch on each process.
    #[arg(long, default_value_t = DEFAULT_EVAL_BATCH_SIZE)]
    pub per_device_eval_batch_size: usize,
    /// Where prepared caches of raw files go: by default `prepared/` beside predict's
    /// --output, and for eval $XDG_CACHE_HOME/medbert/prepared (~/.cache/medbert/prepared).
    #[arg(long, value_parser = crate::settings::path, env = "MEDBERT_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    #[command(flatten)]
    pub arithmetic: PrecisionArg,
    #[command(flatten)]
    pub data: DataArgs,
}

impl InferenceArgs {
    /// The model on `device` and the cache of `file` (prepared under --cache-dir, else under
    /// `default_cache`). The main process logs what the weight load initialised.
    fn load(
        &self,
        file: &Path,
        default_cache: PathBuf,
        device: Device,
        is_main: bool,
    ) -> Result<(MultipleChoiceModel, PreparedCache)> {
        let dir = hub::resolve_model(&self.model)?;
        // The model first: one medbert cannot build is refused before anything is prepared.
        let (model, report) = MultipleChoiceModel::from_dir(&dir, device)?;
        let root = self.cache_dir.clone().unwrap_or(default_cache);
        let cache = PreparedCache::open(&prep::prepared(file, &root, &dir, self.data.max_length)?)?;
        if is_main {
            report.log(&dir, false);
        }
        Ok((model, cache))
    }
}

/// Loss and accuracy on every question of `file`, which must have answers. Under medbert-run
/// every worker evaluates its share and the counts are summed exactly; rank 0 gets the
/// result, the other ranks None.
pub fn evaluate_file(args: &InferenceArgs, file: &Path, group: &GroupArgs) -> Result<Option<EvalResult>> {
    let worker = group.join_worker(args.data.device)?;
    let is_main = worker.comm.is_main();
    let (model, cache) = worker.in_turn(|| args.load(file, settings::user_cache_dir(), worker.device, is_main))?;
    cache.require_answers("evaluation")?;
    let precision = args.arithmetic.precision.resolve(model.vs.device())?;
    let result = evaluate(&model, &cache, None, args.per_device_eval_batch_size, precision, &worker.comm)?;
    Ok(is_main.then_some(result))
}

/// The predictions CSV's header: the id, the predicted option (1-4), the four probabilities
/// and the four logits.
const PREDICTION_COLUMNS: [&str; 10] =
    ["id", "prediction", "p_opa", "p_opb", "p_opc", "p_opd", "logit_opa", "logit_opb", "logit_opc", "logit_opd"];

/// Writes `output`, a CSV of the model's prediction for every question of `file` (answers
/// not needed), atomically; raw files are prepared in `prepared/` beside it unless
/// --cache-dir says otherwise. Returns the number of questions.
pub fn predict(args: &InferenceArgs, file: &Path, output: &Path) -> Result<usize> {
    let beside = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).join("prepared");
    let (model, cache) = args.load(file, beside, args.data.device.resolve(0)?, true)?;
    let precision = args.arithmetic.precision.resolve(model.vs.device())?;
    let csv_err = |e: csv::Error| Error::write(output, e);
    let mut csv = csv::Writer::from_writer(Vec::new());
    csv.write_record(PREDICTION_COLUMNS).map_err(csv_err)?;
    let all: Vec<usize> = (0..cache.len()).collect();
    for chunk in all.chunks(args.per_device_eval_batch_size.max(1)) {
        let (batch, _) = collate(&cache, chunk)?;
        let logits = tch::no_grad(|| precision.autocast(|| model.forward(&batch, false)))?
            .to_kind(Kind::Float)
            .to_device(Device::Cpu);
        let probs: Vec<Vec<f32>> = Vec::try_from(&logits.softmax(-1, Kind::Float))?;
        let logits: Vec<Vec<f32>> = Vec::try_from(&logits)?;
        for ((&q, p), l) in chunk.iter().zip(probs).zip(logits) {
            let best = (0..p.len()).max_by(|&a, &b| l[a].total_cmp(&l[b])).unwrap_or(0);
            let mut row = vec![cache.id(q)?.to_string(), (best + 1).to_string()];
            row.extend(p.iter().map(|v| format!("{v:.6}")));
            row.extend(l.iter().map(|v| v.to_string()));
            csv.write_record(&row).map_err(csv_err)?;
        }
    }
    let bytes = csv.into_inner().map_err(|e| Error::write(output, e.into_error()))?;
    crate::atomic::write_file(output, &bytes)?;
    Ok(cache.len())
}
